"""Named datasets with fixed, seeded train/val/test splits and a calibration subset.

* ``digits``: scikit-learn's bundled 8x8 digits (1797 images), always offline; smoke runs.
* ``fashion-mnist``: the real default.  Read from the four IDX ``.gz`` files of Debian's
  ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``), from a
  directory given as ``data_dir`` or ``$PLAYBOOK_FASHION_MNIST_DIR``, or, only when asked
  with ``download=True`` and the internet is reachable, fetched by scikit-learn's
  ``fetch_openml``.
* ``imagefolder:PATH``: the user's own images, one sub-folder per class.

Images are kept as ``uint8`` arrays of shape ``(N, C, H, W)``; ``Dataset.to_tensor``
normalises them with the per-channel mean/std of the training split, which is also what
the Core ML export folds into an ``ImageType``'s scale and bias.
"""
from __future__ import annotations

import dataclasses
import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch

from playbook.config import ConfigError, StrictConfig, check_range

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
TEST_FRACTION = 0.2  # of digits and image folders; Fashion-MNIST has its own test split
MIN_IMAGES_PER_CLASS = 5
MIN_TEST_IMAGES = 10


def class_folders(root: Path) -> list[Path]:
    """The class sub-folders of an image folder, sorted: hidden ones (``.ipynb_checkpoints``, ``.DS_Store``
    folders, ``.git``) are never classes."""
    return sorted(d for d in Path(root).iterdir() if d.is_dir() and not d.name.startswith("."))


def image_files(folder: Path) -> list[Path]:
    """The images of one class folder (by suffix; hidden files skipped), sorted."""
    return sorted(f for f in Path(folder).iterdir()
                  if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_SUFFIXES)


def imagefolder_counts(root: Path) -> dict[str, int]:
    """``{class: number of image files}`` of an image folder (nothing is read)."""
    return {d.name: len(image_files(d)) for d in class_folders(root)}


def _hidden_note(root: Path) -> str:
    hidden = [d.name for d in Path(root).iterdir() if d.is_dir() and d.name.startswith(".")]
    return f" (hidden folders such as {hidden[:3]} are not classes)" if hidden else ""


class DatasetError(ConfigError):
    """A dataset is unknown, missing or malformed; the message says what was looked for and how to get it."""


def available_datasets() -> list[str]:
    """Dataset names accepted by ``load_dataset``."""
    return ["digits", "fashion-mnist", "imagefolder:PATH"]


@dataclasses.dataclass(frozen=True)
class DatasetConfig(StrictConfig):
    """Which dataset to load and how to split it.

    Attributes:
        name: ``digits``, ``fashion-mnist`` or ``imagefolder:PATH``.
        data_dir: directory with the Fashion-MNIST IDX files (default: env var, then Debian's path).
        image_size: resize images to this square size (``None`` keeps the native size).
        min_image_size: upscale images smaller than this (a model's minimum input); ``None``: no minimum.
        val_fraction: share of the training data held out for validation.
        calib_size: images drawn from the training split for calibration (activation ranges).
        limit_train: keep at most this many training images (smoke runs); ``None`` keeps all.
        limit_test: keep at most this many test images (smoke runs); ``None`` keeps all.
        seed: seed of the split.
        download: allow fetching Fashion-MNIST over the internet when no local copy exists.
    """

    name: str = "fashion-mnist"
    data_dir: str | None = None
    image_size: int | None = None
    min_image_size: int | None = None
    val_fraction: float = 0.1
    calib_size: int = 512
    limit_train: int | None = None
    limit_test: int | None = None
    seed: int = 0
    download: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.name in ("digits", "fashion-mnist") or self.name.startswith("imagefolder:")):
            raise DatasetError(f"unknown dataset {self.name!r}; valid datasets are {available_datasets()}")
        check_range("val_fraction", self.val_fraction, 0.0, 0.5)
        check_range("calib_size", self.calib_size, 1)
        for field in ("image_size", "min_image_size", "limit_train", "limit_test"):
            value = getattr(self, field)
            if value is not None:
                check_range(field, value, 1)
        self.check_available()

    def check_available(self) -> None:
        """Raise ``DatasetError`` (saying what was looked for and how to get it) when the data is not on disk:
        checked when the config is built, so a missing dataset fails before any work starts."""
        if self.name == "fashion-mnist" and not self.download:
            directory = fashion_mnist_dir(self.data_dir)
            missing = [name for name in FASHION_MNIST_FILES.values() if not (directory / name).is_file()]
            if missing:
                raise DatasetError(
                    f"Fashion-MNIST not found: looked for {missing} in {directory}. Get it with "
                    "`apt-get install dataset-fashion-mnist` (puts the files in /usr/share/datasets/fashion-mnist), "
                    "or point data_dir / $PLAYBOOK_FASHION_MNIST_DIR at a folder with the four IDX .gz files, "
                    "or pass download=True where the internet is reachable.")
        elif self.name.startswith("imagefolder:"):
            root = Path(self.name.split(":", 1)[1]).expanduser()
            if not root.is_dir():
                raise DatasetError(f"imagefolder {root} does not exist; expected one sub-folder of images per class")
            counts = imagefolder_counts(root)
            if len(counts) < 2:
                raise DatasetError(f"imagefolder {root} needs at least two class sub-folders (one per class)"
                                   + _hidden_note(root))
            empty = [name for name, n in counts.items() if n == 0]
            if empty:
                raise DatasetError(f"imagefolder {root}: class folder(s) {empty} hold no images "
                                   f"({', '.join(sorted(IMAGE_SUFFIXES))}); every sub-folder is a class: put images "
                                   "in them or remove them")

    def check_split_sizes(self) -> None:
        """Raise ``DatasetError`` when an image folder is too small for the fixed split to give every stage data to
        work on (``MIN_IMAGES_PER_CLASS`` per class, ``MIN_TEST_IMAGES`` in the 20 % test split).  Counts files
        only (nothing is read), so ``playbook run`` checks it before anything runs."""
        if not self.name.startswith("imagefolder:"):
            return
        root = Path(self.name.split(":", 1)[1]).expanduser()
        if not root.is_dir():
            return
        counts = imagefolder_counts(root)
        total = sum(counts.values())
        n_test = max(1, int(round(TEST_FRACTION * total)))
        small = {name: n for name, n in counts.items() if n < MIN_IMAGES_PER_CLASS}
        if small or n_test < MIN_TEST_IMAGES:
            what = (f"class folder(s) {small} hold fewer than {MIN_IMAGES_PER_CLASS} images" if small else
                    f"its {total} images give a test split of {n_test} ({TEST_FRACTION:.0%})")
            raise DatasetError(f"imagefolder {root} is too small: {what}; the playbook needs at least "
                               f"{MIN_IMAGES_PER_CLASS} images per class and {MIN_TEST_IMAGES} test images "
                               f"({int(MIN_TEST_IMAGES / TEST_FRACTION)} images in all) to train, measure and "
                               "compare. Add images, or try the pipeline on --dataset digits")


@dataclasses.dataclass(frozen=True)
class Split:
    """Images ``(N, C, H, W)`` uint8 and integer labels ``(N,)``."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int) -> "Split":
        return Split(self.images[:n], self.labels[:n])


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A loaded dataset: splits, class names and the normalisation the model expects."""

    name: str
    source: str
    class_names: tuple[str, ...]
    train: Split
    val: Split
    test: Split
    calib: Split
    mean: tuple[float, ...]
    std: tuple[float, ...]
    native_image_size: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[2])

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, self.in_channels, self.image_size, self.image_size)

    def to_tensor(self, images: np.ndarray) -> torch.Tensor:
        """Normalise uint8 images to the float tensor the model takes."""
        x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (x - mean) / std

    def summary(self) -> dict[str, object]:
        return {
            "name": self.name, "source": self.source, "classes": list(self.class_names),
            "train": len(self.train), "val": len(self.val), "test": len(self.test), "calib": len(self.calib),
            "input_shape": list(self.input_shape), "mean": list(self.mean), "std": list(self.std),
            "native_image_size": self.native_image_size,
        }


# --------------------------------------------------------------------------- readers
def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DatasetError(f"cannot read IDX file {path}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    expected = int(np.prod(dims))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != expected:
        raise DatasetError(f"{path} is truncated: header says {dims} ({expected} bytes), found {data.size}")
    return data.reshape(dims).copy()  # frombuffer is read-only; torch wants writable memory


def fashion_mnist_dir(data_dir: str | None) -> Path:
    """Where the Fashion-MNIST files are looked for: parameter, env var, then Debian's path."""
    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get("PLAYBOOK_FASHION_MNIST_DIR")
    return Path(env).expanduser() if env else DEBIAN_FASHION_MNIST


def _load_fashion_mnist(cfg: DatasetConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    directory = fashion_mnist_dir(cfg.data_dir)
    paths = {key: directory / name for key, name in FASHION_MNIST_FILES.items()}
    if any(not p.is_file() for p in paths.values()):
        cfg.check_available()  # raises with the full explanation unless download=True
        return _download_fashion_mnist()
    arrays = {key: read_idx(p) for key, p in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DatasetError(
                f"Fashion-MNIST {split} files in {directory} disagree: images {images.shape}, labels {labels.shape}"
            )
    return (arrays["train_images"][:, None], arrays["train_labels"].astype(np.int64),
            arrays["test_images"][:, None], arrays["test_labels"].astype(np.int64), str(directory))


def _download_fashion_mnist() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    from sklearn.datasets import fetch_openml

    try:
        bunch = fetch_openml("Fashion-MNIST", version=1, as_frame=False, parser="liac-arff")
    except Exception as exc:
        raise DatasetError(
            f"downloading Fashion-MNIST with sklearn.datasets.fetch_openml failed ({exc}); "
            "install Debian's dataset-fashion-mnist or set data_dir instead"
        ) from exc
    images = bunch.data.astype(np.uint8).reshape(-1, 1, 28, 28)
    labels = bunch.target.astype(np.int64)
    # OpenML keeps the original order: the first 60000 are the training set.
    return images[:60000], labels[:60000], images[60000:], labels[60000:], "openml:Fashion-MNIST"


def _load_digits() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return images, bunch.target.astype(np.int64), tuple(str(c) for c in range(10))


def _load_imagefolder(root: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """One class per sub-folder of ``root`` (``DatasetConfig.check_available`` has checked there are two or more)."""
    from PIL import Image

    class_dirs = class_folders(root)
    files = [(f, idx) for idx, d in enumerate(class_dirs) for f in image_files(d)]
    if not files:
        raise DatasetError(f"imagefolder {root} holds no images ({sorted(IMAGE_SUFFIXES)}) in its class folders")

    def open_image(path: Path) -> "Image.Image":
        try:
            img = Image.open(path)
            img.load()
            return img
        except (OSError, ValueError) as exc:  # PIL.UnidentifiedImageError is an OSError
            size = path.stat().st_size if path.exists() else 0
            raise DatasetError(f"cannot read image {path} ({size} bytes: {type(exc).__name__}); remove or replace "
                               "the file") from exc

    first = open_image(files[0][0])
    mode = "L" if first.mode in ("L", "1", "I", "I;16") else "RGB"
    size = first.size
    images, labels = [], []
    for path, label in files:
        img = open_image(path).convert(mode)
        if img.size != size:
            img = img.resize(size)
        arr = np.asarray(img, dtype=np.uint8)
        images.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
        labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64), tuple(d.name for d in class_dirs)


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    if images.shape[2] == size and images.shape[3] == size:
        return images
    x = torch.from_numpy(images).float()
    y = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return y.round().clamp(0, 255).to(torch.uint8).numpy()


def load_dataset(cfg: DatasetConfig) -> Dataset:
    """Load ``cfg.name`` with fixed, seeded splits (train/val/test plus a calibration subset)."""
    rng = np.random.default_rng(cfg.seed)
    if cfg.name == "fashion-mnist":
        train_x, train_y, test_x, test_y, source = _load_fashion_mnist(cfg)
        classes = FASHION_MNIST_CLASSES
    else:
        if cfg.name == "digits":
            images, labels, classes = _load_digits()
            source = "sklearn.datasets.load_digits"
        else:
            root = Path(cfg.name.split(":", 1)[1]).expanduser()
            images, labels, classes = _load_imagefolder(root)
            source = str(root)
        order = rng.permutation(len(labels))
        n_test = max(1, int(round(TEST_FRACTION * len(labels))))
        test_idx, train_idx = order[:n_test], order[n_test:]
        train_x, train_y, test_x, test_y = images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]
    native = int(train_x.shape[2])
    size = cfg.image_size or (cfg.min_image_size if cfg.min_image_size and native < cfg.min_image_size else None)
    if size is not None:
        train_x, test_x = _resize(train_x, size), _resize(test_x, size)

    order = rng.permutation(len(train_y))
    n_val = int(round(cfg.val_fraction * len(order)))
    val_idx, fit_idx = order[:n_val], order[n_val:]
    if cfg.limit_train is not None:
        fit_idx = fit_idx[: cfg.limit_train]
        val_idx = val_idx[: max(1, cfg.limit_train // 5)] if n_val else val_idx
    calib_idx = fit_idx[: min(cfg.calib_size, len(fit_idx))]
    if cfg.limit_test is not None:
        test_x, test_y = test_x[: cfg.limit_test], test_y[: cfg.limit_test]

    if len(test_y) < 2 or len(fit_idx) < 2:
        raise DatasetError(f"dataset {cfg.name} is too small: {len(fit_idx)} training and {len(test_y)} test images "
                           f"after the split; give at least {MIN_IMAGES_PER_CLASS} images per class and "
                           f"{int(MIN_TEST_IMAGES / TEST_FRACTION)} in all")
    fit = train_x[fit_idx].astype(np.float64) / 255.0
    mean = tuple(float(m) for m in fit.mean(axis=(0, 2, 3)))
    std = tuple(float(max(s, 1e-3)) for s in fit.std(axis=(0, 2, 3)))
    return Dataset(
        name=cfg.name, source=source, class_names=tuple(classes),
        train=Split(train_x[fit_idx], train_y[fit_idx]), val=Split(train_x[val_idx], train_y[val_idx]),
        test=Split(test_x, test_y), calib=Split(train_x[calib_idx], train_y[calib_idx]),
        mean=mean, std=std, native_image_size=native,
    )

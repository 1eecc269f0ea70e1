import gzip
import struct

import numpy as np
import pytest

from playbook.data import DatasetConfig, DatasetError, load_dataset, read_idx


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def _fake_fashion(tmp_path, n_train=60, n_test=20):
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n_train, 28, 28)))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, n_train))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (n_test, 28, 28)))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, n_test))
    return tmp_path


def test_digits_splits_are_disjoint_seeded_and_normalised(digits):
    again = load_dataset(DatasetConfig(name="digits", calib_size=32))
    assert np.array_equal(digits.test.labels, again.test.labels)
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797
    assert digits.input_shape == (1, 1, 8, 8) and digits.num_classes == 10
    x = digits.to_tensor(digits.train.images)
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-2
    other = load_dataset(DatasetConfig(name="digits", seed=1))
    assert not np.array_equal(digits.test.labels, other.test.labels)


def test_fashion_mnist_reads_idx_from_data_dir(tmp_path):
    data = load_dataset(DatasetConfig(data_dir=str(_fake_fashion(tmp_path)), calib_size=8))
    assert len(data.test) == 20 and len(data.train) + len(data.val) == 60
    assert data.class_names[0] == "T-shirt/top" and data.input_shape == (1, 1, 28, 28)
    assert len(data.calib) == 8


def test_missing_data_dir_names_what_was_looked_for_and_how_to_get_it(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_dataset(DatasetConfig(data_dir=str(tmp_path / "nowhere")))
    msg = str(err.value)
    assert "train-images-idx3-ubyte.gz" in msg and "nowhere" in msg and "apt-get install dataset-fashion-mnist" in msg


def test_truncated_idx_file_is_a_clear_error(tmp_path):
    _fake_fashion(tmp_path)
    raw = gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz").read()
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(raw[:-100])
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(tmp_path / "t10k-images-idx3-ubyte.gz")


def test_unknown_dataset_lists_valid_ones():
    with pytest.raises(DatasetError, match=r"unknown dataset 'cifar'.*digits.*fashion-mnist.*imagefolder"):
        DatasetConfig(name="cifar")


def test_imagefolder_loads_one_class_per_folder(tmp_path):
    from PIL import Image

    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        for i in range(6):
            Image.fromarray(np.full((12, 12, 3), 40 * i, np.uint8)).save(tmp_path / cls / f"{i}.png")
    data = load_dataset(DatasetConfig(name=f"imagefolder:{tmp_path}", val_fraction=0.2, calib_size=2))
    assert data.class_names == ("cats", "dogs") and data.in_channels == 3
    assert len(data.train) + len(data.val) + len(data.test) == 12
    with pytest.raises(DatasetError, match="at least two class sub-folders"):
        load_dataset(DatasetConfig(name=f"imagefolder:{tmp_path / 'cats'}"))


def test_image_size_resizes(digits):
    data = load_dataset(DatasetConfig(name="digits", image_size=16))
    assert data.input_shape == (1, 1, 16, 16)

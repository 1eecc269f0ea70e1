"""Apple's Core AI runtime on a saved ``.aimodel``: class scores (``predict_aimodel``, ``predict_aimodel_split``, the
Core AI twin of ``coreml.predict_split``) and the host-interpreter latency (``host_latency``, labelled as such and
never ranked against a device figure).  coreai-core's runtime runs ``.aimodel`` files on Linux (a single-threaded
interpreter, "ODIE") and on macOS 27+.  Export and compression are ``compress.coreai_side``'s job.

Because the Linux runtime uses one core, ``CoreAIPredictor`` splits the images of a prediction across worker
processes (``spawn``, one thread each; ``plan_coreai_processes`` decides how many from the free cores), each loading
the ``.aimodel`` and predicting a contiguous chunk (``predict_chunk``); the chunks are concatenated in order, so the
scores are the serial path's, bit for bit (the runtime's per-image results do not depend on the batch).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import multiprocessing
import os
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
    return predict_chunk(path, inputs, batch_size, messages)[0]


def predict_chunk(path: Path | str, inputs: np.ndarray, batch_size: int = 256,
                  messages: list[str] | None = None) -> tuple[np.ndarray, float, float]:
    """``predict_aimodel`` with its timing: ``(scores, load_seconds, predict_seconds)`` (loading compiles the
    ``.aimodel``; predicting is the calls alone).  What a ``CoreAIPredictor`` worker process runs on its chunk."""
    path = _check_aimodel(Path(path))
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    inputs = np.asarray(inputs)
    if inputs.ndim != 4 or inputs.dtype.kind != "f" or len(inputs) == 0:
        raise ConfigError(f"inputs must be a non-empty float (N, C, H, W) array of normalised images, got "
                          f"{inputs.dtype} {inputs.shape}")
    _require()

    def run() -> tuple[np.ndarray, float, float]:
        start = time.perf_counter()
        with _loaded(path, messages if messages is not None else []) as (function, loop):
            loaded = time.perf_counter()
            scores = _predict_with(function, loop, inputs, batch_size)
            return scores, loaded - start, time.perf_counter() - loaded

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


def predict_aimodel_split(path: Path, dataset: Any, split: Any, batch_size: int = 256,
                          predictor: "CoreAIPredictor | None" = None) -> tuple[np.ndarray, Provenance]:
    """``predict_aimodel`` on every image of a ``playbook.data.Split`` (normalised as ``dataset`` does), with the
    provenance; the Core AI twin of ``playbook.coreml.predict_split``.  ``predictor``: a started
    ``CoreAIPredictor`` whose worker processes share the images (default: all in this process)."""
    if predictor is not None:
        return predictor.predict_split(path, dataset, split, batch_size)
    chunks = [predict_aimodel(path, dataset.to_tensor(split.images[s : s + LOAD_IMAGES]).numpy(), batch_size)
              for s in range(0, len(split), LOAD_IMAGES)]
    return np.concatenate(chunks), coreai_provenance()


# --------------------------------------------------------------------------- prediction in worker processes
LOAD_IMAGES = 2000  # images normalised at once (per process): bounds the memory of a large split


@dataclasses.dataclass(frozen=True)
class ProcessPlan:
    """How many worker processes share the Core AI runtime's predictions, and why (0: all in this process)."""

    processes: int
    free_cores: int
    requested: int
    reason: str
    choice: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# below this many predictions (images x models) worker start-up (about 6 CPU-seconds each: importing torch and
# coremltools) costs more than sharing saves; measured: 2,000 images of a small CNN, 28 s serial, 15 s on 2 workers
MIN_PARALLEL_PREDICTIONS = 3000


def plan_coreai_processes(requested: int = 0, free_cores: int | None = None,
                          predictions: int | None = None, cores: int | None = None,
                          share: bool | None = None) -> ProcessPlan:
    """Worker processes for the Core AI runtime's predictions, one thread each (the Linux runtime is a
    single-threaded interpreter), by the rule of ``env.plan_workers``.

    ``requested``: 0 = as many as the cores allow; 1 = in this process; n >= 2 = at most n.  ``free_cores``: how many
    cores other work leaves free (default: measured, ``env.free_process_cores``); ``cores``: how many this process
    may use (default ``env.core_budget``).  Never more workers than ``cores`` (workers x 1 thread <= our cores); with
    fewer than two free, up to ``cores`` one-thread workers share the busy cores (``env.shared_workers``) where the
    scheduler shares per process (``share``, default ``env.sharing_helps()``).
    ``predictions`` (images x models to predict, when known): with ``requested`` 0, fewer than
    ``MIN_PARALLEL_PREDICTIONS`` start no worker."""
    from playbook.env import core_budget, free_process_cores, shared_workers

    if requested < 0:
        raise ConfigError(f"processes must be >= 0 (0: from the free cores), got {requested!r}")
    if requested == 1:
        return ProcessPlan(0, 0, requested, "processes=1: the Core AI runtime predicts in this process, as asked")
    if not requested and predictions is not None and predictions < MIN_PARALLEL_PREDICTIONS:
        return ProcessPlan(0, 0, requested, f"{predictions:,} predictions: the Core AI runtime predicts in this "
                           f"process (below {MIN_PARALLEL_PREDICTIONS:,}, worker start-up costs more than it saves)")
    choice = None
    if free_cores is None:
        free_cores, choice = free_process_cores()
    free_cores = max(1, int(free_cores))
    cores = core_budget() if cores is None else max(1, int(cores))
    workers = min(free_cores, requested) if requested else free_cores
    if workers < 2:
        shared, why = shared_workers(requested or cores, free_cores, cores, share)
        if shared:
            return ProcessPlan(shared, free_cores, requested, why, choice)
        return ProcessPlan(0, free_cores, requested,
                           f"only {free_cores} core(s) free and {cores} to use: the Core AI runtime predicts in "
                           "this process" + (f" ({why})" if why else ""), choice)
    return ProcessPlan(workers, free_cores, requested,
                       f"{workers} worker processes x 1 thread on {free_cores} free core(s)"
                       + (f" (at most {requested} asked)" if requested and requested < free_cores else ""), choice)


def _worker_init() -> None:
    """A worker process: one thread (the runtime is single-threaded; torch, if imported, is kept to one too)."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = "1"
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    _require()


def _worker_ready() -> int:
    return os.getpid()


@dataclasses.dataclass(frozen=True)
class TimedPrediction:
    """Scores and how long they took: ``wall_s`` in all, ``load_s`` / ``predict_s`` the slowest process's model
    loading and calls (the processes run side by side)."""

    scores: np.ndarray
    wall_s: float
    load_s: float
    predict_s: float
    processes: int

    def seconds_per_image(self) -> float:
        """Wall seconds per image of the calls (loading left out), the processes working side by side."""
        return self.predict_s / max(1, len(self.scores))


class CoreAIPredictor:
    """Apple's Core AI runtime on many images, shared by ``plan.processes`` worker processes (``spawn``, one thread
    each) or, with none planned, in this process.  A context manager that owns the pool: make it once for a whole
    step, so the workers start once (on the first prediction), and every ``.aimodel`` reuses them.

    Each worker loads the ``.aimodel`` and predicts one contiguous chunk; the chunks are concatenated in order, so the
    scores equal ``predict_aimodel``'s exactly.  A pool that breaks (a worker killed) is recorded in ``notes`` and
    the predictions go on in this process."""

    def __init__(self, plan: ProcessPlan | None = None) -> None:
        self.plan = plan or ProcessPlan(0, 0, 0, "in this process")
        self.processes = self.plan.processes
        self.pool: concurrent.futures.ProcessPoolExecutor | None = None
        self.startup_s = 0.0
        self.notes: list[str] = []

    def __enter__(self) -> "CoreAIPredictor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def _started(self) -> concurrent.futures.ProcessPoolExecutor | None:
        if self.processes < 2 or self.pool is not None:
            return self.pool
        start = time.perf_counter()
        self.pool = concurrent.futures.ProcessPoolExecutor(self.processes,
                                                           mp_context=multiprocessing.get_context("spawn"),
                                                           initializer=_worker_init)
        try:  # start every worker now, so that no prediction's timing holds a start-up
            for f in [self.pool.submit(_worker_ready) for _ in range(self.processes)]:
                f.result()
        except Exception as exc:  # noqa: BLE001
            self._serial_from_now(f"worker processes did not start ({type(exc).__name__}: {_first_line(exc)})")
        self.startup_s += time.perf_counter() - start
        return self.pool

    def _serial_from_now(self, why: str) -> None:
        self.notes.append(f"{why}: the Core AI runtime went on in this process")
        with contextlib.suppress(Exception):
            self.pool.shutdown(wait=False, cancel_futures=True)
        self.pool, self.processes = None, 0

    def predict(self, path: Path, inputs: np.ndarray, batch_size: int = 256) -> TimedPrediction:
        """``predict_aimodel`` on ``inputs``, shared by the workers, timed."""
        inputs = np.asarray(inputs)
        start = time.perf_counter()
        pool = self._started() if len(inputs) >= 2 else None
        if pool is not None:
            bounds = np.linspace(0, len(inputs), min(self.processes, len(inputs)) + 1).round().astype(int)
            try:
                futures = [pool.submit(predict_chunk, str(path), inputs[a:b], batch_size)
                           for a, b in zip(bounds[:-1], bounds[1:])]
                parts = [f.result() for f in futures]
                return TimedPrediction(np.concatenate([p[0] for p in parts]), time.perf_counter() - start,
                                       max(p[1] for p in parts), max(p[2] for p in parts), len(parts))
            except concurrent.futures.process.BrokenProcessPool as exc:
                self._serial_from_now(f"the worker pool broke ({_first_line(exc)})")
                start = time.perf_counter()
        scores, load_s, predict_s = predict_chunk(path, inputs, batch_size)
        return TimedPrediction(scores, time.perf_counter() - start, load_s, predict_s, 1)

    def predict_split(self, path: Path, dataset: Any, split: Any, batch_size: int = 256) -> tuple[np.ndarray,
                                                                                                Provenance]:
        """``predict_aimodel_split`` with the workers: ``LOAD_IMAGES`` images per process normalised at a time."""
        step = LOAD_IMAGES * max(1, self.processes)
        chunks = [self.predict(path, dataset.to_tensor(split.images[s : s + step]).numpy(), batch_size).scores
                  for s in range(0, len(split), step)]
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

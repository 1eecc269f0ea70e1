"""Students trained side by side: one ``train_or_load_student`` call as data (``StudentJob``), the worker processes
that train several of them at once (``train_students_in_workers``, ``train_pending``), and what a trained and scored
student is (``StudentResult``).

The weights a worker trains land in the checkpoint cache, where the caller's own ``StudentJob.run`` finds them, so
parallel training changes where a student is trained, never what it is.  Worker processes are started with
``spawn`` and sized by ``env.plan_workers`` (workers x threads never exceed the free cores; with one free core,
one-thread workers share the busy ones where the scheduler shares per process).  Knows nothing of notebooks, stages
or records (stage 03 uses it).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from playbook.data import Dataset
from playbook.distill import DistillConfig, StudentTraining, student_cache_key, train_or_load_student
from playbook.env import WorkerPlan, plan_workers


@dataclasses.dataclass
class StudentResult:
    """One trained student: how it was trained and what it scored (``top1`` on ``split``)."""

    kind: str  # "scratch" or "distilled"
    seed: int
    temperature: float | None
    alpha: float | None
    split: str
    top1: float
    seconds: float
    final_loss: float
    model: nn.Module | None = None
    correct: np.ndarray | None = None


@dataclasses.dataclass
class StudentJob:
    """One ``train_or_load_student`` call, with its arguments as data, so that a worker process can make it.

    ``cached_logits`` is the array itself (or ``None``: plain cross-entropy, or a teacher run live on augmented
    batches); ``student`` carries its initial weights, which are part of the cache key."""

    student: nn.Module
    dataset: Dataset
    train_cfg: Any
    distill: DistillConfig | None = None
    teacher: nn.Module | None = None
    teacher_sha256: str = ""
    cached_logits: np.ndarray | Callable[[], np.ndarray | None] | None = None
    example: torch.Tensor | None = None
    model_cfg: dict[str, Any] | None = None
    cache_dir: Path | None = None

    def key(self) -> str:
        """The student cache key this job trains (``student_cache_key``)."""
        return student_cache_key(self.student, self.dataset, self.train_cfg, self.distill, self.teacher_sha256,
                                 self.model_cfg)

    def checkpoint(self, key: str | None = None) -> Path:
        """Where the trained student is (or will be) cached (``key``: this job's ``key()``, when already known;
        computing it hashes the training images)."""
        from playbook.paths import default_cache_dir

        return Path(self.cache_dir or default_cache_dir()) / "students" / f"{key or self.key()}.pt"

    def cached(self) -> bool:
        """Whether the cache already holds this student (a corrupt file is found and replaced by ``run``)."""
        return self.checkpoint().exists()

    def run(self, threads: int | None = None) -> StudentTraining:
        """``train_or_load_student`` with this job's arguments (``threads``: torch threads for its training)."""
        cfg = self.train_cfg if threads is None else self.train_cfg.replace(threads=threads)
        return train_or_load_student(self.student, self.dataset, cfg, distill=self.distill, teacher=self.teacher,
                                     teacher_sha256=self.teacher_sha256, cached_logits=self.cached_logits,
                                     example=self.example, model_cfg=self.model_cfg, cache_dir=self.cache_dir)


def _student_worker(payload: bytes, threads: int) -> StudentTraining:
    """Train one student in a worker process (``spawn``: a top-level function, imported by name there).  The job
    comes as plain ``pickle`` bytes: sent as an object, its tensors would go through torch's multiprocessing
    reducers, which share their storage, and the worker would train the caller's student in place."""
    import pickle

    torch.set_num_threads(max(1, threads))
    return pickle.loads(payload).run(threads)


def train_students_in_workers(jobs: Sequence[StudentJob], workers: int, threads_per_worker: int = 1,
                              progress: bool = False) -> dict[str, StudentTraining]:
    """Train the jobs whose students are not yet in the cache side by side in ``workers`` processes (``spawn``),
    each with ``threads_per_worker`` torch threads, and return ``{cache key: StudentTraining}`` for those trained.

    The weights land in the checkpoint cache, so the caller's own ``train_or_load_student`` for the same job then
    loads them (bit for bit what the worker trained).  With fewer than two jobs to train or ``workers`` < 2, nothing
    is started and ``{}`` is returned: the caller trains in its own process.  A job whose arguments cannot be sent
    to a process (a user's model class that ``pickle`` cannot import by name, a lazy ``cached_logits``) and a job
    that fails in its worker (e.g. a diverging run) are left to the caller too, which then raises the error itself."""
    import concurrent.futures
    import multiprocessing
    import pickle

    pending: dict[str, bytes] = {}
    for job in jobs:
        key = job.key()
        if key in pending or job.checkpoint(key).exists():
            continue
        try:
            pending[key] = pickle.dumps(job)
        except Exception:  # noqa: BLE001 -- trained in the caller's process instead
            continue
    if workers < 2 or len(pending) < 2:
        return {}
    done: dict[str, StudentTraining] = {}
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(pending)), mp_context=context) as pool:
        futures = {pool.submit(_student_worker, payload, threads_per_worker): key
                   for key, payload in pending.items()}
        for future in tqdm(concurrent.futures.as_completed(futures), total=len(futures), desc="students",
                           disable=not progress):
            try:
                done[futures[future]] = future.result()
            except Exception:  # noqa: BLE001 -- the caller trains it again in its own process and sees the error
                continue
    return done


# below this many training images (images x epochs, all pending students together) a worker's start-up (about 6
# CPU-seconds: importing torch, unpickling the data) costs more than training side by side saves
MIN_PARALLEL_IMAGES = 20_000


def train_pending(jobs: Sequence[StudentJob], max_workers: int, threads: int = 0,
                  logits: Callable[[], np.ndarray | None] | None = None) -> tuple[WorkerPlan, dict[str, StudentTraining]]:
    """Train the jobs not yet in the cache in worker processes when ``env.plan_workers`` (at most ``max_workers``,
    from the cores free now; ``threads`` > 0: the count asked for in this process) says so; the plan and
    ``{cache key: StudentTraining}`` of the students trained.  ``logits`` gives the teacher's logits, called only
    when a distilled student must be trained (a worker needs the array itself); ``None``: the teacher runs live.
    Small work (under ``MIN_PARALLEL_IMAGES`` training images in all, e.g. a smoke run) stays in this process."""
    keyed = {job.key(): job for job in jobs}  # a repeated job trains once; each key hashes the job's images once
    pending = [job for key, job in keyed.items() if not job.checkpoint(key).exists()]
    work = sum(len(job.dataset.train) * job.train_cfg.epochs for job in pending)
    if pending and work < MIN_PARALLEL_IMAGES:
        return WorkerPlan(0, 0, threads, 0, len(pending), max_workers,
                          f"{len(pending)} student(s), {work:,} training images in all: in this process (below "
                          f"{MIN_PARALLEL_IMAGES:,}, worker start-up costs more than it saves)"), {}
    plan = plan_workers(max_workers, len(pending), threads, noun=("student", "students"))
    if plan.workers < 2:
        return plan, {}
    array = logits() if logits is not None and any(job.distill is not None for job in pending) else None
    pending = [dataclasses.replace(job, cached_logits=array if job.distill is not None else None) for job in pending]
    return plan, train_students_in_workers(pending, plan.workers, plan.threads_per_worker)

"""What the platform can tell about one package besides its latency: peak memory of a fresh process, energy
from a counter the platform exposes, and Core ML's own compute plan.

* Memory: a process forked from a clean ``forkserver`` (every import done before the fork) loads the package and
  predicts once; the rise of its peak resident set is the model's (a long-lived process would reuse memory freed
  by earlier packages and under-report).  On CUDA, ``torch.cuda.max_memory_allocated``.
* Energy: RAPL (``/sys/class/powercap``) on Linux, NVML on NVIDIA GPUs (``pynvml`` when installed),
  ``powermetrics`` on macOS run as root; otherwise ``measured: false`` with the reason, never a number.
* ``MLComputePlan`` (macOS 14.4+ through coremltools): the preferred compute device of every op and Apple's
  estimated share of the work.

Each function returns a block of ``bench_schema.MEASUREMENT_SCHEMA`` (``memory``, ``energy``, ``compute_plan``).
"""
from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from playbook.env import rss_mb

RAPL_ENERGY = Path("/sys/class/powercap/intel-rapl:0/energy_uj")


def coreml_available() -> tuple[bool, str]:
    """Whether Apple's Core ML runtime can run here, and why not."""
    if platform.system() != "Darwin":
        return False, (f"needs macOS: coremltools runs Core ML predictions only on macOS (this is "
                       f"{platform.system()} {platform.machine()}); measure on a Mac with `playbook bench` or on an "
                       "iPhone with the generated Swift benchmark, then `playbook import-bench`")
    return True, ""


# --------------------------------------------------------------------------- memory (fresh process)
def _memory_child(package: str, s: Any, inputs: dict[str, np.ndarray],
                  load: Callable[[Path, Any], Any]) -> tuple[float, float, str]:
    torch.set_num_threads(s.threads or 1)
    if s.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        loaded = load(Path(package), s)
        loaded.predict(loaded.prepare(inputs))
        loaded.sync()
        return torch.cuda.max_memory_allocated() / 1e6, 0.0, "CUDA"
    before = rss_mb("VmRSS")
    loaded = load(Path(package), s)
    loaded.predict(loaded.prepare(inputs))
    loaded.sync()
    return rss_mb("VmHWM") - before, before, "RSS"


def peak_memory(package: Path, setting: Any, inputs: dict[str, np.ndarray],
                load: Callable[[Path, Any], Any]) -> dict[str, Any]:
    """The schema's ``memory`` block: peak memory rise of a fresh process (forked from a clean ``forkserver``
    after imports) that loads ``package`` with ``setting`` through ``load(package, setting)`` (the harness's loader,
    passed in so that this module imports nothing of the harness) and predicts once."""
    import multiprocessing

    try:
        ctx = multiprocessing.get_context("forkserver")
        # everything imported before the fork, so the rise is the model's, not coremltools' import
        ctx.set_forkserver_preload(["playbook.bench", "playbook.bench_probes", "playbook.coreml", "playbook.mlprogram"])
        with ctx.Pool(1) as pool:
            rise, before, kind = pool.apply(_memory_child, (str(package), setting, inputs, load))
    except Exception as exc:  # noqa: BLE001 - no forkserver here, or the child failed: say so, no number
        return {"measured": False, "unit": "MB", "peak": None,
                "why": f"not measured: the measuring process failed ({type(exc).__name__}: {exc})"}
    if kind == "CUDA":
        what = "torch.cuda.max_memory_allocated of a fresh process while loading and predicting once"
    else:
        what = (f"rise of the peak resident set of a fresh process (forked after imports, {before:.0f} MB) while "
                "loading the package and predicting once")
    return {"measured": True, "unit": "MB", "peak": max(float(rise), 0.0), "what": what}


# --------------------------------------------------------------------------- energy
class EnergyMeter:
    """Reads a platform energy counter around a block; ``result(n)`` gives the schema's ``energy`` block."""

    def __init__(self, setting: Any, battery_voltage: float) -> None:
        self.setting, self.voltage = setting, battery_voltage
        self.source: str | None = None
        self.why = ""
        self.joules: float | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._log: Path | None = None

    def _rapl(self) -> float | None:
        try:
            return int(RAPL_ENERGY.read_text()) / 1e6
        except FileNotFoundError:
            self.why = (f"not measured: no RAPL counter on this machine ({RAPL_ENERGY} does not exist: no "
                        "powercap interface exposed, e.g. in a VM or container)")
        except PermissionError:
            self.why = f"not measured: {RAPL_ENERGY} exists but is not readable by this user (root only)"
        except (OSError, ValueError) as exc:
            self.why = f"not measured: {RAPL_ENERGY} could not be read ({exc})"
        return None

    def _nvml(self) -> Any:
        try:
            import pynvml  # optional: NVIDIA's management library bindings
        except ImportError:
            self.why = "not measured: pynvml (NVIDIA's NVML bindings) is not installed"
            return None
        try:
            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
            return handle, pynvml
        except Exception as exc:  # noqa: BLE001
            self.why = f"not measured: NVML refused ({exc})"
            return None

    @contextlib.contextmanager
    def measure(self) -> Iterator[None]:
        system = platform.system()
        start: float | None = None
        nvml = None
        if self.setting.device == "cuda":
            nvml = self._nvml()
            if nvml is not None:
                start = nvml[1].nvmlDeviceGetTotalEnergyConsumption(nvml[0]) / 1000.0  # mJ -> J
        elif system == "Linux":
            start = self._rapl()
        elif system == "Darwin":
            self._start_powermetrics()
        else:
            self.why = f"not measured: no energy counter is read on {system}"
        t0 = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - t0
            if nvml is not None and start is not None:
                self.joules = nvml[1].nvmlDeviceGetTotalEnergyConsumption(nvml[0]) / 1000.0 - start
                self.source = "NVML"
            elif start is not None:
                end = self._rapl()
                if end is not None and end >= start:
                    self.joules, self.source = end - start, "RAPL"
                elif end is not None:
                    self.why = "not measured: the RAPL counter wrapped around during the run"
            elif self._proc is not None:
                self._stop_powermetrics(elapsed)

    def _start_powermetrics(self) -> None:
        if os.geteuid() != 0 or shutil.which("powermetrics") is None:
            self.why = ("not measured: powermetrics needs root on macOS (run `sudo playbook bench ...`) "
                        "and was not run")
            return
        fd, name = tempfile.mkstemp(prefix="powermetrics-", suffix=".txt")
        os.close(fd)
        self._log = Path(name)
        self._proc = subprocess.Popen(["powermetrics", "--samplers", "cpu_power,gpu_power,ane_power", "-i", "100",
                                       "-o", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
        time.sleep(0.2)

    def _stop_powermetrics(self, elapsed: float) -> None:
        assert self._proc is not None and self._log is not None
        self._proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=5)
        text = self._log.read_text(errors="replace")
        self._log.unlink(missing_ok=True)
        watts = [float(m) / 1000.0 for m in re.findall(r"Combined Power \(CPU \+ GPU \+ ANE\):\s*([0-9.]+)\s*mW", text)]
        if watts:
            self.joules, self.source = float(np.mean(watts)) * elapsed, "powermetrics"
        else:
            self.why = "not measured: powermetrics printed no 'Combined Power' sample"

    def result(self, predictions: int) -> dict[str, Any]:
        if self.joules is None or predictions < 1:
            return {"measured": False, "unit": "J", "per_inference": None, "mah_per_inference": None,
                    "source": None, "why": self.why or "not measured: no energy counter was read"}
        per = self.joules / predictions
        scope = {"RAPL": "CPU package energy (RAPL) over the timed runs, whole package incl. other processes",
                 "NVML": "GPU board energy (NVML) over the timed runs",
                 "powermetrics": "mean CPU+GPU+ANE power (powermetrics) x duration of the timed runs, whole system"}
        return {"measured": True, "unit": "J", "per_inference": per,
                "mah_per_inference": per / (self.voltage * 3.6), "battery_voltage_v": self.voltage,
                "source": self.source, "what": scope[str(self.source)]}


# --------------------------------------------------------------------------- Core ML compute plan (macOS)
def compute_plan(package_or_compiled: Any, compute_units: str) -> dict[str, Any]:
    """The schema's ``compute_plan`` block: ops per preferred compute device and Apple's estimated cost share,
    through ``coremltools.models.compute_plan.MLComputePlan`` (macOS 14.4+ / coremltools 8+)."""
    ok, why = coreml_available()
    if not ok:
        return {"measured": False, "ops_total": None, "ops_by_device": None, "cost_by_device": None,
                "why": "not measured: MLComputePlan " + why}
    try:
        import coremltools as ct
        from coremltools.models.compute_plan import MLComputePlan

        plan = MLComputePlan.load_from_path(str(package_or_compiled), getattr(ct.ComputeUnit, compute_units))
        program = plan.model_structure.program
        if program is None:
            raise ValueError("not an ML program")
        function = program.functions["main"]
        ops = collected = 0
        by_device: dict[str, int] = {}
        cost: dict[str, float] = {}
        for op in function.block.operations:
            if op.operator_name == "const":
                continue
            ops += 1
            usage = plan.get_compute_device_usage_for_mlprogram_operation(op)
            name = type(usage.preferred_compute_device).__name__ if usage is not None else "unknown"
            name = name.replace("ML", "").replace("ComputeDevice", "") or name
            by_device[name] = by_device.get(name, 0) + 1
            estimate = plan.get_estimated_cost_for_mlprogram_operation(op)
            if estimate is not None:
                cost[name] = cost.get(name, 0.0) + float(estimate.weight)
                collected += 1
        return {"measured": True, "ops_total": ops, "ops_by_device": by_device, "cost_by_device": cost,
                "what": f"MLComputePlan with {compute_units}: preferred device of each op; cost = Apple's estimated "
                        f"share of the model's work ({collected} of {ops} ops had an estimate)"}
    except Exception as exc:  # noqa: BLE001 - an older macOS or coremltools: say why, no number
        return {"measured": False, "ops_total": None, "ops_by_device": None, "cost_by_device": None,
                "why": f"not measured: MLComputePlan failed ({type(exc).__name__}: {exc}); needs macOS 14.4+"}

"""What the stage chain costs, per stage: wall seconds, CPU seconds (the stage's notebook kernel and everything it
started included) and the load average when the stage started, optionally beside N busy-loop processes.

    python benchmarks/bench_chain.py [--model resnet] [--stages 01,02] [--smoke] [--dataset digits] [--load 1]
                                     [--reports-dir DIR] [--cache-dir DIR | --warm-cache] [--json out.json] [-v]

Runs ``python -m playbook run`` as one subprocess, as a user would (``make report`` is the default chain), into a
fresh temporary reports folder and a fresh checkpoint cache unless told otherwise (so every stage does its full
work), and reads the stage boundaries from its output (``NN_stage: running`` ... ``done in``).  A stage's CPU
seconds are the larger of two measurements over the stage (Linux): the CPU time of every process below the CLI,
sampled from ``/proc`` every 0.5 s (it sees a process nobody waits for, such as multiprocessing's forkserver), and
the growth of the CLI's own CPU time plus that of its children that have ended and been waited for (the stage's
kernel).  The total is the larger of the sampled tree and the CLI's resource usage once it has ended.  CPU seconds
do not grow when other processes compete for the cores, unless threads spin while they wait: compare them between a
quiet and a loaded machine.  ``--load N`` starts N ``python -c "while True: pass"`` processes before the chain and
kills them after.
Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^\[[^\]]*\] (?P<stage>\d\d_\w+): (?P<what>running|done in|up to date)")


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU seconds of ``pid`` and of its children that have ended and been waited for (Linux only)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime + cutime + cstime) / os.sysconf("SC_CLK_TCK")


class TreeSampler:
    """CPU seconds of a process and of every process below it, sampled from ``/proc`` every ``interval`` seconds
    (Linux).  Catches what waiting misses: a process whose parent never waits for it (multiprocessing's forkserver,
    left behind when a notebook kernel exits) still counts.  Each process counts with its own CPU time as last seen,
    so a process loses at most its last ``interval`` (and one living less than that may be missed)."""

    def __init__(self, root: int, interval: float = 0.5) -> None:
        import threading

        self.root, self.interval = root, interval
        self.seen: dict[tuple[int, str], float] = {}
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.available = Path("/proc/self/stat").exists()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> float | None:
        """Sample now; the tree's CPU seconds so far."""
        if not self.available:
            return None
        tick = os.sysconf("SC_CLK_TCK")
        stats: dict[int, tuple[int, str, float]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2:].split()
            stats[int(entry.name)] = (int(fields[1]), fields[19], (int(fields[11]) + int(fields[12])) / tick)
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in stats.items():
            children.setdefault(ppid, []).append(pid)
        todo, tree = [self.root], []
        while todo:
            pid = todo.pop()
            if pid in stats:
                tree.append(pid)
                todo.extend(children.get(pid, ()))
        with self.lock:
            for pid in tree:
                self.seen[(pid, stats[pid][1])] = stats[pid][2]
            return sum(self.seen.values())

    def __enter__(self) -> "TreeSampler":
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()


def start_load(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def stop_load(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait()


def stage_threads(reports: Path, model: str, stage: str) -> Any:
    """The thread count a stage's record states (``thread_choice`` or ``threads``: a number or
    ``ThreadChoice.to_dict()``), if any."""
    try:
        from playbook.paths import model_slug
        from playbook.stages import get_stage

        record = json.loads((reports / model_slug(model) / get_stage(stage[:2]).record).read_text())
    except Exception:  # the record's name or shape is not this script's business: the column is optional
        return None
    details = {**record.get("details", {}), **record}  # a written record has its details at the top level
    threads = details.get("thread_choice", details.get("threads"))
    return threads.get("threads") if isinstance(threads, dict) else threads


def run_chain(args: argparse.Namespace) -> dict[str, Any]:
    reports = Path(args.reports_dir or tempfile.mkdtemp(prefix="bench-chain-reports-"))
    env = dict(os.environ)
    if not args.warm_cache:
        env["PLAYBOOK_CACHE_DIR"] = args.cache_dir or tempfile.mkdtemp(prefix="bench-chain-cache-")
    cmd = [sys.executable, "-m", "playbook", "run", "--model", args.model, "--reports-dir", str(reports), "--force"]
    cmd += ["--smoke"] if args.smoke else []
    cmd += ["--dataset", args.dataset] if args.dataset else []
    cmd += ["--stages", args.stages] if args.stages else []
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    out: dict[str, Any] = {"command": " ".join(cmd), "reports_dir": str(reports),
                           "cache_dir": env.get("PLAYBOOK_CACHE_DIR", "(default)"), "busy_loops": args.load,
                           "cores": cores, "stages": []}
    busy = start_load(args.load)
    try:
        out["load_average_start"] = load_average()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1)
        current: dict[str, Any] | None = None
        tail: list[str] = []
        assert proc.stdout is not None

        def delta(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else round(b - a, 1)

        with TreeSampler(proc.pid) as sampler:
            for line in proc.stdout:
                tail = (tail + [line.rstrip()])[-40:]
                if args.verbose:
                    print(line, end="", flush=True)
                m = LINE.match(line.strip())
                if not m:
                    continue
                now, waited, tree = time.perf_counter(), tree_cpu_seconds(proc.pid), sampler.sample()
                if m["what"] == "running":
                    current = {"stage": m["stage"], "t0": now, "waited0": waited, "tree0": tree,
                               "load_average_start": load_average()}
                elif m["what"] == "up to date":
                    out["stages"].append({"stage": m["stage"], "skipped": True})
                elif current is not None and current["stage"] == m["stage"]:
                    tree_s, waited_s = delta(current["tree0"], tree), delta(current["waited0"], waited)
                    out["stages"].append({
                        "stage": current["stage"], "wall_s": round(now - current["t0"], 1),
                        "cpu_s": max(x for x in (tree_s, waited_s, None) if x is not None) if (tree_s, waited_s)
                        != (None, None) else None, "cpu_tree_sampled_s": tree_s, "cpu_waited_s": waited_s,
                        "load_average_start": current["load_average_start"]})
                    current = None
            proc.wait()
            tree_total = sampler.sample()
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the busy loops are still running: not counted
        waited_total = round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1)
        out.update(returncode=proc.returncode, wall_s=round(wall, 1), load_average_end=load_average(),
                   cpu_waited_s=waited_total, cpu_tree_sampled_s=None if tree_total is None else round(tree_total, 1),
                   cpu_s=max(waited_total, tree_total or 0.0))
        if proc.returncode != 0:
            out["tail"] = tail
    finally:
        stop_load(busy)
    for s in out["stages"]:
        if not s.get("skipped"):
            s["threads"] = stage_threads(reports, args.model, s["stage"])
    return out


def _f(x: Any, width: int, digits: int = 1) -> str:
    return f"{x:{width}.{digits}f}" if isinstance(x, (int, float)) else f"{'-':>{width}}"


def table(result: dict[str, Any]) -> str:
    """The figures as a text table: one row per stage, then what ran outside the stages, then the total."""
    la = result.get("load_average_start")
    head = (f"{'stage':<16} {'wall s':>7} {'CPU s':>7} {'CPU/wall':>8} {'CPU tree':>8} {'CPU waited':>10} "
            f"{'load 1m at start':>16} {'threads':>7}")
    lines = [f"$ {result['command']}",
             f"cache {result['cache_dir']}; {result['cores']} core(s); {result['busy_loops']} busy-loop process(es); "
             + (f"load average at start {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}" if la else "load average: n/a"), head]
    for s in result["stages"]:
        if s.get("skipped"):
            lines.append(f"{s['stage']:<16} skipped (up to date)")
            continue
        ratio = s["cpu_s"] / s["wall_s"] if s.get("cpu_s") is not None and s["wall_s"] else None
        lines.append(f"{s['stage']:<16} {_f(s['wall_s'], 7)} {_f(s.get('cpu_s'), 7)} {_f(ratio, 8, 2)} "
                     f"{_f(s.get('cpu_tree_sampled_s'), 8)} {_f(s.get('cpu_waited_s'), 10)} "
                     f"{_f((s.get('load_average_start') or [None])[0], 16, 2)} {str(s.get('threads')):>7}")
    staged_wall = sum(s.get("wall_s", 0) for s in result["stages"])
    staged_cpu = sum(s.get("cpu_s") or 0 for s in result["stages"])
    outside_wall, outside_cpu = result["wall_s"] - staged_wall, result["cpu_s"] - staged_cpu
    lines.append(f"{'outside stages':<16} {_f(outside_wall, 7)} {_f(outside_cpu, 7)}")
    ratio = result["cpu_s"] / result["wall_s"] if result["wall_s"] else None
    lines.append(f"{'total':<16} {_f(result['wall_s'], 7)} {_f(result['cpu_s'], 7)} {_f(ratio, 8, 2)} "
                 f"{_f(result.get('cpu_tree_sampled_s'), 8)} {_f(result.get('cpu_waited_s'), 10)}   exit "
                 f"{result['returncode']}; load average at end "
                 + " ".join(f"{x:.2f}" for x in (result.get("load_average_end") or [])))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet")
    parser.add_argument("--stages", default="", help="e.g. 01,03 (default: every stage)")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--dataset", default="")
    parser.add_argument("--load", type=int, default=0, metavar="N", help="busy-loop processes to run beside the chain")
    parser.add_argument("--reports-dir", default="", help="default: a fresh temporary folder")
    parser.add_argument("--cache-dir", default="", help="checkpoint cache (default: a fresh temporary folder)")
    parser.add_argument("--warm-cache", action="store_true", help="use the playbook's own checkpoint cache")
    parser.add_argument("--keep", action="store_true", help="keep the temporary reports and cache folders")
    parser.add_argument("--json", default="", help="also write the figures to this file")
    parser.add_argument("-v", "--verbose", action="store_true", help="echo the chain's output")
    args = parser.parse_args(argv)
    if args.load < 0:
        parser.error("--load must be >= 0")
    result = run_chain(args)
    print(table(result))
    if result.get("tail"):
        print("\n".join(["--- last lines of the chain's output:"] + result["tail"]), file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if not args.keep:
        for key, given in (("reports_dir", args.reports_dir), ("cache_dir", args.cache_dir or args.warm_cache)):
            if not given and Path(str(result[key])).is_dir():
                shutil.rmtree(result[key], ignore_errors=True)
    return 0 if result["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

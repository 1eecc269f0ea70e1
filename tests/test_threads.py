"""Threads that fit the free cores (``playbook.env.choose_threads``), OpenMP's wait policy set before torch loads,
worker processes x threads within the free cores (``playbook.env.plan_workers``), and the step timer's
wall and CPU seconds (``playbook.env.StepTimer``).  The load is injected, never taken from the machine."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from playbook.env import FREE_SHARE, StepTimer, ThreadChoice, choose_threads, core_budget, core_share, torch_threads
from playbook.family_training import plan_workers


@pytest.fixture(autouse=True)
def _no_core_share(monkeypatch):
    monkeypatch.delenv("PLAYBOOK_CORES", raising=False)


@pytest.mark.parametrize("cores", [1, 2, 4, 16])
@pytest.mark.parametrize("busy", [0.0, 0.3, 0.7, 1.0, 1.6, 3.0, 40.0])
def test_threads_never_exceed_the_cores_nor_the_free_ones(cores, busy):
    choice = choose_threads(busy=busy, cores=cores, limit=64)
    assert 1 <= choice.threads <= cores
    # with the busy cores of other work, never more busy threads than cores (unless one thread is already too many)
    assert choice.threads == 1 or choice.threads + busy <= cores + FREE_SHARE
    assert choice.source == "given" and choice.busy == pytest.approx(busy) and choice.cores == cores


def test_threads_drop_as_the_load_rises():
    counts = [choose_threads(busy=b, cores=8, limit=8).threads for b in (0, 0.4, 1, 2, 3.5, 6, 7, 9)]
    assert counts == [8, 8, 7, 6, 5, 2, 1, 1]
    assert counts == sorted(counts, reverse=True)
    assert [choose_threads(busy=b, cores=2, limit=2).threads for b in (0.0, 0.2, 0.6, 1.0, 2.5)] == [2, 2, 1, 1, 1]


def test_torch_default_and_the_core_share_cap_the_choice(monkeypatch):
    assert choose_threads(busy=0, cores=16, limit=4).threads == 4  # torch's default (physical cores, OMP_NUM_THREADS)
    monkeypatch.setenv("PLAYBOOK_CORES", "3")  # a batch's share of the machine for this model
    assert core_budget(16) == 3
    choice = choose_threads(busy=0, cores=16, limit=16)
    assert (choice.threads, choice.budget, choice.cores) == (3, 3, 16)
    assert choose_threads(busy=2.2, cores=16, limit=16).threads == 1
    monkeypatch.setenv("PLAYBOOK_CORES", "not a number")
    assert core_budget(16) == 16


def test_side_by_side_runs_split_the_cores_they_were_given(monkeypatch):
    monkeypatch.delenv("PLAYBOOK_CORES", raising=False)
    assert [core_share(jobs, cores=2) for jobs in (1, 2, 3)] == [2, 1, 1]  # never 0: one thread each at least
    assert core_share(3, cores=16) == 5
    monkeypatch.setenv("PLAYBOOK_CORES", "8")  # a batch inside a worker that was itself given 8 of 16 cores
    assert core_share(2, cores=16) == 4


def test_an_explicit_request_is_respected_whatever_the_load():
    choice = choose_threads(3, busy=40.0, cores=2)
    assert choice.threads == 3 and choice.source == "requested" and choice.requested == 3
    assert "more than the 2 core(s)" in choice.reason
    assert choose_threads(1, cores=2).threads == 1
    with pytest.raises(ValueError, match="requested=-1"):
        choose_threads(-1)


def test_the_choice_sets_torch_threads_for_the_block_and_is_a_record():
    before = torch.get_num_threads()
    choice = choose_threads(1, cores=2)
    with choice as c:
        assert c is choice and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(choice) as n:  # the existing helper takes a choice too
        assert n == 1
    record = json.loads(json.dumps(choose_threads(busy=1.0, cores=2, limit=2).to_dict()))
    assert record["threads"] == 1 and record["busy_cores"] == 1.0 and record["cores"] == 2
    assert {"budget", "source", "load_average", "reason", "wait_policy"} <= set(record)
    assert "OMP_WAIT_POLICY" in record["wait_policy"]


def test_the_measured_load_is_a_number_of_cores():
    choice = choose_threads(sample_s=0.05)
    assert isinstance(choice, ThreadChoice) and choice.source in ("sampled", "load average", "unknown")
    assert choice.busy is not None and choice.busy >= 0 and 1 <= choice.threads <= choice.cores


def test_workers_times_threads_never_exceed_our_cores_and_only_one_thread_workers_share_busy_ones():
    for cores in range(1, 9):
        for free in range(1, cores + 1):
            for jobs in range(1, 5):
                for pending in range(0, 5):
                    plan = plan_workers(jobs, pending, free_cores=free, cores=cores, share=True)
                    assert plan.workers * plan.threads_per_worker <= cores
                    assert plan.workers <= max(jobs, 0) and plan.workers <= pending
                    assert plan.workers == 0 or plan.workers >= 2
                    if free >= 2 and plan.workers:  # enough free cores: threads fit in them
                        assert plan.workers * plan.threads_per_worker <= free
                    elif plan.workers:  # sharing busy cores: one thread each, and only when the cores allow two
                        assert plan.threads_per_worker == 1 and cores >= 2 and "share" in plan.reason
    shared = plan_workers(2, 4, free_cores=1, cores=2, share=True)  # one other busy process on two cores
    assert (shared.workers, shared.threads_per_worker, shared.main_threads) == (2, 1, 1)
    assert "only 1 of 2 core(s) are free" in shared.reason
    assert plan_workers(2, 4, free_cores=1, cores=2, share=False).workers == 0  # a scheduler that shares per session
    one_core = plan_workers(2, 4, free_cores=1, cores=1, share=True)  # a batch's share of one core: no second one
    assert one_core.workers == 0 and one_core.main_threads == 1 and "only 1 core(s) free" in one_core.reason
    assert plan_workers(2, 4, free_cores=8, cores=8).threads_per_worker == 4
    assert plan_workers(2, 4, threads=1, free_cores=8, cores=8).main_threads == 1
    cached = plan_workers(2, 0)  # nothing to train: nothing measured
    assert cached.workers == 0 and cached.choice is None


def test_workers_share_busy_cores_only_where_the_scheduler_shares_per_process(tmp_path, monkeypatch):
    """Linux's autogroup scheduler shares the CPUs between sessions, and a notebook kernel is a session of its own: a
    second one-thread worker then adds no share of the busy cores (measured in ``make report``: 0.95 cores for two
    workers beside one busy process), so the plans keep the work in this process and say why."""
    import playbook.env as env
    from playbook.compress.coreai_runtime import plan_coreai_processes

    flag = tmp_path / "sched_autogroup_enabled"
    flag.write_text("1\n")
    helps, why = env.sharing_helps(flag)
    assert not helps and "shares the CPUs between sessions" in why
    flag.write_text("0\n")
    assert env.sharing_helps(flag) == (True, "")
    assert env.sharing_helps(tmp_path / "absent") == (True, "")  # not Linux: per-process sharing assumed
    monkeypatch.setattr(env, "AUTOGROUP", flag)
    monkeypatch.setattr(env.sharing_helps, "__defaults__", (flag,))
    assert plan_workers(2, 4, free_cores=1, cores=2).workers == 2
    assert plan_coreai_processes(0, free_cores=1, cores=2).processes == 2
    flag.write_text("1\n")
    plan = plan_workers(2, 4, free_cores=1, cores=2)
    assert plan.workers == 0 and "shares the CPUs between sessions" in plan.reason
    assert plan_coreai_processes(0, free_cores=1, cores=2).processes == 0


def test_worker_plans_count_cores_not_torch_threads(monkeypatch):
    """Under ``OMP_NUM_THREADS=1`` torch's default is one thread, but two free cores still take two one-thread worker
    processes (stage 03's students, stage 04's families, the Core AI runtime); ``$PLAYBOOK_CORES`` still caps them."""
    import playbook.env as env
    from playbook.compress.coreai_runtime import plan_coreai_processes

    monkeypatch.setattr(env, "TORCH_DEFAULT_THREADS", 1)
    monkeypatch.setattr(env, "available_cores", lambda: 2)
    quiet = env.BusyCores(0.0, "sampled", (0.0, 0.0, 0.0), 0.0, 0.5)
    monkeypatch.setattr(env, "busy_cores", lambda sample_s=0.5, cpus=None: quiet)
    monkeypatch.delenv("PLAYBOOK_CORES", raising=False)
    assert choose_threads().threads == 1  # torch threads for this process: OMP_NUM_THREADS holds
    plan = plan_workers(2, 6, noun=("student", "students"))
    assert (plan.workers, plan.threads_per_worker, plan.free_cores) == (2, 1, 2)
    assert plan_coreai_processes(0, predictions=10_000).processes == 2
    monkeypatch.setenv("PLAYBOOK_CORES", "1")  # a batch's share of one core: no second process
    assert plan_workers(2, 6).workers == 0 and plan_coreai_processes(0, predictions=10_000).processes == 0


_PROBE = ("import os, json, sys; import playbook.cli; assert 'torch' not in sys.modules; import torch; "
          "print(json.dumps({k: os.environ.get(k) for k in ('OMP_WAIT_POLICY', 'KMP_BLOCKTIME')}))")


def _fresh_python(code: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "KMP_BLOCKTIME",
                                                               "PLAYBOOK_SET_OPENMP", "PLAYBOOK_OPENMP_DEFAULTS")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**clean, "OMP_DISPLAY_ENV": "TRUE", **env})


def test_openmp_wait_policy_is_set_before_torch_loads_its_runtime():
    """The CLI's module imports the package first; torch's OpenMP runtime then reads PASSIVE when it loads (GNU
    OpenMP prints what it read with OMP_DISPLAY_ENV)."""
    done = _fresh_python(_PROBE)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}
    if "OPENMP DISPLAY ENVIRONMENT" in done.stderr:  # GNU OpenMP (torch's Linux wheels)
        assert "OMP_WAIT_POLICY = 'PASSIVE'" in done.stderr
    # the user's own setting wins; the marker tells child processes which values the playbook set
    env = "import playbook, os, json; print(json.dumps({k: os.environ.get(k) for k in " \
          "('OMP_WAIT_POLICY', 'KMP_BLOCKTIME', 'PLAYBOOK_SET_OPENMP')}))"
    mine = _fresh_python(env, OMP_WAIT_POLICY="ACTIVE")
    assert json.loads(mine.stdout.splitlines()[-1]) == {"OMP_WAIT_POLICY": "ACTIVE", "KMP_BLOCKTIME": "0",
                                                        "PLAYBOOK_SET_OPENMP": "KMP_BLOCKTIME"}
    off = _fresh_python(env, PLAYBOOK_OPENMP_DEFAULTS="0")
    assert json.loads(off.stdout.splitlines()[-1]) == {"OMP_WAIT_POLICY": None, "KMP_BLOCKTIME": None,
                                                       "PLAYBOOK_SET_OPENMP": None}


def test_the_record_says_who_set_the_wait_policy(monkeypatch):
    from playbook.env import wait_policy

    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setenv("KMP_BLOCKTIME", "0")
    monkeypatch.setenv("PLAYBOOK_SET_OPENMP", "KMP_BLOCKTIME")
    policy = wait_policy()
    assert policy["OMP_WAIT_POLICY"] == "ACTIVE" and policy["OMP_WAIT_POLICY_set_by"] == "user"
    assert policy["KMP_BLOCKTIME"] == "0" and policy["KMP_BLOCKTIME_set_by"] == "playbook"


def test_step_timer_records_wall_and_the_cpu_seconds_of_a_child_process():
    timer = StepTimer()
    with timer.step("child"):
        subprocess.run([sys.executable, "-c", "import time\nt = time.process_time()\n"
                                              "while time.process_time() - t < 0.4: pass"], check=True)
    with timer.step("sleep"):
        time.sleep(0.2)
    with timer.step("sleep"):
        time.sleep(0.05)
    steps = timer.to_dict()["steps"]
    assert steps["child"]["cpu_children_s"] >= 0.35 and steps["child"]["cpu_s"] >= steps["child"]["cpu_children_s"]
    assert steps["child"]["wall_s"] >= 0.35
    assert steps["sleep"]["calls"] == 2 and steps["sleep"]["wall_s"] >= 0.24 and steps["sleep"]["cpu_s"] < 0.1
    record = json.loads(json.dumps(timer.to_dict()))
    assert record["total"]["wall_s"] >= 0.6 and record["total"]["cpu_children_s"] >= 0.35

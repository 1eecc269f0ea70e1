"""The plan of a run and its stamps (what is up to date), checked before anything runs or is deleted: which notebooks, exactly the parameters each one
declares, every value's type and, for the playbook's own notebooks, every value through the stage's config class;
the dataset and smoke setting against the records already there; the reports folder; the upstream records.

``playbook.pipeline`` runs what is planned here (and re-exports these names).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import hashlib
import json
import math
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

from playbook.command import BUDGET_NAMES, RESERVED, RunCommand, format_assignment
from playbook.config import ConfigError
from playbook.env import playbook_version
from playbook.notebooks import batch_parameters, notebook_parameters, notebook_source_hash, stage_notebooks
from playbook.paths import model_slug, notebooks_dir
from playbook.records import (StageRecord, changed_packages, missing_outputs, read_json, record_path, sha256_path,
                              stale_inputs, write_json)
from playbook.report import pages
from playbook.stages import STAGES, Stage, get_stage, upstream_of


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One model's run: the command, where reports go, which notebooks, and how to report progress."""

    command: RunCommand
    reports_root: Path
    notebooks_dir: Path = dataclasses.field(default_factory=notebooks_dir)
    update_index: bool = True
    verbose: bool = False

    @property
    def model(self) -> str:
        return self.command.model

    @property
    def model_dir(self) -> Path:
        return Path(self.reports_root).resolve() / model_slug(self.model)


@dataclasses.dataclass(frozen=True)
class Step:
    """One planned stage: its registry entry, its notebook and exactly the parameters the notebook declares;
    ``declared``: those of them that come from the model's declared budgets (``model_budgets``)."""

    stage: Stage
    notebook: Path
    params: dict[str, Any]
    declared: dict[str, Any] = dataclasses.field(default_factory=dict)


# --------------------------------------------------------------------------- the plan
_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "dict": (dict,), "list": (list, tuple)}


_NOT_FINITE = {"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}


def _check_type(notebook: str, name: str, value: Any, type_name: str, default: Any = None) -> None:
    """Raise ``ConfigError`` unless ``value`` has the type the notebook declares for ``name``; the hint names the
    option that sets it (``-p`` or ``--budget``) with the notebook's default as the example."""
    expected = _TYPES.get(type_name)
    if expected is None:
        return
    flag = "--budget" if name in BUDGET_NAMES else "-p"
    example = f"{flag} {name}={default if default not in (None, '') else 8}"
    if isinstance(value, bool) and type_name in ("int", "float"):
        raise ConfigError(f"{name}={value!r}: {notebook} declares {name} as {type_name}, got a bool; e.g. {example}")
    numeric = type_name in ("int", "float")
    if numeric and (isinstance(value, float) and not math.isfinite(value)
                    or isinstance(value, str) and value.strip().lower() in _NOT_FINITE):
        raise ConfigError(f"{name}={value!r}: {notebook} declares {name} as {type_name}; NaN and infinity are not "
                          f"valid values, give a finite number, e.g. {example} (its default)")
    if not isinstance(value, expected):
        hint = (f"; write numbers bare, e.g. {example}" if numeric else
                "; text needs no quotes unless it contains spaces" if type_name == "str" else "")
        raise ConfigError(f"{name}={value!r}: {notebook} declares {name} as {type_name}, got "
                          f"{type(value).__name__}{hint}")


def select_stages(spec: str, available: list[tuple[Stage, Path]]) -> list[tuple[Stage, Path]]:
    """The available stages named by ``spec`` ("01,06", "1,6", "baseline,report"; empty: all), in pipeline order."""
    if not spec:
        return list(available)
    chosen: set[str] = set()
    for item in (s.strip() for s in str(spec).split(",") if s.strip()):
        try:
            stage = get_stage(item)
        except ConfigError:
            stage = None
        if stage is None or all(stage.name != s.name for s, _ in available):
            valid = [f"{s.number} ({s.name})" for s, _ in available]
            raise ConfigError(f"--stages: no stage notebook matches {item!r}; the stages here are {valid}")
        chosen.add(stage.name)
    return [(s, p) for s, p in available if s.name in chosen]


def _validate_values(stage: Stage, notebook: Path, params: dict[str, Any], declared: dict[str, Any]) -> None:
    """Build the stage's config from the planned values when the notebook is one of the playbook's (its parameters
    are exactly the config's fields): every value is checked before anything runs."""
    try:
        config = stage.config_class()
    except (ImportError, AttributeError):
        return
    if set(declared) != set(config.field_names()):
        return
    try:
        config.from_dict(params)
    except ConfigError as exc:
        raise ConfigError(f"{notebook.stem}: {exc}") from None


def declared_parameters(spec: RunSpec) -> dict[str, tuple[Path, dict[str, Any]]]:
    """The selected stages' notebooks and the parameters each declares, by stage name."""
    selected = select_stages(spec.command.stages, stage_notebooks(Path(spec.notebooks_dir)))
    if not selected:
        raise ConfigError(f"no stage notebooks to run in {spec.notebooks_dir}")
    return {stage.name: (path, notebook_parameters(path)) for stage, path in selected}


def check_parameter_names(cmd: RunCommand, declared: dict[str, tuple[Path, dict[str, Any]]]) -> None:
    """Raise ``ConfigError`` when a ``-p``/``--budget`` name is declared by none of the selected notebooks."""
    known = set().union(*(set(names) for _, names in declared.values()))
    unknown = sorted(set(cmd.params) - known)
    bad_budget = sorted(set(cmd.budget) - known)
    if unknown or bad_budget:
        by_nb = "; ".join(f"{get_stage(s).stem}: {', '.join(sorted(set(d) - set(RESERVED) - set(BUDGET_NAMES)))}"
                          for s, (_, d) in declared.items())
        budgets = sorted(k for k in known if k in BUDGET_NAMES)
        what = [f"parameter(s) {unknown}"] if unknown else []
        what += [f"budget(s) {bad_budget}"] if bad_budget else []
        raise ConfigError(f"no selected notebook declares {' or '.join(what)}; nothing was run. Parameters (-p): "
                          f"{by_nb}. Budgets (--budget NAME=VALUE): {budgets or 'none of the selected stages'}")


def model_budgets(cmd: RunCommand, names: Iterable[str]) -> dict[str, Any]:
    """The bounded budgets the model declares (``playbook.models.run_budgets``) that this run applies: only those
    named in ``names`` (the parameters the selected notebooks declare), none that the command sets itself with
    ``-p``/``--budget`` (the user wins), and none at all with ``--smoke`` (smoke shrinks every size already)."""
    if cmd.smoke:
        return {}
    from playbook.models import run_budgets

    names, given = set(names), set(cmd.params) | set(cmd.budget)
    return {k: v for k, v in run_budgets(cmd.model).items() if k in names and k not in given}


def model_budgets_note(cmd: RunCommand, applied: dict[str, Any]) -> str:
    """The line a run prints once before its stages: which budgets the model declares and applies, and how to
    override them; empty when it applies none."""
    if not applied:
        return ""
    from playbook.models import declared_size, run_budgets

    size = declared_size(cmd.model)
    overridden = [k for k in run_budgets(cmd.model) if k in set(cmd.params) | set(cmd.budget)]
    note = (f"{cmd.model} declares bounded budgets{f' ({size})' if size else ''}: "
            f"{' '.join(format_assignment(k, v) for k, v in applied.items())}; -p NAME=VALUE overrides any of them")
    return note + (f" (this run's own values: {', '.join(overridden)})" if overridden else "")


def plan(spec: RunSpec) -> list[Step]:
    """The selected notebooks, each with exactly the parameters it declares, every value checked.

    Under the command's own values lie the bounded budgets the model declares (``model_budgets``: a large
    pretrained network's, never with ``--smoke``), checked like the user's.

    Raises ``ConfigError`` before anything runs when the model name is unknown, a ``-p``/budget name is declared
    by none of the selected notebooks, a value has the wrong type or is invalid for its stage, or no notebook is
    selected.
    """
    from playbook.models import check_model_name

    cmd = spec.command
    check_model_name(cmd.model)
    check_reports_folder(Path(spec.reports_root))
    declared = declared_parameters(spec)
    check_parameter_names(cmd, declared)
    budgets = model_budgets(cmd, set().union(*(set(names) for _, names in declared.values())))
    core: dict[str, Any] = {"model": cmd.model, "smoke": bool(cmd.smoke)}
    if cmd.dataset:
        core["dataset"] = cmd.dataset
    steps = []
    for name, (path, names) in declared.items():
        stage = get_stage(name)
        batch = batch_parameters(names, spec.reports_root.resolve(), smoke=False)
        params = {k: v for k, v in {**core, **budgets, **cmd.params, **cmd.budget, **batch}.items() if k in names}
        for k, v in params.items():
            _check_type(path.name, k, v, str(names[k].get("inferred_type_name", "")), names[k].get("default"))
        _validate_values(stage, path, params, names)
        steps.append(Step(stage, path, params, {k: v for k, v in budgets.items() if k in names}))
    check_inputs(steps)
    check_existing_records(spec, steps)
    check_upstream(spec.model_dir, steps, advice=spec)
    return steps


def _advice(spec: "RunSpec | None", stages: Sequence[str], model: str = "", **changes: Any) -> str:
    """The exact command that does what the advice says: this run's own command (model, dataset, smoke, parameters,
    budgets, reports folder) with ``--stages`` set to ``stages`` and ``changes`` applied."""
    if spec is None:
        return f"python -m playbook run --model {model} --stages {','.join(stages)}"
    command = spec.command.replace(stages=",".join(stages), force=False, **changes)
    if command.reports_dir:
        command = command.replace(reports_dir=str(Path(spec.reports_root).resolve()))
    return command.shell()


def check_inputs(steps: list[Step]) -> None:
    """Stage 01's own inputs, before anything runs or is deleted: an image folder too small for the split (a few
    images per class; inside the stage it ends in a statistics library's error) and a ``checkpoint`` that cannot be
    right (pickled code, not a state dict, NaN or infinite weights)."""
    from playbook.data import DatasetConfig
    from playbook.train import CheckpointError, read_state_dict

    for step in steps:
        if step.stage.name != "baseline":
            continue
        name, checkpoint = step.params.get("dataset"), step.params.get("checkpoint")
        try:
            if isinstance(name, str) and name.startswith("imagefolder:"):
                DatasetConfig(name=name).check_split_sizes()
            if isinstance(checkpoint, str) and checkpoint:
                read_state_dict(Path(checkpoint).expanduser(), user_file=True)
        except (ConfigError, CheckpointError) as exc:
            raise ConfigError(f"{step.notebook.stem}: {exc}") from None


def check_existing_records(spec: "RunSpec", steps: list[Step]) -> None:
    """When 01 is not among the stages, every other stage builds on the existing ``baseline.json``: a run that asks
    for another dataset or smoke setting than it was made with is refused here, before anything runs or is
    deleted (inside the stage it would fail only after the previous report had been replaced)."""
    selected = {s.stage.name for s in steps}
    path = record_path(spec.model_dir, "baseline")
    if "baseline" in selected or not path.exists():
        return
    try:
        record = StageRecord.from_dict(read_json(path))
    except (OSError, ValueError):
        return  # check_upstream and the stage say what is wrong with it
    cmd = spec.command
    made_on = str((record.get("dataset") or {}).get("name") or record.config.get("dataset") or "")
    problems, fixes = [], {}
    if bool(cmd.smoke) != record.smoke:
        problems.append(f"smoke={record.smoke}, this run smoke={bool(cmd.smoke)}")
        fixes["smoke"] = record.smoke
    if cmd.dataset and made_on and cmd.dataset != made_on:
        problems.append(f"dataset {made_on!r}, this run {cmd.dataset!r}")
        fixes["dataset"] = made_on
    if problems:
        numbers = sorted(get_stage(n).number for n in selected)
        raise ConfigError(f"{path} was made with {' and '.join(problems)}; the stages {','.join(numbers)} build on "
                          f"it. Run `{_advice(spec, numbers, **fixes)}` to match it, or add 01 to --stages to "
                          "rebuild the baseline; nothing was run or deleted")


def check_reports_folder(root: Path) -> None:
    """Raise ``ConfigError`` unless ``root`` is (or can be made) a writable folder: checked before anything runs."""
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"reports folder {root}: {probe} is a file, not a folder; choose another with --reports-dir")
    try:  # os.access says yes to root even on an immutable or read-only-mounted folder: try it
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        why = ": a permission problem, this user may not write there" if exc.errno in (
            errno.EACCES, errno.EPERM, errno.EROFS) else ""
        raise ConfigError(f"reports folder {root} is not writable ({probe}: {exc.strerror}){why}; choose another "
                          "with --reports-dir") from None


def check_upstream(model_dir: Path, steps: list[Step], advice: "RunSpec | None" = None) -> None:
    """Raise ``ConfigError`` before anything runs when a selected stage needs a record this run will not make and
    that does not exist (02 without 01), or when the report would read records computed from inputs that have
    changed since (a stage interrupted after its upstream re-ran), or whose packages no longer have the hashes
    the record holds: naming them and the exact command (this run's own flags) that refreshes them.
    """
    selected = {s.stage.name for s in steps}
    model = str(steps[0].params.get("model", "")) if steps else ""
    needs_baseline = [s.stage.stem for s in steps if s.stage.name not in ("baseline", "report")]
    if needs_baseline and "baseline" not in selected and not record_path(model_dir, "baseline").exists():
        numbers = sorted({"01"} | {get_stage(n).number for n in selected})
        raise ConfigError(f"{', '.join(needs_baseline)} read(s) the baseline's record, and {model_dir / 'baseline.json'} "
                          f"does not exist: run `{_advice(advice, numbers, model)}` (or run without --stages)")
    if "report" not in selected:
        return
    force = bool(advice is not None and advice.command.force)
    # a measuring stage that runs now moves every later record it does not redo aside (.stale/) once it is done:
    # those records are not read by this run's report, whatever their state
    reruns = [STAGES.index(s.stage) for s in steps if s.stage.measures_variants
              and (force or not is_up_to_date(model_dir, s, stage_fingerprint(s, model_dir)))]
    first_rerun = min(reruns) if reruns else len(STAGES)
    stale = {}
    for stage in STAGES:
        path = record_path(model_dir, stage.name) if stage.measures_variants else None
        if path is None or stage.name in selected or not path.exists() or STAGES.index(stage) > first_rerun:
            continue
        try:
            record = StageRecord.from_dict(read_json(path))
        except ValueError as exc:
            stale[stage] = [f"unreadable: {exc}"]
            continue
        problems = [f"its package {p} (changed since it was measured)" for p in changed_packages(model_dir, record)]
        problems += [f"its package {p} (missing)" for p in missing_outputs(model_dir, record)]
        problems += stale_inputs(model_dir, record)
        if problems:
            stale[stage] = problems
    if stale:
        names = "; ".join(f"{s.record} ({', '.join(p)})" for s, p in stale.items())
        # the stale stages, and every later stage with a record: once a stage re-runs, the records after it that this
        # run does not redo are moved aside, so they are named too (or the report would lose them)
        first = min(STAGES.index(s) for s in stale)
        later = {s.number for s in STAGES[first:] if s.measures_variants and record_path(model_dir, s.name).exists()}
        numbers = sorted({s.number for s in stale} | later | {get_stage(n).number for n in selected})
        raise ConfigError(f"stale records in {model_dir}: {names}; the report would mix runs. Refresh them with "
                          f"`{_advice(advice, numbers, model)}` (or run every stage)")


# --------------------------------------------------------------------------- stamps
def stamp_path(model_dir: Path, stage: str) -> Path:
    """``reports/<model>/<stage>.stamp.json``: beside the stage's record."""
    return Path(model_dir) / f"{stage}.stamp.json"


def stage_outputs(model_dir: Path, stage: Stage) -> list[Path]:
    """The files a stage's success leaves: its record (and the report page for the report stage)."""
    if stage.name == "report":
        return [Path(model_dir) / pages.REPORT_RECORD, Path(model_dir) / pages.REPORT_HTML]
    return [record_path(model_dir, stage.name)]


def stage_fingerprint(step: Step, model_dir: Path) -> str:
    """Hash of what determines a stage's results: the notebook source, its parameters, the upstream records,
    and the playbook's version.  ``reports_dir`` and ``interactive`` are left out (they change no result)."""
    upstream = {s.name: sha256_path(record_path(model_dir, s.name)) for s in upstream_of(step.stage.name)
                if s.measures_variants and record_path(model_dir, s.name).exists()}
    payload = {"notebook": step.notebook.name, "source": notebook_source_hash(step.notebook),
               "params": {k: v for k, v in sorted(step.params.items()) if k not in ("reports_dir", "interactive")},
               "upstream": upstream, "playbook": playbook_version()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=repr).encode()).hexdigest()[:20]


def is_up_to_date(model_dir: Path, step: Step, fingerprint: str) -> bool:
    """True when the stage's stamp has this fingerprint and every output it made (record, packages) still exists."""
    try:
        stamp = json.loads(stamp_path(model_dir, step.stage.name).read_text())
    except (OSError, ValueError):
        return False
    if stamp.get("fingerprint") != fingerprint or not all(p.exists() for p in stage_outputs(model_dir, step.stage)):
        return False
    if step.stage.measures_variants:
        try:
            record = StageRecord.from_dict(read_json(record_path(model_dir, step.stage.name)))
        except (OSError, ValueError):
            return False
        # every package it names exists with the hash it was measured with, and so does everything it was made from
        return not (missing_outputs(model_dir, record) or changed_packages(model_dir, record)
                    or stale_inputs(model_dir, record))
    return True


def write_stamp(model_dir: Path, step: Step, fingerprint: str, seconds: float) -> Path:
    """Record that the stage finished with this fingerprint (written after its outputs, atomically)."""
    return write_json(stamp_path(model_dir, step.stage.name), {
        "stage": step.stage.name, "fingerprint": fingerprint, "notebook": step.notebook.name,
        "notebook_sha256": notebook_source_hash(step.notebook), "playbook_version": playbook_version(),
        "params": {k: repr(v) for k, v in step.params.items()}, "seconds": round(seconds, 2), "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})

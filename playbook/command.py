"""The one place that builds or parses a ``playbook run`` command.

A run is described by a ``RunCommand`` (model, dataset, smoke, parameters, budgets, stages, reports
folder); records store it as a dict (``RunCommand.to_dict``) and the command line shown to a reader
is always built from that dict (``RunCommand.shell``), never parsed back from text.

Budgets have one name each, the name of the notebook parameter they set: ``max_top1_drop`` (points
of top-1 against the FP32 reference), ``max_size_mb`` and ``max_latency_ms``.  On the command line
``--budget top1_drop=0.5`` is accepted as a short form of ``--budget max_top1_drop=0.5``; it is
translated here, once, and stored and printed in the long form.
"""
from __future__ import annotations

import ast
import dataclasses
import shlex
from typing import Any, Mapping, Sequence

from playbook.config import ConfigError

BUDGET_NAMES = ("max_top1_drop", "max_size_mb", "max_latency_ms")
# the parameters ``playbook run`` takes as options of their own, not as ``-p name=value``
OPTIONS = {"model": "--model", "dataset": "--dataset", "smoke": "--smoke", "reports_dir": "--reports-dir"}
RESERVED = tuple(OPTIONS)
PROGRAM = ("python", "-m", "playbook")


def parse_value(text: str) -> Any:
    """A ``-p`` value: a Python literal (``3``, ``0.5``, ``True``, ``{'width': 16}``), else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def format_assignment(name: str, value: Any) -> str:
    """``name=value`` as ``-p`` takes it: text that reads back as itself stays bare, the rest is a literal."""
    return f"{name}={value}" if isinstance(value, str) and parse_value(value) == value else f"{name}={value!r}"


def parse_assignments(items: Sequence[str] | None, option: str) -> dict[str, Any]:
    """``["epochs=3", "lr=0.05"]`` -> ``{"epochs": 3, "lr": 0.05}``; a malformed item raises ``ConfigError``."""
    out: dict[str, Any] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise ConfigError(f"{option} {item!r} must look like name=value (a Python identifier, '=', a value)")
        if name in out:
            raise ConfigError(f"{option} gives {name!r} twice")
        out[name] = parse_value(value)
    return out


def budget_name(name: str) -> str:
    """The canonical budget name for ``name`` (``top1_drop`` -> ``max_top1_drop``); unknown names raise."""
    canonical = name if name.startswith("max_") else f"max_{name}"
    if canonical not in BUDGET_NAMES:
        raise ConfigError(f"--budget {name!r} is not a budget; the budgets are "
                          f"{[b[len('max_'):] for b in BUDGET_NAMES]} (or their full names {list(BUDGET_NAMES)})")
    return canonical


def parse_budget(items: Sequence[str] | None) -> dict[str, Any]:
    """``["top1_drop=0.5", "max_size_mb=1"]`` -> ``{"max_top1_drop": 0.5, "max_size_mb": 1}``."""
    return canonical_budget(parse_assignments(items, "--budget"))


def canonical_budget(values: Mapping[str, Any]) -> dict[str, Any]:
    """Budgets under their canonical names (``{"top1_drop": 0.5}`` -> ``{"max_top1_drop": 0.5}``), values as they
    are: what ``--budget`` and a batch file's ``budget:`` both give; a name given twice raises ``ConfigError``."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        canonical = budget_name(name)
        if canonical in out:
            raise ConfigError(f"--budget gives {canonical!r} twice")
        out[canonical] = value
    return out


def option_for(name: str) -> str:
    """How ``playbook run`` takes the notebook parameter ``name``: its own option, ``--budget name=`` or ``-p name=``."""
    return OPTIONS.get(name) or (f"--budget {name}=" if name in BUDGET_NAMES else f"-p {name}=")


@dataclasses.dataclass(frozen=True)
class RunCommand:
    """What ``playbook run`` was (or will be) asked to do: enough to rebuild the command line."""

    model: str
    dataset: str = ""
    smoke: bool = False
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    budget: dict[str, Any] = dataclasses.field(default_factory=dict)
    stages: str = ""
    reports_dir: str = ""
    force: bool = False

    def __post_init__(self) -> None:
        reserved = sorted(set(self.params) & set(RESERVED))
        if reserved:
            raise ConfigError(f"-p {reserved}: use --model, --dataset, --smoke and --reports-dir for these")
        budgets = sorted(set(self.params) & set(BUDGET_NAMES))
        if budgets:
            raise ConfigError(f"-p {budgets}: budgets go with --budget, e.g. --budget {budgets[0]}=...")
        for name in self.budget:
            budget_name(name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunCommand":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def replace(self, **changes: Any) -> "RunCommand":
        return dataclasses.replace(self, **changes)

    def merged(self, other: "RunCommand") -> "RunCommand":
        """This command with ``other``'s parameters and budgets added where this one has none of that name."""
        def union(mine: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
            return {**mine, **{k: v for k, v in theirs.items() if k not in mine}}

        return self.replace(params=union(self.params, other.params), budget=union(self.budget, other.budget))

    def argv(self, program: Sequence[str] = PROGRAM, extra: Sequence[str] = ()) -> list[str]:
        """The command as an argument list (``program`` first)."""
        parts = [*program, "run", OPTIONS["model"], self.model]
        if self.dataset:
            parts += [OPTIONS["dataset"], self.dataset]
        if self.smoke:
            parts.append(OPTIONS["smoke"])
        if self.stages:
            parts += ["--stages", self.stages]
        for name, value in self.params.items():
            parts += ["-p", format_assignment(name, value)]
        if self.budget:
            parts += ["--budget", *(format_assignment(n, v) for n, v in self.budget.items())]
        if self.reports_dir:
            parts += [OPTIONS["reports_dir"], self.reports_dir]
        if self.force:
            parts.append("--force")
        return parts + list(extra)

    def shell(self, program: Sequence[str] = PROGRAM) -> str:
        """The command line, shell-quoted: what records and reports show."""
        return " ".join(shell_quote(p) for p in self.argv(program))


def shell_quote(arg: str) -> str:
    """``shlex.quote``, except that an argument holding single quotes and nothing a POSIX shell expands inside
    double quotes (``$``, backquote, backslash, ``"``, ``!``) is double-quoted: ``-p "recipes=['a', 'b']"`` reads
    better than shlex's ``'recipes=['"'"'a'"'"', ...`` and splits back into the same argument."""
    if "'" in arg and not set(arg) & set('"$`\\!'):
        return f'"{arg}"'
    return shlex.quote(arg)

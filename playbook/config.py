"""Validated configuration dataclasses.

Every stage is driven by a frozen dataclass.  ``from_dict`` rejects unknown keys
(a typo in a notebook parameter or a CLI ``-p`` flag is an error, never a silent
default) and every field is checked in ``__post_init__`` so a bad value fails at
the boundary with a message that names the field and what would be valid.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from typing import Any, Mapping, TypeVar

T = TypeVar("T", bound="StrictConfig")


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message says what is valid."""


def check_choice(field: str, value: Any, choices: "list[Any] | tuple[Any, ...]") -> None:
    """Raise ``ConfigError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{field}={value!r} is not valid; choose one of {list(choices)}")


def check_range(field: str, value: float, low: float | None = None, high: float | None = None) -> None:
    """Raise ``ConfigError`` unless ``low <= value <= high`` (either bound optional)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{field}={value!r} must be a number")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"{field}={value!r} is out of range [{low}, {high}]")


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "None"
    return getattr(origin or hint, "__name__", str(hint))


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits the annotation ``hint`` (the outer type; element types are the field's own check)."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    outer = origin or hint
    if outer is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if outer is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if outer in (list, tuple):
        return isinstance(value, (list, tuple))
    if isinstance(outer, type):
        return isinstance(value, outer)
    return True


def check_types(config: Any) -> None:
    """Raise ``ConfigError`` naming the first field whose value does not fit its annotation
    (``model_options="x"`` for a dict, ``data_dir=3`` for a string, ``epochs=True`` for an int)."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        hint = hints.get(f.name, Any)
        if not _matches(value, hint):
            raise ConfigError(f"{f.name}={value!r} must be {_type_name(hint)}, not {type(value).__name__}")


@dataclasses.dataclass(frozen=True)
class StrictConfig:
    """Base class: frozen, serialisable, strict about unknown keys and about each field's type.

    Subclasses that define ``__post_init__`` call ``super().__post_init__()`` first, so a value of
    the wrong type fails with the field's name before any range or choice check runs.
    """

    def __post_init__(self) -> None:
        check_types(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls: type[T], values: Mapping[str, Any]) -> T:
        """Build from a mapping; unknown keys raise ``ConfigError`` listing the valid ones."""
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ConfigError(
                f"unknown {cls.__name__} key(s) {unknown}; valid keys are {sorted(cls.field_names())}"
            )
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self: T, **changes: Any) -> T:
        unknown = sorted(set(changes) - set(self.field_names()))
        if unknown:
            raise ConfigError(f"unknown {type(self).__name__} key(s) {unknown}")
        return dataclasses.replace(self, **changes)

    def non_defaults(self, skip: tuple[str, ...] = ()) -> dict[str, Any]:
        """The fields whose value differs from the class default (for reproduction commands)."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name in skip:
                continue
            if getattr(self, f.name) != field_default(f):
                out[f.name] = getattr(self, f.name)
        return out

    def technique_config(self, technique: type[T], **overrides: Any) -> T:
        """``technique`` (e.g. ``bench.BenchConfig``) built from this config's fields of the same names, ``overrides``
        winning: a stage parameter named like a technique field *is* that field (see ``technique_field``), so the
        technique validates it and nothing is copied by hand."""
        names = set(self.field_names()) & set(technique.field_names())
        return technique(**{**{n: getattr(self, n) for n in sorted(names)}, **overrides})

    def fingerprint(self, exclude: tuple[str, ...] = ()) -> str:
        """A short stable hash of the config (for cache keys and skip-if-done checks)."""
        payload = {k: v for k, v in self.to_dict().items() if k not in exclude}
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def technique_field(technique: type[StrictConfig], name: str, stage_default: Any = dataclasses.MISSING) -> Any:
    """A stage config's field that is ``technique``'s field ``name`` under the same name (a flat notebook parameter):
    its default is the technique's, read from there, unless the stage declares its own with ``stage_default`` (then
    ``tests/test_config.py`` names it).  A name the technique does not have fails when the stage module is imported.
    ``StrictConfig.technique_config`` passes the value on, where the technique checks it."""
    fields = {f.name: f for f in dataclasses.fields(technique)}
    if name not in fields:
        raise TypeError(f"{technique.__name__} has no field {name!r}; its fields are {sorted(fields)}")
    metadata = {"technique": technique, "stage_default": stage_default is not dataclasses.MISSING}
    if stage_default is not dataclasses.MISSING:
        return dataclasses.field(default=stage_default, metadata=metadata)
    source = fields[name]
    if source.default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=source.default_factory, metadata=metadata)
    return dataclasses.field(default=source.default, metadata=metadata)


def field_default(f: "dataclasses.Field[Any]") -> Any:
    """A dataclass field's default value (its factory called), or ``dataclasses.MISSING``."""
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


_NAMESPACE_IGNORED = {"In", "Out", "get_ipython", "exit", "quit", "open"}


def parameters_from_namespace(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The user variables of a notebook namespace (``globals()``): what the parameters cell
    and papermill's injected cell defined.  Modules, functions, classes and private names are skipped."""
    import types

    out = {}
    for name, value in namespace.items():
        if name.startswith("_") or name in _NAMESPACE_IGNORED:
            continue
        if isinstance(value, (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type)):
            continue
        out[name] = value
    return out

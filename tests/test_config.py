import dataclasses
import re

import pytest

from playbook.config import ConfigError, StrictConfig, parameters_from_namespace


@dataclasses.dataclass(frozen=True)
class Example(StrictConfig):
    a: int = 1
    b: str = "x"


def test_from_dict_rejects_unknown_keys_and_lists_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown Example key\(s\) \['c'\]; valid keys are \['a', 'b'\]"):
        Example.from_dict({"a": 2, "c": 3})
    assert Example.from_dict({"a": 2}).a == 2


def test_fingerprint_changes_with_values_and_ignores_excluded():
    base = Example()
    assert base.fingerprint() == Example().fingerprint()
    assert base.fingerprint() != base.replace(a=2).fingerprint()
    assert base.fingerprint(exclude=("a",)) == base.replace(a=2).fingerprint(exclude=("a",))


def test_parameters_from_namespace_keeps_only_user_values():
    import math

    ns = {"model": "resnet", "epochs": 3, "_private": 1, "math": math, "In": [], "f": lambda: 0, "Example": Example}
    assert parameters_from_namespace(ns) == {"model": "resnet", "epochs": 3}


@dataclasses.dataclass(frozen=True)
class Typed(StrictConfig):
    name: str = "x"
    size: int = 1
    rate: float = 0.5
    flag: bool = False
    options: dict = dataclasses.field(default_factory=dict)
    items: list = dataclasses.field(default_factory=list)
    folder: str | None = None


@pytest.mark.parametrize("field, value, message", [
    ("name", 3, "name=3 must be str, not int"),
    ("size", True, "size=True must be int, not bool"),
    ("size", 1.5, "size=1.5 must be int, not float"),
    ("rate", "fast", "rate='fast' must be float, not str"),
    ("flag", "yes", "flag='yes' must be bool, not str"),
    ("options", "x", "options='x' must be dict, not str"),
    ("items", "a,b", "items='a,b' must be list, not str"),
    ("folder", 3, "folder=3 must be str or None, not int"),
])
def test_values_of_the_wrong_type_are_rejected_naming_the_field(field, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        Typed(**{field: value})


def test_values_of_the_right_type_pass():
    ok = Typed(name="y", size=2, rate=1, flag=True, options={"a": 1}, items=("a",), folder=None)
    assert ok.rate == 1 and Typed(folder="/tmp").folder == "/tmp"


# --------------------------------------------------------------------------- stage parameters that are technique fields
def _builds():
    """(stage config, technique config it builds with ``technique_config``, the fields stage 01/05 deliberately give
    their own default).  Anything else a stage names like one of the technique's fields must be that field."""
    from playbook.bench import BenchConfig
    from playbook.stages.baseline import BaselineConfig
    from playbook.stages.benchmark import BenchmarkConfig
    from playbook.train import TrainConfig

    return [(BaselineConfig, TrainConfig, {"epochs", "min_steps", "patience"}), (BenchmarkConfig, BenchConfig, set())]


@pytest.mark.parametrize("index", [0, 1], ids=["baseline-train", "benchmark-bench"])
def test_a_stage_parameter_named_like_a_technique_field_is_that_field(index):
    """One place per value: a stage field that shadows a technique field is declared with ``technique_field`` (its
    default read from the technique), the stage's own defaults for such fields are the ones listed, and the
    technique config built from the stage's defaults carries every shared value."""
    from playbook.config import field_default
    from playbook.stages.common import MeasuredStageConfig

    stage, technique, own_defaults = _builds()[index]
    mine = {f.name: f for f in dataclasses.fields(stage)}
    theirs = {f.name: f for f in dataclasses.fields(technique)}
    shared = set(mine) & set(theirs)
    common = {f.name for f in dataclasses.fields(MeasuredStageConfig)}  # every stage's (threads): same default
    tagged = {n for n, f in mine.items() if f.metadata.get("technique") is technique}
    assert shared - common == tagged, "declare these with technique_field(...): " + str(sorted(shared - common - tagged))
    assert {n for n in tagged if mine[n].metadata["stage_default"]} == own_defaults
    for name in shared - own_defaults:
        assert field_default(mine[name]) == field_default(theirs[name]), name
    built, defaults = stage().technique_config(technique), stage()
    assert {n: getattr(built, n) for n in shared} == {n: getattr(defaults, n) for n in shared}


def test_technique_field_refuses_a_name_the_technique_does_not_have():
    from playbook.config import technique_field

    assert technique_field(Example, "a").default == 1
    with pytest.raises(TypeError, match=r"Example has no field 'c'; its fields are \['a', 'b'\]"):
        technique_field(Example, "c")


def test_technique_config_passes_same_named_fields_and_overrides_win():
    from playbook.config import technique_field

    @dataclasses.dataclass(frozen=True)
    class Stage(StrictConfig):
        a: int = technique_field(Example, "a")
        other: str = "y"

    assert Stage().a == 1 and Stage(a=4).technique_config(Example) == Example(a=4)
    assert Stage(a=4).technique_config(Example, a=5, b="z") == Example(a=5, b="z")

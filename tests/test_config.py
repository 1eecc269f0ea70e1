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

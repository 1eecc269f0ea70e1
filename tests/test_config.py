import dataclasses

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

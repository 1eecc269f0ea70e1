"""The deployment targets a package can name, in one table, and the lookups derived from it.

Each row is one OS release pair: its level in iOS numbering (Apple numbered iOS and macOS alike from 26, in 2025),
the iOS and macOS releases it names, and the ML program specification version Core ML programs for it carry.  A
target's name is its release without the space (``"iOS 17"`` -> ``iOS17``, ``"macOS 14"`` -> ``macOS14``).  The
last row is Core AI's (``.aimodel`` packages load from iOS / macOS 27): Core ML cannot target it, so it has no
specification version and only the report's ``TARGET_OS`` text names it.

Light on purpose (no coremltools, no torch): the report reads it without loading coremltools.
"""
from __future__ import annotations

from typing import NamedTuple


class Release(NamedTuple):
    """One iOS / macOS release pair a deployment target names."""

    level: int  # in iOS numbering
    ios: str  # the release text, e.g. "iOS 17"
    macos: str  # e.g. "macOS 14"
    spec: int | None  # the ML program specification version of its Core ML programs; None: Core ML cannot target it


RELEASES = (
    Release(15, "iOS 15", "macOS 12", 6),
    Release(16, "iOS 16", "macOS 13", 7),
    Release(17, "iOS 17", "macOS 14", 8),
    Release(18, "iOS 18", "macOS 15", 9),
    Release(26, "iOS 26", "macOS 26", 10),
    Release(27, "iOS 27", "macOS 27", None),  # Core AI only
)


def target_name(release_text: str) -> str:
    """The target a release text names: ``"macOS 14"`` -> ``macOS14``."""
    return release_text.replace(" ", "")


_CORE_ML = [r for r in RELEASES if r.spec is not None]
# Core ML target -> its release pair: the iOS targets, then the macOS ones, oldest first.
_RELEASE_OF = {**{target_name(r.ios): r for r in _CORE_ML}, **{target_name(r.macos): r for r in _CORE_ML}}
# What ExportConfig.minimum_deployment_target accepts.
DEPLOYMENT_TARGETS = list(_RELEASE_OF)
# target -> (iOS release, macOS release) it loads on.
OS_RELEASES = {t: (r.ios, r.macos) for t, r in _RELEASE_OF.items()}
# ML program specification version -> the oldest iOS that loads it (what Xcode shows as the deployment target).
TARGET_BY_SPEC = {r.spec: target_name(r.ios) for r in _CORE_ML}
# iOS target -> "iOS 17 / macOS 14", Core AI's iOS27 included (what the report prints beside a target).
TARGET_OS = {target_name(r.ios): f"{r.ios} / {r.macos}" for r in RELEASES}
_MACOS_AT = {r.level: target_name(r.macos) for r in _CORE_ML}


def os_level(target: str) -> int:
    """A Core ML deployment target's level in iOS numbering (``macOS14`` -> 17); ``KeyError`` if unknown."""
    return _RELEASE_OF[target].level


def target_at(level: int, family: str) -> str:
    """The ``family`` (``"iOS"`` or ``"macOS"``) target of a level: ``target_at(17, "macOS")`` -> ``macOS14``."""
    return _MACOS_AT[level] if family == "macOS" else f"iOS{level}"

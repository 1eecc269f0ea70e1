"""The report's languages: every string it writes, in English and Japanese, and numbers, units and dates
formatted per locale with Babel.

``MESSAGES`` (``playbook.report.messages``, the catalogue) holds each message once with both languages side by side
(a test checks that every message has every language and the same ``{placeholders}``).  ``Locale(lang)`` formats: ``t(key, **values)`` for a
message, ``num``/``signed``/``pct``/``mb``/``ms``/``ratio``/``p_value``/``date`` for figures.  Text that the
stage records carry (warnings, pitfalls, provenance notes) is written by the stages in English and is
shown as recorded, marked ``lang="en"``; the Japanese report says so once.
"""
from __future__ import annotations

import datetime as dt
import math
import string
from typing import Any

from playbook.report.messages import MESSAGES

__all__ = ["BABEL_LOCALES", "LANGUAGES", "LANGUAGE_NAMES", "Locale", "MESSAGES", "MINUS", "REPORT_FILES",
           "check_lang", "placeholders"]

LANGUAGES = ("en", "ja")
BABEL_LOCALES = {"en": "en_US", "ja": "ja_JP"}
REPORT_FILES = {"en": "report.html", "ja": "report.ja.html"}
LANGUAGE_NAMES = {"en": "English", "ja": "日本語"}
MINUS = "\u2212"
_SUPERSCRIPT = str.maketrans("0123456789\u2212", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")


def check_lang(lang: str) -> str:
    """``lang`` if the report is written in it, else a ``ValueError`` naming the languages."""
    if lang not in LANGUAGES:
        raise ValueError(f"lang={lang!r}: the report is written in {list(LANGUAGES)}")
    return lang


class Locale:
    """Numbers, units and messages in one language (``en`` or ``ja``)."""

    def __init__(self, lang: str) -> None:
        self.lang = check_lang(lang)
        self.babel = BABEL_LOCALES[lang]

    # ---- messages
    def t(self, key: str, **values: Any) -> str:
        """The message ``key`` in this language with ``values`` filled in (a ``KeyError`` names a missing key)."""
        try:
            text = MESSAGES[key][self.lang]
        except KeyError:
            raise KeyError(f"no report message {key!r} in {self.lang!r}") from None
        return text.format(**values) if values else text

    def stage(self, name: str) -> str:
        """A stage's name as the reader knows it (``quantization`` -> 量子化・圧縮)."""
        key = f"stage.{name}"
        return self.t(key) if key in MESSAGES else name

    # ---- figures (``None`` is "—": not measured)
    def num(self, value: float | None, digits: int = 2) -> str:
        from babel.numbers import format_decimal

        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return "—"
        pattern = "#,##0" + ("." + "0" * digits if digits > 0 else "")
        return format_decimal(value + 0.0, format=pattern, locale=self.babel)

    def signed(self, value: float | None, digits: int = 2) -> str:
        """``+0.40`` / ``−0.40`` (a true minus sign) / ``0.00``."""
        if value is None:
            return "—"
        rounded = round(value, digits)
        if rounded == 0:
            return self.num(0.0, digits)
        return ("+" if rounded > 0 else MINUS) + self.num(abs(value), digits)

    def interval(self, low: float | None, high: float | None, digits: int = 2, signed: bool = False) -> str:
        if low is None or high is None:
            return ""
        fmt = self.signed if signed else self.num
        return f"[{fmt(low, digits)}, {fmt(high, digits)}]"

    def pct(self, value: float | None, digits: int = 2) -> str:
        return "—" if value is None else f"{self.num(value, digits)}%"

    def mb(self, value: float | None, digits: int = 3) -> str:
        return "—" if value is None else f"{self.num(value, digits)} MB"

    def ms(self, value: float | None, digits: int = 3) -> str:
        return "—" if value is None else f"{self.num(value, digits)} ms"

    def ratio(self, value: float | None, digits: int = 1) -> str:
        return "—" if value is None else f"{self.num(value, digits)}×"

    def p_value(self, p: float | None) -> str:
        """McNemar's p: ``p = 0.20``; ``p = 3.1 × 10⁻⁵``; ``p < 10⁻³⁰⁰`` when the exact value is below float precision."""
        if p is None:
            return "—"
        if p <= 0.0:
            return "p < 10" + f"{MINUS}300".translate(_SUPERSCRIPT)
        if p < 1e-3:
            mantissa, exponent = f"{p:.1e}".split("e")
            power = str(int(exponent)).replace("-", MINUS).translate(_SUPERSCRIPT)
            return f"p = {self.num(float(mantissa), 1)} × 10{power}"
        return f"p = {self.num(p, 3 if p < 0.01 else 2)}"

    def date(self, when: dt.datetime | dt.date) -> str:
        from babel.dates import format_date

        return format_date(when, format="long", locale=self.babel)

    def join(self, items: list[str]) -> str:
        """A list in running text: ``a, b and c`` / ``a、b、c``."""
        items = [str(i) for i in items if i]
        if self.lang == "ja":
            return "、".join(items)
        if len(items) <= 2:
            return " and ".join(items)
        return ", ".join(items[:-1]) + " and " + items[-1]


def placeholders(text: str) -> set[str]:
    """The ``{names}`` a message fills in."""
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}

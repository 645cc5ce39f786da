"""Parsing judge outputs: the ``[[A, B, C, D]]`` score block and pairwise A/B answers.

Both parsers never raise on model text: they return ``None`` for anything they cannot read.
"""

from __future__ import annotations

import re

SCORE_MIN, SCORE_MAX = -2, 2
N_DIMENSIONS = 4

# An integer with optional sign; unicode minus and en dash are read as minus; "+2" as 2.
_NUM = r"[+\-\u2212\u2013]?\s*\d+(?:\.0+)?"
_BLOCK = re.compile(r"\[\[\s*(" + _NUM + r"(?:\s*[,;]\s*" + _NUM + r")*)\s*,?\s*\]\]")


def _to_int(token: str) -> int | None:
    t = token.replace("\u2212", "-").replace("\u2013", "-").replace(" ", "")
    try:
        value = float(t)
    except ValueError:
        return None
    if value != int(value):
        return None
    return int(value)


def parse_scores(text: str, n: int = N_DIMENSIONS) -> list[int] | None:
    """The last well-formed ``[[a, b, c, d]]`` block with ``n`` integers in -2..2, else None.

    The last block wins because models often restate the format ("use [[A, B, C, D]]") before
    answering. A block with the wrong count or an out-of-range value is skipped, not clipped.
    """
    if not isinstance(text, str):
        return None
    found = None
    for m in _BLOCK.finditer(text):
        parts = re.split(r"\s*[,;]\s*", m.group(1).strip())
        values = [_to_int(p) for p in parts if p]
        if len(values) != n or any(v is None or not SCORE_MIN <= v <= SCORE_MAX for v in values):
            continue
        found = values
    return found


_CHOICE_PATTERNS = [
    re.compile(r"\[\[\s*([AB])\s*\]\]"),
    re.compile(r"\b(?:response|answer|option)\s*\(?([AB])\)?\b", re.IGNORECASE),
    re.compile(r"(?:^|[\s(*\"'])([AB])(?=$|[).,:!*\"']|[ \t]*\n)"),
]


def parse_choice(text: str) -> str | None:
    """'A' or 'B' when the answer names exactly one of them, else None (both, neither, garbage).

    Tried in order of strictness: ``[[A]]``, "Response A", then a bare capital letter.
    """
    if not isinstance(text, str):
        return None
    for pattern in _CHOICE_PATTERNS:
        hits = {m.upper() for m in pattern.findall(text)}
        if len(hits) == 1:
            return hits.pop()
        if len(hits) > 1:
            return None
    return None

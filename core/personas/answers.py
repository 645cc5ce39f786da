"""What counts as a judge's answer, shared by the local backend (``core.personas.judges``) and an
OpenAI-compatible endpoint (``core.personas.openai_judge``): the grades, the result records, and how a
cue + grade or a one-token option is matched."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RATINGS = (-2, -1, 0, 1, 2)


@dataclass
class RatingResult:
    probs: np.ndarray  # (n, n_cues, 5), normalized over the five grades (NaN where no grade was seen)
    mass: np.ndarray  # (n, n_cues): next-token mass the five grades got before normalizing
    source: str = "logits"  # "logits" (local model) or "logprobs" (an endpoint's top_logprobs)

    @property
    def expected(self) -> np.ndarray:
        return self.probs @ np.asarray(RATINGS, dtype=np.float64)


@dataclass
class ChoiceResult:
    probs: np.ndarray  # (n, n_options), normalized over the options (NaN where none was seen)
    mass: np.ndarray  # (n,): next-token mass the options got before normalizing
    options: tuple[str, ...] = ("A", "B")
    source: str = "logits"


def normalize(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities renormalized over the last axis, their total before); NaN where the total is 0."""
    mass = raw.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        probs = np.where(mass[..., None] > 0, raw / np.where(mass > 0, mass, 1.0)[..., None], np.nan)
    return probs, mass


def grade_text(r: int) -> str:
    """What follows a cue for grade ``r``: a space and the number (" -2", " 0", " 2")."""
    return f" {r}"


def option_key(token: str) -> str:
    """How a token is matched to a one-token answer: surrounding spaces dropped, case folded (" a" is A)."""
    return token.strip().casefold()


def rating_plan(tokenizer, cues: list[str]) -> list[tuple[list[int], list[list[int]]]]:
    """Per cue: (stem ids, one tail of ids per grade), where cue + grade text tokenizes as stem + tail.

    The stem is the cue's own tokens up to where the grade's tokens start (a grade could merge with the
    cue's last token; then the shortest common stem is used and the rest moves into the tails).
    """
    plans = []
    for cue in cues:
        base = tokenizer.encode(cue, add_special_tokens=False)
        tails = []
        for r in RATINGS:
            full = tokenizer.encode(cue + grade_text(r), add_special_tokens=False)
            k = 0
            while k < min(len(base), len(full)) and base[k] == full[k]:
                k += 1
            tails.append((full[:k], full[k:]))
        stem = tails[0][0]
        if any(t[0] != stem for t in tails):
            stem = min((t[0] for t in tails), key=len)
            tails = [(stem, (t[0] + t[1])[len(stem):]) for t in tails]
        plans.append((stem, [t[1] for t in tails]))
    return plans

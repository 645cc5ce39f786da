"""Candidate answers for best-of-N: many answers to each fresh question, each with its own aspect levels.

    cands = generate_candidates(n_prompts=30, n_candidates=64, seed=0)   # PreferenceTable, 64 completions
    cands.ratings            # (30, 64, 4) the levels the generator set: a person's true utility is w . levels

Unlike the training corpus (four answers whose levels are four distinct values per aspect), a candidate's
four levels are drawn independently, uniform on 1..5, so the best of N for a taste rises with N as it
would for samples of a policy. The texts are written by the corpus's own writer (core.data.corpus), so a
model reads them as it reads the corpus. ``signal`` blurs the text cues as in the corpus; the stored
levels stay exact (no rating noise): they are the truth the picks are judged by. ``avoid``: texts that
must not come back (the training table's answers); a clash is drawn again.
"""

from __future__ import annotations

import numpy as np

from core.data.corpus import QUESTION_KINDS, _response, question
from core.data.table import ASPECTS, PreferenceTable

MAX_CANDIDATES = 64


class CandidateError(ValueError):
    """Bad arguments for the candidate generator; the message names the field."""


def generate_candidate_rows(n_prompts: int = 30, n_candidates: int = MAX_CANDIDATES, seed: int = 0,
                            signal: float = 1.0, avoid: set[str] | frozenset[str] = frozenset()) -> list[dict]:
    """UltraFeedback-schema rows (``source`` = ``preflens_candidates``), ``n_candidates`` completions each."""
    if not 1 <= n_candidates <= MAX_CANDIDATES:
        raise CandidateError(f"n_candidates: between 1 and {MAX_CANDIDATES}, got {n_candidates}")
    if n_prompts < 1:
        raise CandidateError(f"n_prompts: at least 1, got {n_prompts}")
    if not 0.0 <= signal <= 1.0:
        raise CandidateError(f"signal: in [0, 1], got {signal}")
    # streams of their own (never the training corpus's draws); the levels do not depend on the texts, so a
    # redrawn text leaves every candidate's truth where it was
    rng = np.random.default_rng([seed, 3434, 0])
    text_rng = np.random.default_rng([seed, 3434, 1])
    order = rng.permutation(len(QUESTION_KINDS))
    rows = []
    for q in range(n_prompts):
        prompt, topic, subject, facts, heading, closing = question(QUESTION_KINDS[order[q % len(QUESTION_KINDS)]])
        prompt += f" (Candidate set {seed}.{q + 1}.)"  # a question no training table holds
        levels = rng.integers(1, 6, size=(n_candidates, len(ASPECTS)))  # (N, 4) independent levels
        completions, seen = [], set(avoid)
        for k in range(n_candidates):
            text = _response(text_rng, levels[k], topic, subject, facts, heading, closing, signal)
            while text in seen:  # never an answer the training table (or this question) already has
                text = _response(text_rng, levels[k], topic, subject, facts, heading, closing, signal)
            seen.add(text)
            ann = {a: {"Rating": str(int(r)), "Rationale": f"Generated {a.replace('_', ' ')} level {int(r)} of 5."}
                   for a, r in zip(ASPECTS, levels[k], strict=True)}
            mean = float(levels[k].mean())
            completions.append({"model": f"candidate-{k}", "principle": "helpfulness", "custom_system_prompt": "",
                                "response": text, "annotations": ann, "critique": "", "overall_score": mean * 2.0,
                                "fine-grained_score": mean})
        rows.append({"source": "preflens_candidates", "instruction": prompt, "models": [], "correct_answers": [],
                     "incorrect_answers": [], "completions": completions})
    return rows


def generate_candidates(n_prompts: int = 30, n_candidates: int = MAX_CANDIDATES, seed: int = 0,
                        signal: float = 1.0, avoid: set[str] | frozenset[str] = frozenset()) -> PreferenceTable:
    """The candidates as a PreferenceTable (read back through the UltraFeedback loader)."""
    from core.data.ultrafeedback import load_ultrafeedback

    rows = generate_candidate_rows(n_prompts, n_candidates, seed, signal, avoid)
    table = load_ultrafeedback(rows, n_completions=n_candidates)
    table.report.update({"candidates": {"n_prompts": n_prompts, "n_candidates": n_candidates, "seed": seed,
                                        "signal": signal}})
    return table

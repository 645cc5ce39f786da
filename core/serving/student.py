"""A simulated student for a lecture projector: any weights, answered by the table's ratings (issue 18).

    curve = answers_curve(rm, twin, [0.5, 0.5, 0, 0])   # rm / twin: RunRewardModel (twin: traditional)
    curve["counts"], curve["personal"], curve["traditional"]

The student answers ``k`` random questions of the run's *training* split (one of their own strict pairs on
each, as a person clicking A or B would), the personal model reads them, and both models are scored on
every pair the student strictly prefers on the run's *test* questions, which no run trained on. Each point
is a mean over ``readings`` independent sets of answers.

For the Playground: ``student_answers`` (the first set of answers the curve reads), ``student_picks`` (A or
B on given pairs), ``sd_toward`` (the posterior's spread along a line, to judge a latent distance) and
``ranking_hits`` (a full ordering of a question's answers scored on all its pairs).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from core.training.dataset import split_questions
from core.users.people import Person, build_people_set, people_accuracy
from core.users.tastes import user_scores, validate_weights

COUNTS = (1, 2, 4, 8, 16)


def _embedder(rm, texts: list[str], query: bool):
    def embed(ids: np.ndarray) -> torch.Tensor:
        ids = np.asarray(ids)
        flat = [texts[i] for i in ids.ravel()]
        out = rm._queries(flat) if query else rm._frozen(flat)
        return out.reshape(*ids.shape, -1)
    return embed


def run_questions(rm) -> tuple[np.ndarray, np.ndarray]:
    """(train questions, test questions) of a run, as its data split made them."""
    is_test = split_questions(len(rm.table()), rm.cfg.seed, rm.cfg.test_share)
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def answers_curve(rm, twin, weights, counts: Sequence[int] = COUNTS, readings: int = 3, seed: int = 0,
                  max_pairs: int | None = 400) -> dict:
    """Accuracy against the number of answers for a student with ``weights`` (4 numbers, any positive
    sum), for the personal model ``rm`` and the traditional ``twin`` (or None), on all pairs of unseen
    questions (at most ``max_pairs`` of them, drawn by seed, to keep a slider responsive)."""
    from core.serving.run_reward import RewardModelError

    try:
        w = validate_weights(weights)
    except ValueError as err:
        raise RewardModelError(f"weights: {err}") from None
    counts = [int(k) for k in counts]
    if not counts or min(counts) < 1:
        raise RewardModelError(f"counts: a student gives at least 1 answer (got {counts})")
    table = rm.table()
    texts = [table.texts(q, c) for q in range(len(table)) for c in range(table.n_completions)]
    train_q, test_q = run_questions(rm)
    student = [Person("student", "student", w)]
    out = {"counts": counts, "personal": [], "traditional": [], "pairs": 0, "weights": w.tolist()}
    for k in counts:
        pset = build_people_set(table.ratings, student, train_q, test_q, n_demos=k, n_readings=readings,
                                seed=seed, max_pairs=max_pairs)
        out["pairs"] = len(pset.pairs[0])
        out["personal"].append(float(people_accuracy(rm.model, pset, _embedder(rm, texts, False),
                                                     _embedder(rm, texts, True))[0]))
        if twin is not None:
            out["traditional"].append(float(people_accuracy(twin.model, pset, _embedder(twin, texts, False),
                                                            _embedder(twin, texts, True))[0]))
    if twin is None:
        out["traditional"] = None
    return out


def student_picks(table, weights, pairs) -> list[str | None]:
    """How a student with ``weights`` answers A/B questions ``pairs`` [(q, i, j)]: 'a' when the table's
    ratings give answer i the higher weighted score, 'b' for j, None on a tie (or a missing rating)."""
    s = user_scores(table, validate_weights(weights)[None])[0]  # (Q, C)
    out: list[str | None] = []
    for q, i, j in pairs:
        a, b = s[q, i], s[q, j]
        out.append(None if not (np.isfinite(a) and np.isfinite(b)) or a == b else "a" if a > b else "b")
    return out


def sd_toward(mu, logvar, target) -> float:
    """The posterior's standard deviation along the line from ``mu`` to ``target`` (both (L,)): how far
    one sd reaches in that direction, in the same units as the distance ||target - mu||."""
    mu, target = np.asarray(mu, dtype=float), np.asarray(target, dtype=float)
    d = target - mu
    norm = np.linalg.norm(d)
    var = np.exp(np.asarray(logvar, dtype=float))
    if norm == 0:
        return float(np.sqrt(var.mean()))
    u = d / norm
    return float(np.sqrt((u * u * var).sum()))


def ranking_hits(rewards, order) -> tuple[int, int]:
    """(pairs ordered right, all pairs) of a full ranking ``order`` (answer indices, best first) by
    ``rewards`` (one per answer): every pair of the question counts once."""
    r = np.asarray(rewards, dtype=float)
    order = [int(c) for c in order]
    hits = sum(int(r[order[a]] > r[order[b]]) for a in range(len(order)) for b in range(a + 1, len(order)))
    return hits, len(order) * (len(order) - 1) // 2


def student_answers(rm, weights, k: int, seed: int = 0) -> list[tuple[int, int, int]]:
    """(question, chosen, rejected) of a student with ``weights`` answering ``k`` of the run's training
    questions: one pair of answers each on which their taste is strict. This is the first set of answers
    ``answers_curve`` reads for ``k`` answers (same seed), so a page can show what the curve averages."""
    w = validate_weights(weights)
    table = rm.table()
    train_q, test_q = run_questions(rm)
    pset = build_people_set(table.ratings, [Person("student", "student", w)], train_q, test_q[:1], n_demos=int(k),
                            n_readings=1, seed=seed)
    C = table.n_completions
    return [(int(c // C), int(c % C), int(r % C)) for c, r in pset.ctx[0, 0]]

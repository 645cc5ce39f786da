"""Filters over a PreferenceTable: the study's non-dominated filter and binarization into pairs."""

from __future__ import annotations

import numpy as np

from core.data.table import PreferenceTable


def non_dominated_mask(table: PreferenceTable) -> np.ndarray:
    """Bool (n_questions,): True where no completion dominates another.

    Completion a dominates b when a >= b on every aspect and > on at least one. Questions with
    any missing (N/A) rating are excluded, since domination cannot be decided for them.
    """
    r = table.ratings  # (Q, C, 4)
    ge = (r[:, :, None, :] >= r[:, None, :, :]).all(-1)  # (Q, C, C): a >= b everywhere
    gt = (r[:, :, None, :] > r[:, None, :, :]).any(-1)  # a > b somewhere
    dom = ge & gt
    complete = ~np.isnan(r).any(axis=(1, 2))
    return complete & ~dom.any(axis=(1, 2))


def pairs_from_scores(scores: np.ndarray) -> np.ndarray:
    """All (question, winner, loser) triples from per-completion scores (Q, C); ties and NaN dropped.

    Returns int64 (n_pairs, 3), ordered by question, then by completion pair (i < j).
    """
    q_n, c_n = scores.shape
    i, j = np.triu_indices(c_n, k=1)
    si, sj = scores[:, i], scores[:, j]  # (Q, P)
    keep = (si != sj) & ~np.isnan(si) & ~np.isnan(sj)
    qq, pp = np.nonzero(keep)
    win = np.where(si[qq, pp] > sj[qq, pp], i[pp], j[pp])
    lose = np.where(si[qq, pp] > sj[qq, pp], j[pp], i[pp])
    return np.stack([qq, win, lose], axis=1).astype(np.int64)

"""Simulated users (the study's 3.3.1 and 3.5.1; docs/architecture.md §5).

A user is a weight vector on the 4-simplex over ``ASPECTS``; their score of a completion is
``w . ratings``. Shapes used throughout:

    W        float (U, 4)      one row per user, rows sum to 1
    scores   float (U, Q, C)   NaN where a weighted aspect is N/A
    top      int   (U, Q)      each user's preferred completion, -1 where the best is tied or unknown
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.data.filters import pairs_from_scores
from core.data.table import ASPECTS, PreferenceTable

UNIFORM = np.full(4, 0.25)
PRESETS = ("two-opposed", "four-one-hot", "random", "cluster")
# (count, Dirichlet alpha) groups of each preset, from the study; each preset adds a uniform user.
PRESET_GROUPS: dict[str, list[tuple[int, tuple[float, ...]]]] = {
    "random": [(99, (1.0, 1.0, 1.0, 1.0))],
    "cluster": [(49, (2.5, 2.5, 2.5, 2.5)), (30, (0.7, 0.3, 6.0, 3.0)), (20, (7.5, 0.5, 1.2, 0.8))],
}


class UserError(ValueError):
    """A weight vector that is not 4 non-negative numbers with a positive sum."""


def validate_weights(w, *, user: int | str | None = None) -> np.ndarray:
    """One user's weights -> float (4,) normalized to sum 1, or UserError saying what is wrong."""
    who = f"user {user}: " if user is not None else ""
    try:
        arr = np.asarray(w, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise UserError(f"{who}weights must be 4 numbers, got {w!r}") from None
    if arr.size != len(ASPECTS):
        raise UserError(f"{who}weights must have {len(ASPECTS)} numbers ({', '.join(ASPECTS)}), got {arr.size}")
    for k, a in enumerate(ASPECTS):
        if not np.isfinite(arr[k]):
            raise UserError(f"{who}weight '{a}' is not a finite number ({arr[k]})")
        if arr[k] < 0:
            raise UserError(f"{who}weight '{a}' is negative ({arr[k]:g})")
    if arr.sum() <= 0:
        raise UserError(f"{who}weights sum to 0: at least one aspect must matter")
    return arr / arr.sum()


def validate_users(W) -> np.ndarray:
    """Many users -> float (U, 4), each row validated and normalized."""
    rows = list(W)
    if not rows:
        raise UserError("at least one user is needed")
    return np.stack([validate_weights(w, user=i) for i, w in enumerate(rows)])


def preset(name: str, *, seed: int = 0) -> np.ndarray:
    """The study's user sets as float (U, 4): ``two-opposed`` (2), ``random`` (100), ``cluster`` (100),
    and ``four-one-hot`` (4): one user per aspect, the smallest set the study's concat decoder fails on."""
    if name == "two-opposed":
        return np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    if name == "four-one-hot":
        return np.eye(len(ASPECTS))
    if name not in PRESET_GROUPS:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    rng = np.random.default_rng(seed)
    parts = [rng.dirichlet(alpha, size=n) for n, alpha in PRESET_GROUPS[name]]
    return np.vstack(parts + [UNIFORM[None, :]])


def load_users(cfg) -> np.ndarray:
    """float (U, 4): the users a TrainConfig names (a preset with its ``user_seed``, or its weight list)."""
    return preset(cfg.users, seed=cfg.user_seed) if isinstance(cfg.users, str) else np.asarray(cfg.users, float)


def preset_groups(name: str) -> list[str]:
    """A group label per user of a preset, in the order ``preset`` returns them."""
    if name == "two-opposed":
        return ["helpfulness only", "honesty only"]
    if name == "four-one-hot":
        return [f"{a.replace('_', ' ')} only" for a in ASPECTS]
    if name not in PRESET_GROUPS:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    labels = []
    for g, (n, _) in enumerate(PRESET_GROUPS[name]):
        labels += [f"cluster {g + 1}" if name == "cluster" else "random"] * n
    return labels + ["uniform"]


def user_groups(users: str | list, W: np.ndarray) -> np.ndarray:
    """int (U,): a group index per user. Presets use their clusters; custom users group by equal weights."""
    if isinstance(users, str) and users in PRESET_GROUPS:
        labels = preset_groups(users)
        _, idx = np.unique(np.asarray(labels), return_inverse=True)
        return idx.astype(np.int64)
    _, idx = np.unique(np.round(np.asarray(W, float), 9), axis=0, return_inverse=True)
    return np.asarray(idx, dtype=np.int64).reshape(-1)


def group_labels(users: str | list, user_seed: int = 0) -> list[str]:
    """A readable group name per user of a run's ``users`` config (preset name or weight list)."""
    if isinstance(users, str):
        if users in PRESET_GROUPS or users in ("two-opposed", "four-one-hot"):
            return preset_groups(users)
        raise ValueError(f"users: unknown preset {users!r}")
    W = validate_users(users)
    idx = user_groups(list(W), W)
    return [f"group {int(g) + 1}" for g in idx]


def user_scores(table: PreferenceTable, W: np.ndarray) -> np.ndarray:
    """float (U, Q, C): each user's weighted score; NaN where an aspect they weigh is missing."""
    W = np.atleast_2d(np.asarray(W, dtype=float))
    r = table.ratings.astype(float)  # (Q, C, 4)
    missing = np.isnan(r)
    s = np.einsum("qca,ua->uqc", np.nan_to_num(r), W)
    bad = np.einsum("qca,ua->uqc", missing.astype(float), (W > 0).astype(float)) > 0
    s[bad] = np.nan
    return s


def preferred(scores: np.ndarray) -> np.ndarray:
    """int (U, Q): index of each user's best completion; -1 where the best is tied or undefined."""
    filled = np.where(np.isnan(scores), -np.inf, scores)
    best = filled.max(axis=-1, keepdims=True)
    n_best = (filled == best).sum(-1)
    top = filled.argmax(-1)
    undefined = (n_best != 1) | np.isnan(scores).any(-1)
    return np.where(undefined, -1, top)


def user_pairs(table: PreferenceTable, W: np.ndarray) -> list[np.ndarray]:
    """Per user, int (n_pairs, 3) of (question, preferred, rejected); ties dropped."""
    return [pairs_from_scores(s) for s in user_scores(table, W)]


def disagreement_matrix(top: np.ndarray) -> np.ndarray:
    """int (U, U): for each user pair, the questions where both have a top choice and they differ."""
    U, Q = top.shape
    C = int(top.max()) + 1 if top.size else 1
    # float32 so the two products go through BLAS (integer matmul does not); counts stay exact < 2**24
    valid = (top >= 0).astype(np.float32)  # (U, Q)
    onehot = np.zeros((U, Q * C), dtype=np.float32)
    uu, qq = np.nonzero(top >= 0)
    onehot[uu, qq * C + top[uu, qq]] = 1.0
    both = valid @ valid.T
    agree = onehot @ onehot.T
    return np.rint(both - agree).astype(np.int64)


def contested_pairs(table: PreferenceTable, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs on which the users do not all agree (the study's disagreement filter).

    Returns (pairs int (n, 3) of (question, i, j) with i < j, prefers_i bool (U, n)). A pair is
    kept only when every user strictly prefers one side (no ties) and not all pick the same side.
    """
    s = user_scores(table, W)  # (U, Q, C)
    C = s.shape[2]
    i, j = np.triu_indices(C, k=1)
    d = s[:, :, i] - s[:, :, j]  # (U, Q, P)
    strict = (d != 0) & ~np.isnan(d)
    first = d > 0
    keep = strict.all(0) & first.any(0) & (~first).any(0)  # (Q, P)
    qq, pp = np.nonzero(keep)
    pairs = np.stack([qq, i[pp], j[pp]], axis=1).astype(np.int64)
    return pairs, first[:, qq, pp]


def info_gain_select(top: np.ndarray, k: int, candidates: Sequence[int] | None = None) -> tuple[list[int], list[float]]:
    """Greedy demonstration questions by information gain (seed eq. 5-7).

    Each step picks the question j maximizing I(Z; Q_{S+j}) = (1/U) * sum_z log(U / n_z), where n_z
    counts the users whose top choices on S+j all equal user z's (a tie counts as its own answer).
    The study's eq. 7 is U times this quantity (it sets p(z, a_z) = 1); the argmax is the same.
    Returns (chosen question indices, the mutual information after each pick, in nats).
    """
    U, Q = top.shape
    cand = np.arange(Q) if candidates is None else np.asarray(candidates, dtype=np.int64)
    answers = top[:, cand] + 1  # (U, J), 0 = tie/undefined
    n_ans = int(answers.max()) + 1 if answers.size else 1
    group = np.zeros(U, dtype=np.int64)  # users with identical answers so far share a group
    chosen: list[int] = []
    gains: list[float] = []
    available = np.ones(len(cand), dtype=bool)
    for _ in range(min(k, len(cand))):
        keys = group[:, None] * n_ans + answers  # (U, J) refined group per candidate
        counts = np.zeros((int(keys.max()) + 1, len(cand)), dtype=np.int64)
        np.add.at(counts, (keys, np.broadcast_to(np.arange(len(cand)), keys.shape)), 1)
        n_same = counts[keys, np.arange(len(cand))[None, :]]  # (U, J)
        mi = np.log(U / n_same).mean(0)
        mi[~available] = -np.inf
        best = int(np.argmax(mi))
        chosen.append(int(cand[best]))
        gains.append(float(mi[best]))
        available[best] = False
        _, group = np.unique(keys[:, best], return_inverse=True)
    return chosen, gains


def demo_pool(n_pairs: int, pool_size: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of a user's fixed demonstration pool among their n_pairs training pairs."""
    return np.sort(rng.choice(n_pairs, size=min(pool_size, n_pairs), replace=False))


def sample_contexts(query_questions: np.ndarray, pool_questions: np.ndarray, n_demos: int,
                    rng: np.random.Generator) -> np.ndarray:
    """int (n_queries, n_demos): positions in the pool for each query's demonstrations.

    A demonstration never comes from the query's own question (so neither the query's own pair nor
    a sibling pair of the same prompt can leak its label).
    """
    out = np.empty((len(query_questions), n_demos), dtype=np.int64)
    pool_questions = np.asarray(pool_questions)
    everyone = np.arange(len(pool_questions))
    in_pool = set(pool_questions.tolist())
    choice = rng.choice
    for n, q in enumerate(np.asarray(query_questions).tolist()):
        # most queries' questions are not in the pool; choice over a count draws what choice over the
        # positions draws (the same random stream), with less overhead a call (100 users: 700k calls)
        allowed = np.flatnonzero(pool_questions != q) if q in in_pool else everyone
        if len(allowed) < n_demos:
            raise ValueError(f"demonstration pool too small: {len(allowed)} usable pairs for {n_demos} demos")
        out[n] = allowed[choice(len(allowed), size=n_demos, replace=False)]
    return out

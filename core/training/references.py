"""Reference ceilings on a run's own test pairs: what a model could reach, for comparison.

Three references, each a per-user accuracy on exactly the pairs the run evaluates on:

    global   one weight vector for everyone, the mean of all users' weights, applied to the true
             ratings: the best a user-agnostic model can hope for if it learned "the average taste".
    group    each user scored with the mean weights of their group (the preset's Dirichlet cluster;
             for custom users, users with identical weights form a group): what a model that knew
             only which group a user belongs to could reach.
    probe    a logistic-regression head per user on the frozen embedding differences
             e(chosen) - e(rejected), fitted on that user's training pairs: how well this encoder's
             features can express each user's taste with a linear reader (the ceiling a frozen-encoder
             conditional model is measured against).

A pair whose reference score ties counts as half right (a coin flip). Accuracies are means over users,
like the run's own ``accuracy``.
"""

from __future__ import annotations

import numpy as np

from core.training.dataset import PrefData, Split


def _rating_diff(split: Split, ratings: np.ndarray) -> np.ndarray:
    """float (N, 4): ratings of the chosen minus the rejected response (N/A read as 0)."""
    flat = np.nan_to_num(ratings.reshape(-1, ratings.shape[2]).astype(float))
    return flat[split.chosen] - flat[split.rejected]


def shuffled_partners(split: Split, seed: int) -> np.ndarray | None:
    """int (N,): for each pair, a random pair of a *different* user whose demonstrations it borrows.

    Scoring pair i with pair partner[i]'s demonstrations asks whether the model reads the user from
    them: a model that uses z drops towards (or below) chance, one that ignores z keeps its accuracy.
    None with fewer than 2 users.
    """
    user = split.user
    if len(np.unique(user)) < 2:
        return None
    rng = np.random.default_rng(seed)
    partner = np.empty(len(user), dtype=np.int64)
    for u in np.unique(user):
        mine, others = np.flatnonzero(user == u), np.flatnonzero(user != u)
        partner[mine] = others[rng.integers(0, len(others), size=len(mine))]
    return partner


def shuffled_contexts(split: Split, seed: int) -> Split | None:
    """The split with each pair's demonstrations taken from its ``shuffled_partners`` pair."""
    partner = shuffled_partners(split, seed)
    if partner is None:
        return None
    return Split(split.user, split.question, split.chosen, split.rejected,
                 split.ctx_chosen[partner], split.ctx_rejected[partner])


def _score_accuracy(margin: np.ndarray) -> np.ndarray:
    """1 where the margin is positive, 0.5 on a tie, 0 otherwise."""
    return np.where(margin > 0, 1.0, np.where(margin == 0, 0.5, 0.0))


def _per_user(values: np.ndarray, user: np.ndarray, n_users: int) -> dict[str, float]:
    return {str(u): float(values[user == u].mean()) for u in range(n_users) if (user == u).any()}


def weight_references(data: PrefData, ratings: np.ndarray, W: np.ndarray, groups: np.ndarray) -> dict:
    """Global and group oracle accuracies per user on the test split."""
    test = data.test
    diff = _rating_diff(test, ratings)  # (N, 4)
    W = np.asarray(W, float)
    w_global = W.mean(0)
    group_means = np.stack([W[groups == g].mean(0) for g in range(int(groups.max()) + 1)])
    w_group = group_means[groups[test.user]]  # (N, 4)
    out = {}
    for name, margin in (("global", diff @ w_global), ("group", (diff * w_group).sum(1))):
        out[name] = _per_user(_score_accuracy(margin), test.user, data.n_users)
    return out


def probe_reference(data: PrefData, embeddings: np.ndarray, C: float = 1.0, max_fit: int = 2000,
                    seed: int = 0) -> dict[str, float]:
    """Per-user linear probe on frozen embedding differences: fit on (at most ``max_fit``, drawn by
    seed) train pairs of the user, score all their test pairs. The cap keeps 100 users to seconds;
    a 384-d linear probe gains little beyond a few thousand pairs."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    E = np.asarray(embeddings, dtype=np.float32)
    rng = np.random.default_rng(seed)
    out = {}
    # One BLAS thread: these problems are small, and OpenBLAS's threads spin against each other and against
    # torch's (the 100 fits of a 100-user run, docs/results/many-users.md)
    with threadpool_limits(limits=1, user_api="blas"):
        for u in range(data.n_users):
            tr, te = np.flatnonzero(data.train.user == u), data.test.user == u
            if not te.any():
                continue
            if len(tr) > max_fit:
                tr = np.sort(rng.choice(tr, size=max_fit, replace=False))
            d = E[data.train.chosen[tr]] - E[data.train.rejected[tr]]
            # both orientations, so the classes are balanced and the fit needs no intercept
            x = np.concatenate([d, -d])
            y = np.concatenate([np.ones(len(d)), np.zeros(len(d))])
            clf = LogisticRegression(C=C, fit_intercept=False, max_iter=500).fit(x, y)
            margin = (E[data.test.chosen[te]] - E[data.test.rejected[te]]) @ clf.coef_[0]
            out[str(u)] = float(_score_accuracy(margin).mean())
    return out


def reference_accuracy(data: PrefData, ratings: np.ndarray, W: np.ndarray, groups: np.ndarray,
                       embeddings: np.ndarray | None) -> dict:
    """{"global", "group", "probe": mean over users; "user": {"global"|"group"|"probe": {user: acc}}}.

    ``probe`` is None when no frozen embeddings are at hand (e.g. a fine-tuned query encoder's run
    still has its frozen cache, so in practice it is always there).
    """
    per = weight_references(data, ratings, W, groups)
    if embeddings is not None:
        per["probe"] = probe_reference(data, embeddings)
    out: dict = {k: (float(np.mean(list(v.values()))) if v else None) for k, v in per.items()}
    out.setdefault("probe", None)
    out["user"] = per
    return out

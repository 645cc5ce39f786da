"""From a PreferenceTable and users to training / test pairs with demonstrations (docs/architecture.md §5).

Texts are addressed by ``q * C + c`` (question q, completion c), the row of the embedding matrix.
For each split (N pairs):

    user       int (N,)     which user labelled the pair
    question   int (N,)
    chosen     int (N,)     text id of the user's preferred response
    rejected   int (N,)
    ctx_chosen   int (N, K) text ids of the K demonstrations' preferred sides (same user, other questions)
    ctx_rejected int (N, K)

Questions are split between train and test, so no prompt is on both sides. Each user's
demonstration pool (``pool_size`` of their train pairs) is fixed by the seed; every query's K
demonstrations come from that pool, never from the query's own question.

``val`` (``val_share`` > 0, for early stopping) holds pairs of a share of the *training* questions: the
splits, pools and demonstrations are drawn as without it, then every pair of those questions leaves the
training targets, and the ones no pool holds (never anyone's demonstration) are the validation pairs, read
with demonstrations from the user's pool like the test pairs. A run may choose its checkpoint by them
without ever looking at the test questions, and the test pairs are the same at every share.

``test_fresh`` holds the same test pairs read with demonstrations from a second pool per user, drawn
from their train pairs outside the first: pairs the model never saw as anyone's demonstrations. A model
that learned to recognise *which* pairs make up a user's pool, rather than reading the taste they show,
scores well on ``test`` and not on ``test_fresh`` (with four users the pool alone names the user).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.data.table import PreferenceTable
from core.users.tastes import contested_pairs, demo_pool, sample_contexts, user_pairs


@dataclass
class Split:
    user: np.ndarray
    question: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray
    ctx_chosen: np.ndarray
    ctx_rejected: np.ndarray

    def __len__(self) -> int:
        return len(self.user)

    def take(self, idx) -> Split:
        return Split(*(getattr(self, f)[idx] for f in ("user", "question", "chosen", "rejected",
                                                        "ctx_chosen", "ctx_rejected")))


@dataclass
class PrefData:
    train: Split
    test: Split
    texts: list[str]  # text id -> text
    n_users: int
    test_fresh: Split | None = None  # test pairs, demonstrations from a second pool (None: too few pairs)
    is_test: np.ndarray | None = None  # bool (Q,): the held-out questions
    val: Split | None = None  # pairs of the validation questions (val_share > 0), for early stopping

    @property
    def test_questions(self) -> np.ndarray:
        return np.flatnonzero(self.is_test) if self.is_test is not None else np.unique(self.test.question)

    @property
    def train_questions(self) -> np.ndarray:
        return np.flatnonzero(~self.is_test) if self.is_test is not None else np.unique(self.train.question)

    def summary(self) -> dict:
        return {
            "n_users": self.n_users,
            "train_pairs": len(self.train),
            "test_pairs": len(self.test),
            "train_pairs_per_user": np.bincount(self.train.user, minlength=self.n_users).tolist(),
            "test_pairs_per_user": np.bincount(self.test.user, minlength=self.n_users).tolist(),
            **({"val_pairs": len(self.val)} if self.val is not None else {}),
        }


def build(table: PreferenceTable, W: np.ndarray, *, seed: int = 0, test_share: float = 0.2,
          contested_only: bool = True, pool_size: int = 100, n_demos: int = 8,
          max_train_per_user: int | None = None, max_test_per_user: int | None = None,
          agreed_share: float = 0.0, val_share: float = 0.0) -> PrefData:
    """Labelled pairs per user, a question-level split, and fixed demonstrations.

    ``contested_only`` keeps the pairs the users disagree on (the study's filter); ``agreed_share`` adds
    that share of each user's other strict pairs of the *train* questions to them (drawn from their own
    random stream, so the split is the same at every share). The test pairs stay the contested ones.
    ``val_share``: that share of the train questions becomes the validation split (its own random stream;
    everything else is drawn as at 0, see the module docstring)."""
    rng = np.random.default_rng(seed)
    W = np.atleast_2d(W)
    Q, C = len(table), table.n_completions
    is_test = split_questions(Q, rng, test_share)
    is_val = np.zeros(Q, dtype=bool)
    val_rng = np.random.default_rng([seed, 3])
    if val_share > 0:
        train_q = val_rng.permutation(np.flatnonzero(~is_test))
        is_val[train_q[:max(1, int(round(val_share * len(train_q))))]] = True

    if contested_only and len(W) > 1:
        pairs, first = contested_pairs(table, W)  # (n, 3), (U, n)
        per_user = []
        for u in range(len(W)):
            win = np.where(first[u], pairs[:, 1], pairs[:, 2])
            lose = np.where(first[u], pairs[:, 2], pairs[:, 1])
            per_user.append(np.stack([pairs[:, 0], win, lose], axis=1))
        if agreed_share > 0:
            agreed_rng = np.random.default_rng([seed, 2])
            C_ = table.n_completions
            for u, own in enumerate(user_pairs(table, W)):
                key = lambda p: p[:, 0] * C_ * C_ + np.minimum(p[:, 1], p[:, 2]) * C_ + np.maximum(p[:, 1], p[:, 2])  # noqa: E731
                # train questions only: the test split stays the contested pairs, the study's figure, so
                # every method's `accuracy` is read on the same pairs (all pairs: all_pairs_accuracy)
                rest = own[~np.isin(key(own), key(per_user[u])) & ~is_test[own[:, 0]]]
                n = int(round(agreed_share * len(rest)))
                if n:
                    keep = np.sort(agreed_rng.choice(len(rest), size=n, replace=False))
                    per_user[u] = np.concatenate([per_user[u], rest[keep]])
    else:
        per_user = user_pairs(table, W)

    splits = {"train": [], "test": [], "fresh": [], "val": []}
    # a separate stream for the second pools, so adding them left the seed's pairs and pools unchanged
    fresh_rng = np.random.default_rng([seed, 1])
    fresh_ok = True
    for u, p in enumerate(per_user):
        tr, te = p[~is_test[p[:, 0]]], p[is_test[p[:, 0]]]
        tr, te = rng.permutation(tr), rng.permutation(te)
        if max_train_per_user:
            tr = tr[:max_train_per_user]
        if max_test_per_user:
            te = te[:max_test_per_user]
        if len(tr) < n_demos + 1:
            raise ValueError(f"user {u} has only {len(tr)} training pairs; need more than n_demos={n_demos}")
        in_pool = demo_pool(len(tr), pool_size, rng)
        pool = tr[in_pool]  # (P, 3)
        rest = np.delete(tr, in_pool, axis=0)  # train pairs never used as demonstrations
        fresh_pool = rest[demo_pool(len(rest), pool_size, fresh_rng)] if len(rest) else rest
        if fresh_ok and len(te):
            try:
                ctx = sample_contexts(te[:, 0], fresh_pool[:, 0], n_demos, fresh_rng)
                splits["fresh"].append(Split(
                    np.full(len(te), u, dtype=np.int64), te[:, 0].astype(np.int64),
                    (te[:, 0] * C + te[:, 1]).astype(np.int64), (te[:, 0] * C + te[:, 2]).astype(np.int64),
                    (fresh_pool[ctx, 0] * C + fresh_pool[ctx, 1]).astype(np.int64),
                    (fresh_pool[ctx, 0] * C + fresh_pool[ctx, 2]).astype(np.int64)))
            except ValueError:  # the pool took (nearly) all of this user's pairs: no fresh reading
                fresh_ok = False
        for name, part in (("train", tr), ("test", te)):
            if len(part) == 0:
                continue
            ctx = sample_contexts(part[:, 0], pool[:, 0], n_demos, rng)  # (n, K) rows of pool
            split = Split(
                user=np.full(len(part), u, dtype=np.int64),
                question=part[:, 0].astype(np.int64),
                chosen=(part[:, 0] * C + part[:, 1]).astype(np.int64),
                rejected=(part[:, 0] * C + part[:, 2]).astype(np.int64),
                ctx_chosen=(pool[ctx, 0] * C + pool[ctx, 1]).astype(np.int64),
                ctx_rejected=(pool[ctx, 0] * C + pool[ctx, 2]).astype(np.int64),
            )
            if name == "train" and val_share > 0:
                # drawn as if there were no validation set (pools, demonstrations and test pairs stay the
                # same); then the validation questions' pairs leave the training targets, and those that are
                # not in the user's pool (never shown as anyone's demonstration) are the validation pairs
                on_val = is_val[part[:, 0]]
                shown = np.zeros(len(part), dtype=bool)
                shown[in_pool] = True
                val_rows = val_rng.permutation(np.flatnonzero(on_val & ~shown))[:max_test_per_user or None]
                splits["val"].append(split.take(np.sort(val_rows)))
                split = split.take(np.flatnonzero(~on_val))
            splits[name].append(split)

    def cat(parts: list[Split]) -> Split:
        if not parts:
            z = np.zeros(0, dtype=np.int64)
            return Split(z, z, z, z, np.zeros((0, n_demos), np.int64), np.zeros((0, n_demos), np.int64))
        return Split(*(np.concatenate([getattr(s, f) for s in parts]) for f in
                       ("user", "question", "chosen", "rejected", "ctx_chosen", "ctx_rejected")))

    texts = [table.texts(q, c) for q in range(Q) for c in range(C)]
    fresh = cat(splits["fresh"]) if fresh_ok and splits["fresh"] else None
    # a tiny set can leave no validation pair: no split then (early stopping has nothing to read), not an empty one
    val = cat(splits["val"]) if sum(len(s.user) for s in splits["val"]) else None
    return PrefData(train=cat(splits["train"]), test=cat(splits["test"]), texts=texts, n_users=len(W),
                    test_fresh=fresh, is_test=is_test, val=val)


def split_questions(n_questions: int, rng: np.random.Generator | int, test_share: float) -> np.ndarray:
    """bool (Q,): the held-out questions. ``rng`` an int seed reproduces ``build``'s split for that seed."""
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    perm = rng.permutation(n_questions)
    is_test = np.zeros(n_questions, dtype=bool)
    is_test[perm[:max(1, int(round(test_share * n_questions)))]] = True
    return is_test


def used_text_ids(data: PrefData, extra: np.ndarray | None = None) -> np.ndarray:
    """Sorted unique text ids any split reads, plus ``extra`` (only these need embedding)."""
    parts = [] if extra is None else [np.asarray(extra, dtype=np.int64).ravel()]
    for s in (data.train, data.test, data.test_fresh, data.val):
        if s is not None:
            parts += [s.chosen, s.rejected, s.ctx_chosen.ravel(), s.ctx_rejected.ravel()]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)

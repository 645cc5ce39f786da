"""Any person, any question: score a reward model for people it may never have trained on (issue 18).

The study's accuracy reads a *training* user on the pairs the training users *disagree* on. A person who
uses the model is read from a few of their own choices and then wants every pair they care about ranked
their way. This module builds that measure:

    people       who is asked: the run's own users, and people outside training (one-hot tastes, blends
                 of two aspects, the uniform user, Dirichlet(1) draws, a redraw of a random/cluster
                 population); ``Person`` keeps a name, a kind and the weights (4,)
    PeopleSet    for P people: R readings of K demonstrations each, as text ids, ctx (P, R, K, 2), drawn
                 from one random strict pair on each of K random "demo" questions; and every pair each
                 person strictly prefers on the "score" questions, as positions into ``text_ids`` (T,)
    score        one reward per (reading, text): (P * R, T); a person's accuracy is the share of their
                 pairs whose chosen side scores higher, averaged over readings

The model is only asked through two callables, so a run's trainer, a saved run and a bench on a fresh
corpus share it: ``embed(ids) -> (n, D)`` frozen context embeddings and ``query(ids) -> (n, D)`` query
embeddings (the same thing for a frozen encoder).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from core.data.table import ASPECTS

SHORT = {"helpfulness": "help", "honesty": "hon", "instruction_following": "instr", "truthfulness": "truth"}


@dataclass
class Person:
    name: str
    kind: str  # trained | one-hot | blend | uniform | dirichlet | population
    weights: np.ndarray  # (4,), sums to 1

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "weights": [round(float(x), 6) for x in self.weights]}


def outside_people(users, W_train: np.ndarray, *, user_seed: int = 0, seed: int = 0,
                   n_dirichlet: int = 10, n_population: int = 30) -> list[Person]:
    """People the run never trained on, fixed by ``seed`` (and the user set):

    the four one-hot tastes, the six 50/50 blends of two aspects, the uniform user, ``n_dirichlet``
    Dirichlet(1) draws, and for the random / cluster presets ``n_population`` people of a redraw of the
    same population (another user seed). A person whose weights equal a training user's is left out
    (that is a trained user, scored in ``all_pairs_user_accuracy``)."""
    from core.users.tastes import PRESET_GROUPS, preset

    out = [Person(f"{SHORT[a]} only", "one-hot", np.eye(4)[k]) for k, a in enumerate(ASPECTS)]
    for i in range(4):
        for j in range(i + 1, 4):
            w = np.zeros(4)
            w[[i, j]] = 0.5
            out.append(Person(f"{SHORT[ASPECTS[i]]}+{SHORT[ASPECTS[j]]}", "blend", w))
    out.append(Person("uniform", "uniform", np.full(4, 0.25)))
    rng = np.random.default_rng([seed, 18])
    for n, w in enumerate(rng.dirichlet(np.ones(4), size=n_dirichlet)):
        out.append(Person(f"dirichlet {n}", "dirichlet", w))
    if isinstance(users, str) and users in PRESET_GROUPS and n_population:
        redraw = preset(users, seed=user_seed + 1)[:-1]  # the preset's own uniform user is already here
        pick = np.sort(rng.choice(len(redraw), size=min(n_population, len(redraw)), replace=False))
        out += [Person(f"{users} redraw {int(i)}", "population", redraw[i]) for i in pick]
    W_train = np.atleast_2d(np.asarray(W_train, float))
    return [p for p in out if not np.isclose(W_train, p.weights[None], atol=1e-9).all(1).any()]


def trained_people(W_train: np.ndarray) -> list[Person]:
    return [Person(f"user {u}", "trained", np.asarray(w, float)) for u, w in enumerate(np.atleast_2d(W_train))]


@dataclass
class PeopleSet:
    people: list[Person]
    text_ids: np.ndarray  # (T,) ids of the texts scored (every completion of the score questions)
    ctx: np.ndarray  # (P, R, K, 2) text ids of each reading's demonstrations: (chosen, rejected)
    pairs: list[np.ndarray]  # per person (n_p, 2): positions into text_ids of (chosen, rejected)

    @property
    def n_readings(self) -> int:
        return int(self.ctx.shape[1])

    def needed_ids(self) -> np.ndarray:
        return np.unique(np.concatenate([self.text_ids, self.ctx.ravel()]))


def _strict_pairs(ratings: np.ndarray, w: np.ndarray, questions: np.ndarray) -> np.ndarray:
    """(n, 3) of (question, chosen, rejected) on ``questions`` where w's scores strictly differ."""
    from core.data.filters import pairs_from_scores

    s = np.einsum("qca,a->qc", np.nan_to_num(ratings[questions]), w)  # (Qs, C)
    missing = (np.isnan(ratings[questions]) & (w > 0)).any(-1)
    s[missing] = np.nan
    p = pairs_from_scores(s)
    p[:, 0] = questions[p[:, 0]]
    return p


def build_people_set(ratings: np.ndarray, people: list[Person], demo_questions, score_questions, *,
                     n_demos: int = 8, n_readings: int = 3, seed: int = 0,
                     max_pairs: int | None = None) -> PeopleSet:
    """Readings and scored pairs for ``people`` on a table's ``ratings`` (Q, C, 4); text id = q * C + c.

    Each reading is ``n_demos`` of the person's own choices, one random strict pair on each of
    ``n_demos`` distinct random demo questions. Scored: every strict pair on the score questions (or a
    random ``max_pairs`` of them)."""
    if n_demos < 1:
        raise ValueError(f"n_demos: a person is read from at least 1 demonstration (got {n_demos})")
    C = ratings.shape[1]
    demo_q = np.asarray(demo_questions, dtype=np.int64)
    score_q = np.sort(np.asarray(score_questions, dtype=np.int64))
    text_ids = (score_q[:, None] * C + np.arange(C)[None]).ravel()
    pos = {int(t): i for i, t in enumerate(text_ids)}
    rng = np.random.default_rng([seed, 1818])
    pair_rng = np.random.default_rng([seed, 1819])  # its own stream: the scored pairs do not depend on n_demos
    ctx = np.zeros((len(people), n_readings, n_demos, 2), dtype=np.int64)
    pairs = []
    for p, person in enumerate(people):
        demo = _strict_pairs(ratings, person.weights, demo_q)
        qs = np.unique(demo[:, 0])
        if len(qs) < n_demos:
            raise ValueError(f"{person.name}: only {len(qs)} demo questions with a strict preference; "
                             f"need n_demos={n_demos}")
        for r in range(n_readings):
            for k, q in enumerate(rng.choice(qs, size=n_demos, replace=False)):
                rows = demo[demo[:, 0] == q]
                _, c, j = rows[rng.integers(len(rows))]
                ctx[p, r, k] = (q * C + c, q * C + j)
        sc = _strict_pairs(ratings, person.weights, score_q)
        if max_pairs is not None and len(sc) > max_pairs:
            sc = sc[np.sort(pair_rng.choice(len(sc), size=max_pairs, replace=False))]
        pairs.append(np.array([[pos[int(q * C + c)], pos[int(q * C + j)]] for q, c, j in sc],
                              dtype=np.int64).reshape(-1, 2))
    return PeopleSet(people, text_ids, ctx, pairs)


@torch.no_grad()
def reading_latents(model, pset: PeopleSet, embed: Callable[[np.ndarray], torch.Tensor],
                    chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor] | None:
    """mu, logvar (P * R, L) of every reading (person-major), or None for a user-agnostic model."""
    if not getattr(model, "conditional", False):
        return None
    flat = pset.ctx.reshape(-1, pset.ctx.shape[2], 2)  # (P * R, K, 2)
    mus, lvs = [], []
    for s in range(0, len(flat), chunk):
        part = flat[s:s + chunk]
        mu, lv = model.posterior(embed(part[..., 0]), embed(part[..., 1]))
        mus.append(mu)
        lvs.append(lv)
    return torch.cat(mus), torch.cat(lvs)


@torch.no_grad()
def people_accuracy(model, pset: PeopleSet, embed: Callable[[np.ndarray], torch.Tensor],
                    query: Callable[[np.ndarray], torch.Tensor] | None = None,
                    latents: tuple[torch.Tensor, torch.Tensor] | None = None,
                    z_embed: Callable[[np.ndarray], torch.Tensor] | None = None) -> np.ndarray:
    """float (P,): each person's accuracy on their pairs, averaged over their readings (NaN: no pairs).
    ``z_embed``: the features z acts on, when not the query's (z_features 'frozen' with a trained encoder)."""
    q = (query or embed)(pset.text_ids)  # (T, D)
    T = len(pset.text_ids)
    P, R = len(pset.people), pset.n_readings
    if getattr(model, "conditional", False):
        mu = (latents or reading_latents(model, pset, embed))[0]  # (P * R, L)
        qz = None if z_embed is None else z_embed(pset.text_ids)
        rewards = model.reward_grid(q, mu, z_emb=qz).float().cpu().numpy().reshape(P, R, T)
    else:
        rewards = np.broadcast_to(model.reward(q).float().cpu().numpy()[None, None], (P, R, T))
    return pairs_ordered(rewards, pset.pairs)


def pairs_ordered(rewards: np.ndarray, pairs: list[np.ndarray]) -> np.ndarray:
    """float (P,): the share of each person's pairs (n, 2: rows of the scored texts, chosen first) that their
    rewards (P, R, T) order right, averaged over the R readings (NaN: no pairs)."""
    out = np.full(len(pairs), np.nan)
    for p, pr in enumerate(pairs):
        if len(pr):
            out[p] = float((rewards[p][:, pr[:, 0]] > rewards[p][:, pr[:, 1]]).mean())
    return out

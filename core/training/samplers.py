"""Which training pairs go into each batch: uniform, or the study's adaptive 1:2:4 schedule (seed §4.2.2).

Adaptive: training is split into n phases for n users, taken in ``order``. In phase p the user
order[p] is "training" (group B), the users before it are "finished" (C) and those after it are
"to be trained" (A). Each sample first picks a group with probability proportional to its weight
(A:B:C = 1:2:4 by default; empty groups drop out and the rest renormalize), then a user uniformly
within the group, then one of that user's pairs uniformly. As the study states it, with two users
phase 1 is A:B = 1:2 and phase 2 is B:C = 2:4, so the first user gets 2/3 of every batch in both
phases. That is implemented as written, not "fixed".

Many users: with 100 users, one phase per user leaves a few steps each and the schedule means
nothing. Given ``unit_of_user`` (a group index per user, e.g. the preset's clusters), the phases go
over groups instead: in each phase one *group* of users is B, earlier groups C, later groups A, and a
sample picks a letter by weight, then a user uniformly among that letter's users. Without it (or
with one group per user) the sampler is the per-user one above, draw for draw.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class UniformSampler:
    """Every training pair equally likely, whatever its user."""

    def __init__(self, pair_user: np.ndarray, seed: int = 0):
        self.n = len(pair_user)
        self.rng = np.random.default_rng(seed)

    def phase(self, step: int) -> int | None:
        return None

    def sample(self, step: int, batch_size: int) -> np.ndarray:
        return self.rng.integers(0, self.n, size=batch_size)

    def state(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


class AdaptiveSampler:
    """The 1:2:4 continual-learning schedule over users (see module docstring)."""

    def __init__(self, pair_user: np.ndarray, total_steps: int, order: Sequence[int] | None = None,
                 weights: Sequence[float] = (1.0, 2.0, 4.0), steps_per_phase: int | None = None, seed: int = 0,
                 unit_of_user: Sequence[int] | None = None):
        pair_user = np.asarray(pair_user)
        self.users = np.unique(pair_user)
        if unit_of_user is None:  # one unit per user: today's schedule
            self.members = {int(u): [int(u)] for u in self.users}
        else:
            unit_of_user = np.asarray(unit_of_user)
            self.members = {}
            for u in self.users:
                self.members.setdefault(int(unit_of_user[u]), []).append(int(u))
        units = sorted(self.members)
        self.order = [int(u) for u in (order if order is not None else units)]
        what = "user" if unit_of_user is None else "group"
        if sorted(self.order) != units:
            raise ValueError(f"order must list every {what} exactly once: {what}s {units}, got {self.order}")
        if len(weights) != 3 or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"weights must be three non-negative numbers (A, B, C), got {list(weights)}")
        self.weights = tuple(float(w) for w in weights)
        n = len(self.order)
        self.steps_per_phase = int(steps_per_phase) if steps_per_phase else max(1, -(-total_steps // n))
        self.by_user = {int(u): np.flatnonzero(pair_user == u) for u in self.users}
        self.rng = np.random.default_rng(seed)

    def phase(self, step: int) -> int:
        return min(step // self.steps_per_phase, len(self.order) - 1)

    def groups(self, phase: int) -> tuple[list[int], list[int], list[int]]:
        """(A: to be trained, B: training, C: finished) users in this phase."""
        def users(units):
            return [u for unit in units for u in self.members[unit]]

        return users(self.order[phase + 1:]), users([self.order[phase]]), users(self.order[:phase])

    def group_probs(self, phase: int) -> np.ndarray:
        """Probability of drawing from A, B, C in this phase, (3,)."""
        present = np.array([len(g) > 0 for g in self.groups(phase)], dtype=float)
        w = np.asarray(self.weights) * present
        return w / w.sum()

    def user_probs(self, phase: int) -> dict[int, float]:
        """Probability that a sample comes from each user in this phase."""
        probs = self.group_probs(phase)
        out = {}
        for g, p in zip(self.groups(phase), probs, strict=True):
            for u in g:
                out[u] = p / len(g)
        return out

    def sample(self, step: int, batch_size: int) -> np.ndarray:
        phase = self.phase(step)
        groups = self.groups(phase)
        which = self.rng.choice(3, size=batch_size, p=self.group_probs(phase))
        out = np.empty(batch_size, dtype=np.int64)
        for k, g in enumerate(which):
            user = groups[g][self.rng.integers(len(groups[g]))]
            pool = self.by_user[user]
            out[k] = pool[self.rng.integers(len(pool))]
        return out

    def state(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]

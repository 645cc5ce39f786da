"""Early stopping: stop a run once its validation loss has stopped improving, and keep its best model.

    stopper = EarlyStopping(patience=3)
    stopper.update(step, val_loss)   # True when this evaluation is the new best (save its weights then)
    stopper.should_stop              # `patience` evaluations in a row without a new best

The validation loss comes from held-out *training* questions (TrainConfig.val_share, core.training.dataset), never
from the test questions the run's figures are read on. The state is plain numbers, saved in the run's
checkpoint, so a resumed run stops where an uninterrupted one would.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class EarlyStopping:
    patience: int
    min_delta: float = 0.0
    best: float = math.inf
    best_step: int | None = None
    since_best: int = 0  # evaluations since the best one

    def update(self, step: int, value: float) -> bool:
        """Read one evaluation's validation loss; True when it is the new best."""
        if value < self.best - self.min_delta:
            self.best, self.best_step, self.since_best = float(value), int(step), 0
            return True
        self.since_best += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.since_best >= self.patience

    def reason(self, step: int) -> str:
        return (f"the validation loss has not improved for {self.since_best} evaluations (best {self.best:.4f} at "
                f"step {self.best_step}); stopped at step {step} and kept step {self.best_step}")

    def state(self) -> dict:
        return {**asdict(self), "best": None if math.isinf(self.best) else self.best}

    def load_state(self, state: dict) -> None:
        self.best = math.inf if state.get("best") is None else float(state["best"])
        self.best_step = state.get("best_step")
        self.since_best = int(state.get("since_best", 0))

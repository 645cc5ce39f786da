"""What the training loop needs of a run: the ``Member`` protocol (core.training.trainer.Trainer is one).

The loop (core.training.grid) and the stacked groups (core.training.stacked) read and call only these.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from core.training.config import TrainConfig


class Member(Protocol):
    """What the loop needs of a run (core.training.trainer.Trainer is one): the loop reads and calls only these.

    Read: ``cfg`` (TrainConfig), ``run`` (its RunDir), ``device``, ``model`` (the reward model, whose
    parameters a stacked group turns into views of its stacks), ``params`` and ``optimizer`` (AdamW over
    them), ``data`` (PrefData), ``embeddings`` ((n_texts, D) frozen rows), ``W`` (users' tastes),
    ``query_encoder`` (None on cached features), ``step``, ``progress``, ``show_progress``, ``callbacks``.
    """

    cfg: TrainConfig
    step: int

    def start(self, show_progress: bool | str) -> bool: ...  # resume if it can; open its progress
    def batch_indices(self) -> np.ndarray: ...  # this step's training pairs (B x grad_accum,)
    def noise(self, n: int, width: int) -> torch.Tensor: ...  # (n, width) from its own generator
    def end_step(self, loss: float, pairs: int, stepped_elsewhere: bool = False) -> None: ...
    def train_step(self) -> float: ...  # a whole step on its own (runs that train their encoder)
    def make_optimizer(self) -> None: ...
    def attach_query_encoder(self, encoder) -> None: ...
    def evaluate(self, final: bool = False) -> dict: ...
    def record_eval(self, record: dict) -> dict: ...  # metrics, checkpoint, log, callbacks
    def save_checkpoint(self) -> None: ...
    def finish_early(self) -> dict: ...
    @property
    def should_stop_early(self) -> bool: ...
    @property
    def stop_requested(self) -> bool: ...

"""What the runs of one process share: the corpus, data splits, people, the frozen encoder and its embeddings.

A grid (core.training.grid) builds many runs at once; runs whose configs agree on the fields a part depends on get
the same object instead of rebuilding it. Each part's key lists exactly those fields, so sharing can never
change what a run sees: a run built alone and the same run built in a grid read identical data.

    table       (data, corpus_prompts, corpus_seed, signal, rating_noise)
    data        table + users, user_seed, seed, split and pair-filter fields
    people      data + n_demos, people_readings
    encoder     (encoder, device, max_length); frozen query encoders only (LoRA wraps its own copy)
    embeddings  table + encoder: one (n_texts, D) matrix, rows filled from the disk cache as runs ask
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import torch

from core.training.config import TrainConfig

TABLE_FIELDS = ("data", "corpus_prompts", "corpus_seed", "signal", "rating_noise")
DATA_FIELDS = TABLE_FIELDS + ("users", "user_seed", "seed", "test_share", "contested_only", "pool_size", "n_demos",
                              "max_train_per_user", "max_test_per_user", "agreed_share", "val_share")
PEOPLE_FIELDS = DATA_FIELDS + ("people_readings",)
ENCODER_FIELDS = ("encoder", "device", "max_length", "segment_pool")


def key(cfg: TrainConfig, fields: tuple[str, ...]) -> str:
    import json

    return json.dumps([getattr(cfg, f) for f in fields], default=str)


class Embeddings:
    """One frozen-encoder embedding matrix over a table's texts, (n_texts, D) on the device; ``ensure(ids)``
    fills the rows not filled yet from the on-disk cache (encoding what the cache lacks)."""

    def __init__(self, n_texts: int, dim: int, device: torch.device):
        self.matrix = torch.zeros((n_texts, dim), dtype=torch.float32, device=device)
        self.filled = np.zeros(n_texts, dtype=bool)
        self.encoded = 0  # texts encoded (not found in the cache) on behalf of the runs sharing this

    def missing(self, ids: np.ndarray) -> np.ndarray:
        return ids[~self.filled[ids]]

    def fill(self, ids: np.ndarray, rows: np.ndarray) -> None:
        self.matrix[torch.as_tensor(ids, device=self.matrix.device)] = torch.from_numpy(rows).to(self.matrix)
        self.filled[ids] = True


class Shared:
    """Parts of a run's setup by key; ``get(kind, cfg, fields, make)`` builds a part once per key, also
    when members of a grid ask from several threads at once (the others wait for the one building it)."""

    def __init__(self):
        self._parts: dict[tuple[str, str], object] = {}
        self._lock = threading.Lock()
        self._building: dict[tuple[str, str], threading.Lock] = {}

    def get(self, kind: str, cfg: TrainConfig, fields: tuple[str, ...], make: Callable[[], object]):
        k = (kind, key(cfg, fields))
        with self._lock:
            if k in self._parts:
                return self._parts[k]
            building = self._building.setdefault(k, threading.Lock())
        with building:
            if k not in self._parts:
                self._parts[k] = make()
        return self._parts[k]

"""A run's checkpoint: model.safetensors (the model and any trained encoder weights) and
train_state.pt (optimizer, schedule, random states, sampler), written to temporary names and renamed, so a
rerun resumes where the last checkpoint left off and reaches the numbers of an uninterrupted run.

``CheckpointMixin`` is part of ``core.training.trainer.Trainer``.
"""

from __future__ import annotations

import json

import torch


def _cloned(obj):
    """A state dict with every tensor copied (nested dicts and lists)."""
    if torch.is_tensor(obj):
        return obj.clone()
    if isinstance(obj, dict):
        return {k: _cloned(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cloned(v) for v in obj]
    return obj


class CheckpointMixin:
    """Checkpoint methods of core.training.trainer.Trainer."""

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        state = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        if self.query_encoder is not None:
            for n, p in self.query_encoder.model.named_parameters():
                if p.requires_grad:
                    state[f"encoder.{n}"] = p.detach()
        return {k: v.detach().contiguous().cpu() for k, v in state.items()}

    def _save_weights(self, name: str) -> None:
        from safetensors.torch import save_file

        tmp = self.run.path / f".{name}.tmp"
        save_file(self._trainable_state(), str(tmp))
        tmp.replace(self.run.path / name)

    def _load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Copy saved weights into the model (and a trained encoder) in place: in a grid the parameters are
        views of the group's stacked tensors."""
        self.model.load_state_dict({k[len("model."):]: v for k, v in weights.items() if k.startswith("model.")})
        if self.query_encoder is not None:
            named = dict(self.query_encoder.model.named_parameters())
            with torch.no_grad():
                for k, v in weights.items():
                    if k.startswith("encoder."):
                        named[k[len("encoder."):]].copy_(v)

    def save_best(self) -> None:
        """best.safetensors: the weights of the best evaluation so far (early stopping keeps them)."""
        self._save_weights("best.safetensors")

    def restore_best(self) -> None:
        from safetensors.torch import load_file

        self._load_weights(load_file(str(self.run.path / "best.safetensors")))

    def save_checkpoint(self) -> None:
        self._save_weights("model.safetensors")
        state = {
            "step": self.step,
            "samples_seen": self.samples_seen,
            "wall_s": self.wall_s(),
            # cloned: in a grid the state tensors are views of a group's stacks (torch.save would write them whole)
            "optimizer": _cloned(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "z_gen": self.z_gen.get_state(),
            "sampler": json.dumps(self.sampler.state()),
            "early_stop": json.dumps(self.stopper.state()) if self.stopper is not None else None,
        }
        tmp = self.run.path / ".train_state.pt.tmp"
        torch.save(state, tmp)
        tmp.replace(self.run.path / "train_state.pt")

    def try_resume(self) -> bool:
        from safetensors.torch import load_file

        st_path = self.run.path / "train_state.pt"
        if not st_path.exists() or not (self.run.path / "model.safetensors").exists():
            return False
        state = torch.load(st_path, weights_only=True, map_location="cpu")
        self._load_weights(load_file(str(self.run.path / "model.safetensors")))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        self.z_gen.set_state(state["z_gen"])
        self.sampler.load_state(json.loads(state["sampler"]))
        if self.stopper is not None and state.get("early_stop"):
            self.stopper.load_state(json.loads(state["early_stop"]))
        self.step = int(state["step"])
        self.samples_seen = int(state["samples_seen"])
        self.wall_offset = float(state["wall_s"])
        # drop metrics recorded after the checkpoint (the run died between the two writes)
        records, _ = self.run.metrics()
        kept = [r for r in records if r.get("step", 0) <= self.step]
        if len(kept) != len(records):
            self.run.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self.log(f"resumed from step {self.step}")
        return True

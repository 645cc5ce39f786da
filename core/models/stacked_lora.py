"""LoRA adapters of many runs over one frozen transformer: one forward pass serves a whole grid (core.training.grid).

Each target Linear W (out, in) of the shared base model gets M adapters, A (M, r, in) and B (M, out, r), one per
run, initialised like peft's (A Kaiming-uniform from the run's own generator, B zero, so every run starts
at the base model). A batch holds the runs' texts in M equal consecutive blocks:

    x (M * n, T, in) -> W x + (alpha / r) * B_m A_m x  for the rows of block m       (two bmm's over M)

With ``active = m`` the whole batch goes through run m's adapter (its evaluation, its own forward).
``MemberAdapters`` shows one run its slices as its own parameters, so its optimizer, checkpoint and resume
see a LoRA run's usual trainable state.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


class StackedLoRA(nn.Module):
    """One frozen Linear with M runs' LoRA adapters; see the module docstring."""

    def __init__(self, base: nn.Linear, A: nn.Parameter, B: nn.Parameter, scale: float):
        super().__init__()
        self.base, self.A, self.B, self.scale = base, A, B, scale  # A (M, r, in), B (M, out, r)
        self.active: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.active is not None:
            a, b = self.A[self.active], self.B[self.active]
            return y + (x @ a.transpose(0, 1).to(x.dtype)) @ b.transpose(0, 1).to(x.dtype) * self.scale
        M = self.A.shape[0]
        xm = x.reshape(M, -1, x.shape[-1])  # (M, n * T, in): the rows of each run's block
        d = torch.bmm(torch.bmm(xm, self.A.transpose(1, 2).to(x.dtype)), self.B.transpose(1, 2).to(x.dtype))
        return y + (d * self.scale).reshape(y.shape)


def lora_targets(model: nn.Module) -> list[str] | None:
    """The attention projections LoRA goes on (BERT: query/key/value; Llama: q/k/v_proj; GPT-2: c_attn)."""
    names = {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    return [t for t in ("query", "key", "value", "q_proj", "k_proj", "v_proj", "c_attn") if t in names] or None


def add_stacked_lora(model: nn.Module, seeds: list[int], r: int, alpha: int) -> dict[str, StackedLoRA]:
    """Freeze ``model`` and put M = len(seeds) runs' adapters on its attention projections, in place.
    Returns {module path: StackedLoRA}. Run m's A matrices are drawn from a generator seeded with seeds[m]."""
    for p in model.parameters():
        p.requires_grad_(False)
    targets = set(lora_targets(model) or [])
    if not targets:
        raise ValueError("query_encoder 'lora': the encoder has no attention projection to put adapters on")
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.split(".")[-1] in targets]
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    out = {}
    for name, lin in found:
        dev = lin.weight.device
        A = torch.empty(len(seeds), r, lin.in_features)
        for m, g in enumerate(gens):
            # peft's init: kaiming_uniform_(a=sqrt(5)) on A, zeros on B
            bound = math.sqrt(6.0 / ((1 + 5.0) * lin.in_features))
            A[m].uniform_(-bound, bound, generator=g)
        mod = StackedLoRA(lin, nn.Parameter(A.to(dev)), nn.Parameter(torch.zeros(len(seeds), lin.out_features, r,
                                                                                   device=dev)), alpha / r)
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        setattr(parent, name.rsplit(".", 1)[-1], mod)
        out[name] = mod
    return out


class MemberAdapters(nn.Module):
    """Run m's view of the stacked adapters (views of slice m), named as peft names a LoRA model's
    parameters (``base_model.model.<module path>.lora_A.default.weight``, shapes (r, in) and (out, r)), so
    a grid member's checkpoint loads where a peft-trained run's does (core.serving.run_reward)."""

    def __init__(self, adapters: dict[str, StackedLoRA], m: int):
        super().__init__()
        self._names = []
        for name, mod in adapters.items():
            for part, peft_part in (("A", "lora_A"), ("B", "lora_B")):
                dotted = f"base_model.model.{name}.{peft_part}.default.weight"
                key = dotted.replace(".", "__")
                self.register_parameter(key, nn.Parameter(getattr(mod, part).detach()[m]))
                self._names.append((dotted, key))

    def named_parameters(self, *args, **kwargs):  # the dotted names a checkpoint shows
        for dotted, key in self._names:
            yield dotted, getattr(self, key)


class MemberEncoder:
    """A run's query encoder inside a grid: the shared base with this run's adapters active (TextEncoder's
    tokenize / forward / model, as the trainer uses them)."""

    def __init__(self, encoder, adapters: dict[str, StackedLoRA], m: int):
        self.encoder, self.adapters, self.m = encoder, adapters, m
        self.model = MemberAdapters(adapters, m)

    def tokenize(self, texts):
        return self.encoder.tokenize(texts)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        for mod in self.adapters.values():
            mod.active = self.m
        try:
            return self.encoder.forward(batch)
        finally:
            for mod in self.adapters.values():
                mod.active = None

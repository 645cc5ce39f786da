"""The VPL decoders: how a response embedding e (B, D) and a user latent z (B, L) make a reward (B,).
The table of what each computes is in core.models.reward_models' docstring; ``make_decoder`` builds one by name.

Each decoder's ``forward(e, z)`` scores pairs row by row; ``grid(e, z)`` (where a decoder has one) scores
every response under every latent, (T, D), (N, L) -> (N, T), without repeating e N times. The bilinear and
linear decoders take ``e_z``: the features z multiplies, when they are not e (z_features 'frozen').
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

DECODERS = ("concat", "bilinear", "linear", "film", "hyper")
Z_HEADS = ("linear", "mlp")


def mlp(d_in: int, d_hidden: int, d_out: int, dropout: float = 0.0) -> nn.Sequential:
    """Two linear layers with a GELU between them."""
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_hidden, d_out))


class ResidualMLP(nn.Module):
    """U e + W GELU(A e), (..., D) -> (..., H): the linear head plus a two-layer correction. The linear path
    keeps the early training of the plain head (two users read alike at initialization are told apart in
    about 10 steps; through the MLP alone, 30 steps of a 30-step run were not enough); no output bias:
    <b, V z> is the same for every response, so it would cancel in every margin."""

    def __init__(self, d_e: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.linear = nn.Linear(d_e, hidden, bias=False)
        self.inp = nn.Linear(d_e, hidden)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, hidden, bias=False)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.linear(e) + self.out(self.drop(F.gelu(self.inp(e))))


def z_head(kind: str, d_e: int, hidden: int, dropout: float = 0.0) -> nn.Module:
    """U, the response features z's term is read in, (..., D) -> (..., H). 'linear': U e (a taste is a
    linear probe of e); 'mlp': U e plus a two-layer MLP of e (ResidualMLP), so a taste can be a nonlinear
    function of the response while the reward stays linear in z."""
    if kind == "linear":
        return nn.Linear(d_e, hidden, bias=False)
    if kind == "mlp":
        return ResidualMLP(d_e, hidden, dropout)
    raise ValueError(f"z_head: unknown kind {kind!r}; choose one of {', '.join(Z_HEADS)}")


class ConcatDecoder(nn.Sequential):
    """The study's decoder MLP([e, z]); a Sequential so its weights keep the names older runs saved."""

    def __init__(self, d_e: int, d_z: int, hidden: int, dropout: float = 0.0):
        super().__init__(*mlp(d_e + d_z, hidden, 1, dropout))

    def forward(self, e: torch.Tensor, z: torch.Tensor) -> torch.Tensor:  # (B, D), (B, L) -> (B,)
        return super().forward(torch.cat([e, z], dim=-1)).squeeze(-1)

    def text_part(self, e: torch.Tensor) -> torch.Tensor:
        """The first layer's z-free part, (T, D) -> (T, H): the same for a response under every latent."""
        return e @ self[0].weight[:, :e.shape[-1]].T + self[0].bias

    def from_text_part(self, he: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """forward(e, z) from text_part(e) (B, H) and z (B, L) -> (B,)."""
        first, last = self[0], self[3]
        hz = z @ first.weight[:, first.weight.shape[1] - z.shape[-1]:].T  # (B, H)
        return (F.gelu(he + hz) @ last.weight[0] + last.bias).reshape(-1)

    def grid(self, e: torch.Tensor, z: torch.Tensor, chunk: int = 32) -> torch.Tensor:
        """Every response under every latent, (T, D), (N, L) -> (N, T): the first layer splits into an e part
        computed once and a z part, so N latents cost N * T * H, not N * T * (D + L) * H."""
        first, last = self[0], self[3]
        d_e = e.shape[-1]
        he = e @ first.weight[:, :d_e].T + first.bias  # (T, H)
        hz = z @ first.weight[:, d_e:].T  # (N, H)
        rows = [F.gelu(he[None] + part[:, None]) @ last.weight[0] + last.bias for part in hz.split(chunk)]
        return torch.cat(rows) if rows else e.new_zeros((0, len(e)))


class BilinearDecoder(nn.Module):
    """MLP([e, z]) + <U e, V z> / sqrt(H): the concat decoder plus a low-rank bilinear term."""

    def __init__(self, d_e: int, d_z: int, hidden: int, dropout: float = 0.0, z_head_kind: str = "linear"):
        super().__init__()
        self.mlp = ConcatDecoder(d_e, d_z, hidden, dropout)
        self.U = z_head(z_head_kind, d_e, hidden, dropout)
        self.V = nn.Linear(d_z, hidden, bias=False)
        self.scale = hidden ** -0.5

    def forward(self, e: torch.Tensor, z: torch.Tensor, e_z: torch.Tensor | None = None) -> torch.Tensor:
        """e_z: the features z multiplies, when not e (z_features 'frozen')."""
        return self.mlp(e, z) + (self.U(e if e_z is None else e_z) * self.V(z)).sum(-1) * self.scale

    def grid(self, e: torch.Tensor, z: torch.Tensor, e_z: torch.Tensor | None = None) -> torch.Tensor:
        return self.mlp.grid(e, z) + (self.V(z) @ self.U(e if e_z is None else e_z).T) * self.scale  # (N, T)


class LinearDecoder(nn.Module):
    """MLP(e) + <U e, V z> / sqrt(H): a shared reward plus a term linear in z (the fit reader's decoder)."""

    def __init__(self, d_e: int, d_z: int, hidden: int, dropout: float = 0.0, z_head_kind: str = "linear"):
        super().__init__()
        self.base = mlp(d_e, hidden, 1, dropout)
        self.U = z_head(z_head_kind, d_e, hidden, dropout)
        self.V = nn.Linear(d_z, hidden, bias=False)
        self.scale = hidden ** -0.5

    def forward(self, e: torch.Tensor, z: torch.Tensor, e_z: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D), (B, L) -> (B,); e_z (B, D): the features z multiplies, when not e (z_features 'frozen')."""
        return self.base(e).squeeze(-1) + (self.U(e if e_z is None else e_z) * self.V(z)).sum(-1) * self.scale

    def grid(self, e: torch.Tensor, z: torch.Tensor, e_z: torch.Tensor | None = None) -> torch.Tensor:
        """Every response under every latent: (T, D), (N, L) -> (N, T), without repeating e N times."""
        return self.base(e).squeeze(-1)[None] + (self.V(z) @ self.U(e if e_z is None else e_z).T) * self.scale


class FiLMDecoder(nn.Module):
    """Feature-wise modulation: each hidden feature of e is scaled by (1 + G z) and shifted by B z."""

    def __init__(self, d_e: int, d_z: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.inp = nn.Linear(d_e, hidden)
        self.gamma = nn.Linear(d_z, hidden)
        self.beta = nn.Linear(d_z, hidden)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, 1)

    def forward(self, e: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.inp(e)) * (1.0 + self.gamma(z)) + self.beta(z)
        return self.out(self.drop(h)).squeeze(-1)


class HyperDecoder(nn.Module):
    """A reward head over features of e whose weights z writes: <GELU(A e), w0 + MLP(z)> / sqrt(H)."""

    def __init__(self, d_e: int, d_z: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.inp = nn.Linear(d_e, hidden)
        self.w0 = nn.Parameter(torch.zeros(hidden))
        self.weights = mlp(d_z, hidden, hidden, dropout)
        self.scale = hidden ** -0.5

    def forward(self, e: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return (F.gelu(self.inp(e)) * (self.w0 + self.weights(z))).sum(-1) * self.scale


def make_decoder(kind: str, d_e: int, d_z: int, hidden: int, dropout: float = 0.0,
                 z_head_kind: str = "linear") -> nn.Module:
    """``z_head_kind``: U of the decoders with a <U e, V z> term ('bilinear', 'linear'); see ``z_head``."""
    table = {"concat": ConcatDecoder, "bilinear": BilinearDecoder, "linear": LinearDecoder, "film": FiLMDecoder,
             "hyper": HyperDecoder}
    if kind not in table:
        raise ValueError(f"decoder: unknown kind {kind!r}; choose one of {', '.join(DECODERS)}")
    if kind in ("bilinear", "linear"):
        return table[kind](d_e, d_z, hidden, dropout, z_head_kind)
    if z_head_kind != "linear":
        raise ValueError(f"z_head: {z_head_kind!r} needs decoder 'linear' or 'bilinear' (got {kind!r})")
    return table[kind](d_e, d_z, hidden, dropout)

"""The training objective, written once: every path that trains a reward model calls these.

Per pair, a VPL model's loss is the BTL loss of its own margin, plus beta x KL of the user posterior to
N(0, I), plus, where switched on, the BTL loss of the population margin (the users' centre) and of the
vertex margin (the user's own trained latent). The margins differ by path (a plain forward, the grid's
vmapped step, the by-text shortcut); how they add up does not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def btl_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Per-pair negative log-likelihood of the Bradley-Terry-Luce model, (B,)."""
    return btl_loss_from_margin(r_chosen - r_rejected)


def btl_loss_from_margin(margin: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(r_chosen - r_rejected), (N,): btl_loss from the margin."""
    return -F.logsigmoid(margin)


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) per row, (B,)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def contrastive_loss(mu: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
    """Seed eq. 12 on latent means: pull same-user means together, push different users apart.

    mu (..., B, L), user (..., B) -> (...): mean over ordered pairs i != j of -cos (same user) or +cos
    (leading dims: independent batches, e.g. (runs, micro-batches) in the grid).
    """
    B = mu.shape[-2]
    if B < 2:
        return mu.sum((-1, -2)) * 0.0
    unit = F.normalize(mu, dim=-1)
    cos = unit @ unit.transpose(-1, -2)  # (..., B, B)
    same = (user[..., :, None] == user[..., None, :]).to(mu.dtype)
    sign = 1.0 - 2.0 * same  # -1 same user, +1 different
    off = 1.0 - torch.eye(B, device=mu.device, dtype=mu.dtype)
    return (sign * cos * off).sum((-1, -2)) / off.sum()


def vpl_loss(own: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, *, beta: float,
             population: torch.Tensor | None = None, population_coef: float = 0.0,
             vertex: torch.Tensor | None = None, vertex_coef: float = 0.0) -> torch.Tensor:
    """Per-pair loss (B,) from the pair's margin under its own latent (B,), the posterior mu, logvar (B, L)
    and, if given, the margins under the population latent and the user's vertex (B,) each."""
    loss = btl_loss_from_margin(own)
    if beta > 0:
        loss = loss + beta * kl_to_standard_normal(mu, logvar)
    if population is not None:
        loss = loss + population_coef * btl_loss_from_margin(population)
    if vertex is not None:
        loss = loss + vertex_coef * btl_loss_from_margin(vertex)
    return loss

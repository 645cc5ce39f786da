"""Per-user gradient combination for the study's MGDA and PCGrad runs (seed §4.2; torchjd aggregators).

A step's loss is split by user: L_u = mean loss of user u's pairs in the batch. Instead of following the
gradient of sum_u L_u, the update follows an aggregate of the per-user gradients g_u (the rows of the
Jacobian J (U, P)) that does not trade one user against another:

    mgda    the min-norm point of the convex hull of the g_u (every user's loss goes down or stays)
    pcgrad  each g_u with its conflicting components (negative dot products) projected out, then summed

``user_jacobians`` builds J for each run of a stacked group in one backward pass per user (core.grid),
``combine_user_gradients`` aggregates one run's J.
"""

from __future__ import annotations

import torch

STRATEGIES = ("mgda", "pcgrad")


def combine_user_gradients(jacobian: torch.Tensor, strategy: str) -> torch.Tensor:
    """(U, P) one gradient per user present in the batch -> (P,) the update direction.

    One user: that user's gradient (there is nothing to reconcile)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"grad_strategy: {strategy!r} is not a per-user strategy; choose one of {', '.join(STRATEGIES)}")
    if jacobian.ndim != 2 or jacobian.shape[0] == 0:
        raise ValueError(f"jacobian: expected (users, parameters) with at least one user, got {tuple(jacobian.shape)}")
    if jacobian.shape[0] == 1:
        return jacobian[0]
    from torchjd.aggregation import MGDA, PCGrad

    aggregator = MGDA() if strategy == "mgda" else PCGrad()
    return aggregator(jacobian)


def user_jacobians(user_losses: dict[int, torch.Tensor], params: list[torch.Tensor]) -> dict[int, list[torch.Tensor]]:
    """The gradient of each user's loss with respect to stacked parameters.

    ``user_losses[u]`` (M,): user u's mean loss in each of M runs (0 where absent) whose parameters are
    stacked along the first dimension of every tensor in ``params``. Runs are independent, so the
    gradient of the sum over runs holds each run's own gradient in its slice: {u: [grad (M, ...) per
    parameter]}, unused parameters as zeros."""
    out = {}
    users = sorted(user_losses)
    for i, u in enumerate(users):
        grads = torch.autograd.grad(user_losses[u].sum(), params, retain_graph=i < len(users) - 1, allow_unused=True)
        out[u] = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]
    return out

"""Per-user gradient combination for the study's MGDA and PCGrad runs (seed §4.2; torchjd aggregators).

A step's loss is split by user: L_u = mean loss of user u's pairs in the batch. Instead of following the
gradient of sum_u L_u, the update follows an aggregate of the per-user gradients g_u (the rows of the
Jacobian J (U, P)) that does not trade one user against another:

    mgda    the min-norm point of the convex hull of the g_u (every user's loss goes down or stays)
    pcgrad  each g_u with its conflicting components (negative dot products) projected out, then summed

``user_jacobians`` builds J for each run of a stacked group in one backward pass per user (core.training.grid);
``user_weights`` turns a run's Gramian J J^T into the weights of its update w^T J (what a stacked group
uses: no (U, P) matrix is ever assembled), ``combine_user_gradients`` aggregates one run's J.
"""

from __future__ import annotations

import torch

STRATEGIES = ("mgda", "pcgrad")


def user_weights(gramian: torch.Tensor, strategy: str) -> torch.Tensor:
    """(U, U) Gramian of the per-user gradients, G = J J^T -> (U,) weights w with update w^T J.

    MGDA and PCGrad both depend on the gradients only through their inner products, so a stacked group
    can aggregate each run from a (U, U) matrix instead of its (U, P) Jacobian (torchjd's weightings)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"grad_strategy: {strategy!r} is not a per-user strategy; choose one of {', '.join(STRATEGIES)}")
    if gramian.ndim != 2 or gramian.shape[0] != gramian.shape[1] or gramian.shape[0] == 0:
        raise ValueError(f"jacobian: expected (users, parameters) with at least one user; its Gramian is "
                         f"{tuple(gramian.shape)}")
    if gramian.shape[0] == 1:
        return gramian.new_ones(1)
    from torchjd.aggregation import MGDAWeighting, PCGradWeighting

    return (MGDAWeighting() if strategy == "mgda" else PCGradWeighting())(gramian)


def combine_user_gradients(jacobian: torch.Tensor, strategy: str) -> torch.Tensor:
    """(U, P) one gradient per user present in the batch -> (P,) the update direction (torchjd's MGDA /
    PCGrad aggregate of the rows). One user: that user's gradient (there is nothing to reconcile)."""
    if jacobian.ndim != 2 or jacobian.shape[0] == 0:
        raise ValueError(f"jacobian: expected (users, parameters) with at least one user, got {tuple(jacobian.shape)}")
    return user_weights(jacobian @ jacobian.T, strategy) @ jacobian


def user_jacobians(user_losses: dict[int, torch.Tensor], params: list[torch.Tensor]) -> dict[int, list[torch.Tensor]]:
    """The gradient of each user's loss with respect to stacked parameters.

    ``user_losses[u]`` (M,): user u's mean loss in each of M runs (0 where absent) whose parameters are
    stacked along the first dimension of every tensor in ``params``. Runs are independent, so the
    gradient of the sum over runs holds each run's own gradient in its slice: {u: [grad (M, ...) per
    parameter]}, unused parameters as zeros."""
    users = sorted(user_losses)
    outs = torch.stack([user_losses[u].sum() for u in users])  # (U,)
    # one backward pass for all users: the graph is walked once with a batch of U output gradients
    eye = torch.eye(len(users), dtype=outs.dtype, device=outs.device)
    grads = torch.autograd.grad(outs, params, grad_outputs=eye, is_grads_batched=True, allow_unused=True)
    return {u: [torch.zeros_like(p) if g is None else g[a] for g, p in zip(grads, params, strict=True)]
            for a, u in enumerate(users)}

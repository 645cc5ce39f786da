import numpy as np
import pytest
import torch

from core.training.samplers import AdaptiveSampler, UniformSampler


def _opposed_users(seed: int):
    """A user-blind BTL head and two users who order the same 32 pairs of 16-d embeddings oppositely; user
    0's embeddings are 3x longer, so user 0's gradient is larger than user 1's and points against it."""
    from core.models.reward_models import BTLRewardModel

    torch.manual_seed(seed)
    model = BTLRewardModel(16, hidden=16)
    a, b, taste = torch.randn(32, 16), torch.randn(32, 16), torch.randn(16)
    a, b = torch.cat([3 * a, a]), torch.cat([3 * b, b])
    user = torch.tensor([0] * 32 + [1] * 32)
    first = torch.where(user == 0, 1.0, -1.0) * ((a - b) @ taste) > 0  # (64,) a is this user's chosen side
    chosen, rejected = torch.where(first[:, None], a, b), torch.where(first[:, None], b, a)
    return model, chosen, rejected, user


def _user_losses(model, chosen, rejected, user) -> dict[int, torch.Tensor]:
    from core.models.losses import btl_loss

    loss = btl_loss(model.reward(chosen), model.reward(rejected))  # (64,) per pair, as Trainer.forward gives
    return {u: loss[user == u] for u in (0, 1)}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("strategy", ["mgda", "pcgrad"])
def test_the_trainers_per_user_update_lowers_every_users_loss_where_the_plain_mean_raises_one(strategy, seed):
    """Trainer._combine_user_gradients (the single-run path) on PrefLens's per-user BTL losses: its update
    is the one the stacked grid builds from core.training.gradients (user_jacobians, then user_weights of the
    Gramian), and a small step along it lowers both users' losses, while a step along the gradient of the
    batch's mean loss (grad_strategy 'sum') raises user 1's. Both MGDA and, for two users, PCGrad promise
    d . g_u > 0 (g_u: user u's gradient, d: the update). Measured at seeds 0 / 1: mean . g_1 = -0.072 / -0.064
    (bound -0.02); mgda d . g_u = 0.043 / 0.063 for both users, pcgrad d . g_1 = 0.062 / 0.107 (bound 0.01)."""
    from types import SimpleNamespace

    from core.training.gradients import user_jacobians, user_weights
    from core.training.trainer import Trainer

    model, chosen, rejected, user = _opposed_users(seed)
    params = list(model.parameters())
    losses = _user_losses(model, chosen, rejected, user)
    jac = user_jacobians({u: v.mean().reshape(1) for u, v in losses.items()}, params)
    J = torch.stack([torch.cat([g.reshape(-1) for g in jac[u]]) for u in (0, 1)])  # (2, P): g_0, g_1
    batch_mean = torch.cat(list(_user_losses(model, chosen, rejected, user).values())).mean()
    mean_grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(batch_mean, params)])  # grad_strategy 'sum'
    assert float(mean_grad @ J[1]) < -0.02  # the setup conflicts: 'sum' trades user 1 for user 0

    trainer = SimpleNamespace(cfg=SimpleNamespace(grad_strategy=strategy), params=params)
    Trainer._combine_user_gradients(trainer, {u: [v] for u, v in _user_losses(model, chosen, rejected, user).items()})
    update = torch.cat([p.grad.reshape(-1) for p in params])
    grid_update = user_weights(J @ J.T, strategy) @ J  # what core.training.grid applies for the same run
    assert torch.allclose(update, grid_update, atol=1e-6, rtol=1e-5), float((update - grid_update).abs().max())
    assert (J @ update > 0.01).all(), (J @ update).tolist()

    def after_step(direction: torch.Tensor) -> list[float]:
        """Each user's mean loss after a step of length 0.01 against ``direction``; the parameters are restored."""
        old = torch.nn.utils.parameters_to_vector(params).detach()
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(old - 0.01 * direction / direction.norm(), params)
            out = [float(v.mean()) for v in _user_losses(model, chosen, rejected, user).values()]
            torch.nn.utils.vector_to_parameters(old, params)
        return out

    before = [float(v.detach().mean()) for v in losses.values()]
    assert all(a < b for a, b in zip(after_step(update), before, strict=True)), (after_step(update), before)
    assert after_step(mean_grad)[1] > before[1]


def _users(counts):
    return np.concatenate([np.full(n, u) for u, n in enumerate(counts)])


def test_adaptive_sampler_draws_groups_in_ratio_1_2_4_and_follows_the_order():
    users = _users([300, 200, 100])
    s = AdaptiveSampler(users, total_steps=300, order=[2, 0, 1], seed=0)
    assert s.steps_per_phase == 100
    assert [s.phase(t) for t in (0, 99, 100, 250, 299)] == [0, 0, 1, 2, 2]
    assert s.groups(0) == ([0, 1], [2], [])  # A: to be trained, B: training, C: finished
    assert s.groups(1) == ([1], [0], [2])
    for phase, step in ((0, 10), (1, 150), (2, 250)):
        draws = users[np.concatenate([s.sample(step, 64) for _ in range(300)])]
        A, B, C = s.groups(phase)
        share = np.array([np.isin(draws, g).mean() if g else 0.0 for g in (A, B, C)])
        w = np.array([1.0, 2.0, 4.0]) * np.array([bool(g) for g in (A, B, C)])
        assert np.allclose(share, w / w.sum(), atol=0.02), (phase, share)
    # the middle phase has all three groups: exactly 1:2:4
    assert np.allclose(s.group_probs(1), [1 / 7, 2 / 7, 4 / 7])


def test_two_users_first_user_gets_two_thirds_in_both_phases_as_the_study_states():
    s = AdaptiveSampler(_users([50, 50]), total_steps=10, seed=1)
    assert s.user_probs(0) == pytest.approx({0: 2 / 3, 1: 1 / 3})  # A:B = 1:2
    assert s.user_probs(1) == pytest.approx({1: 1 / 3, 0: 2 / 3})  # B:C = 2:4
    custom = AdaptiveSampler(_users([50, 50]), total_steps=10, weights=(1, 1, 1), seed=1)
    assert custom.user_probs(1) == pytest.approx({1: 0.5, 0: 0.5})


def test_sampler_inputs_are_validated_and_state_round_trips():
    with pytest.raises(ValueError, match="every user exactly once"):
        AdaptiveSampler(_users([5, 5]), total_steps=10, order=[0, 0])
    with pytest.raises(ValueError, match="three non-negative"):
        AdaptiveSampler(_users([5, 5]), total_steps=10, weights=(1, -2, 4))
    u = UniformSampler(_users([5, 5]), seed=3)
    st = u.state()
    a = u.sample(0, 8)
    u.load_state(st)
    assert (u.sample(0, 8) == a).all()


def test_adaptive_phases_over_groups_of_users():
    users = _users([20] * 6)
    unit = np.array([0, 0, 0, 1, 1, 2])  # three groups of users: {0,1,2}, {3,4}, {5}
    s = AdaptiveSampler(users, total_steps=30, unit_of_user=unit, order=[1, 2, 0], seed=0)
    assert s.steps_per_phase == 10  # one phase per group, not per user
    assert s.groups(0) == ([5, 0, 1, 2], [3, 4], [])
    assert s.groups(2) == ([], [0, 1, 2], [3, 4, 5])
    probs = s.user_probs(1)  # A = group 0 (1/7), B = group 2 (2/7), C = group 1 (4/7)
    assert probs[5] == pytest.approx(2 / 7) and probs[3] == pytest.approx(2 / 7) and probs[0] == pytest.approx(1 / 21)
    draws = users[np.concatenate([s.sample(15, 64) for _ in range(200)])]
    assert np.isin(draws, [3, 4]).mean() == pytest.approx(4 / 7, abs=0.03)
    with pytest.raises(ValueError, match="every group exactly once"):
        AdaptiveSampler(users, total_steps=30, unit_of_user=unit, order=[0, 1])


def test_one_group_per_user_is_todays_sampler_draw_for_draw():
    users = _users([30, 40])
    today = AdaptiveSampler(users, total_steps=20, seed=5)
    grouped = AdaptiveSampler(users, total_steps=20, seed=5, unit_of_user=np.array([0, 1]))
    for step in range(20):
        assert np.array_equal(today.sample(step, 4), grouped.sample(step, 4))


# ---------------------------------------------------------------- the project's per-user gradient combination
def test_combine_user_gradients_never_trades_one_user_for_another_where_the_sum_does():
    from core.training.gradients import combine_user_gradients

    g1, g2 = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([-2.0, 1.0, 0.0])  # conflicting: g1 . g2 = -2
    J = torch.stack([g1, g2])
    plain = g1 + g2
    assert float(plain @ g1) < 0  # the sum's step raises user 1's loss
    mgda = combine_user_gradients(J, "mgda")
    # min over w of |w g1 + (1 - w) g2|^2 = (3w - 2)^2 + (1 - w)^2  ->  w = 0.7  ->  (0.1, 0.3, 0)
    assert torch.allclose(mgda, torch.tensor([0.1, 0.3, 0.0]), atol=1e-4)
    assert float(mgda @ g1) > 0 and float(mgda @ g2) > 0
    pc = combine_user_gradients(J, "pcgrad")
    # g1' = g1 - (g1.g2 / |g2|^2) g2 = (0.2, 0.4, 0); g2' = g2 - (g1.g2 / |g1|^2) g1 = (0, 1, 0)
    assert torch.allclose(pc, torch.tensor([0.2, 1.4, 0.0]), atol=1e-5)
    assert float(pc @ g1) > 0 and float(pc @ g2) > 0
    # agreeing users: PCGrad is the plain sum; a lone user's gradient is left as it is
    agree = torch.tensor([[1.0, 1.0, 0.0], [0.5, 2.0, 0.0]])
    assert torch.allclose(combine_user_gradients(agree, "pcgrad"), agree.sum(0))
    assert torch.equal(combine_user_gradients(J[:1], "mgda"), g1)


def test_combine_user_gradients_names_what_is_wrong():
    from core.training.gradients import combine_user_gradients

    with pytest.raises(ValueError, match="grad_strategy"):
        combine_user_gradients(torch.ones(2, 3), "sum")
    with pytest.raises(ValueError, match="jacobian"):
        combine_user_gradients(torch.ones(0, 3), "mgda")


def test_user_jacobians_give_each_stacked_run_its_own_per_user_gradients():
    from core.training.gradients import user_jacobians

    W = torch.tensor([[1.0, 2.0], [3.0, -1.0]], requires_grad=True)  # (M=2 runs, 2) stacked weights
    x = {0: torch.tensor([1.0, 0.0]), 1: torch.tensor([0.0, 2.0])}  # user u's input
    present = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # run 1 has no pair of user 1 in its batch
    losses = {u: (W @ x[u]) ** 2 * present[:, u] for u in (0, 1)}  # (M,) each: user u's loss in each run
    jac = user_jacobians(losses, [W])
    for u in (0, 1):
        for m in (0, 1):
            expected = 2 * float(W[m] @ x[u]) * x[u] * present[m, u]  # d/dW[m] of (W[m] . x_u)^2
            assert torch.allclose(jac[u][0][m], expected), (u, m)
    assert torch.equal(jac[1][0][1], torch.zeros(2))  # an absent user gives that run nothing

import pytest
import torch

from core.models.losses import btl_loss, contrastive_loss, kl_to_standard_normal
from core.models.reward_models import BTLRewardModel, VPLDims, VPLRewardModel, active_units


def test_dims_follow_table_1_ratio():
    d = VPLDims.scaled(1024)
    assert (d.pair_hidden, d.pair_out, d.latent, d.decoder_hidden) == (512, 512, 512, 512)
    assert VPLDims.scaled(384, latent=16).latent == 16


def test_vpl_shapes_and_a_step_changes_every_trainable_parameter():
    torch.manual_seed(0)
    m = VPLRewardModel(32, VPLDims.scaled(32))
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    ctx_c, ctx_r, q_w, q_l = torch.randn(5, 8, 32), torch.randn(5, 8, 32), torch.randn(5, 32), torch.randn(5, 32)
    mu, logvar = m.encode_user(ctx_c, ctx_r)
    assert mu.shape == (5, 16) and logvar.shape == (5, 16)
    z = m.sample(mu, logvar)
    loss = btl_loss(m.reward(q_w, z), m.reward(q_l, z)).mean() + 0.1 * kl_to_standard_normal(mu, logvar).mean()
    torch.optim.SGD(m.parameters(), lr=0.1).zero_grad()
    loss.backward()
    torch.optim.SGD(m.parameters(), lr=0.1).step()
    unchanged = [n for n, p in m.named_parameters() if torch.equal(p, before[n])]
    # the decoder's output bias cancels in r_w - r_l, so BTL gives it no gradient; all else moves
    assert unchanged == ["decoder.3.bias"], unchanged
    # at evaluation z is the posterior mean (Trainer.forward goes through latent()), so the same
    # demonstrations give the same reward every time; in training it is a draw, which differs from mu
    assert torch.equal(m.latent(mu, logvar, train=False), mu)
    assert not torch.allclose(m.latent(mu, logvar, train=True), mu, atol=1e-3)
    scored = [m.reward(q_w, m.latent(*m.posterior(ctx_c, ctx_r), train=False)) for _ in range(2)]
    assert torch.equal(scored[0], scored[1])


def _unchanged_after_one_step(m: VPLRewardModel, ctx_c: torch.Tensor, ctx_r: torch.Tensor) -> list[str]:
    """Names of the parameters one SGD step on the BTL + KL loss leaves exactly as they were."""
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    mu, logvar = m.encode_user(ctx_c, ctx_r)
    z = m.sample(mu, logvar)
    n, d = ctx_c.shape[0], ctx_c.shape[-1]
    loss = btl_loss(m.reward(torch.randn(n, d), z), m.reward(torch.randn(n, d), z)).mean()
    (loss + 0.1 * kl_to_standard_normal(mu, logvar).mean()).backward()
    torch.optim.SGD(m.parameters(), lr=0.1).step()
    return [n for n, p in m.named_parameters() if torch.equal(p, before[n])]


def test_differences_reader_sees_only_the_direction_of_preference_and_trains():
    """The 'differences' user encoder reads e_w - e_l: a shift shared by both sides of every
    demonstration leaves mu unchanged (the study's 'pairs' reader moves), demonstration order does not
    matter, and one step moves every parameter it has (no attention or layer norm left unused)."""
    torch.manual_seed(0)
    diff, pairs = VPLRewardModel(32, user_encoder="differences"), VPLRewardModel(32)
    ctx_c, ctx_r, shift = torch.randn(4, 8, 32), torch.randn(4, 8, 32), torch.randn(4, 1, 32)
    for m in (diff, pairs):
        m.eval()
    mu, _ = diff.encode_user(ctx_c, ctx_r)
    assert torch.allclose(diff.encode_user(ctx_c + shift, ctx_r + shift)[0], mu, atol=1e-5)
    assert not torch.allclose(pairs.encode_user(ctx_c + shift, ctx_r + shift)[0], pairs.encode_user(ctx_c, ctx_r)[0],
                              atol=1e-3)
    perm = torch.randperm(8)
    assert torch.allclose(diff.encode_user(ctx_c[:, perm], ctx_r[:, perm])[0], mu, atol=1e-5)
    assert not hasattr(diff, "attn")

    diff.train()
    assert _unchanged_after_one_step(diff, ctx_c, ctx_r) == ["decoder.3.bias"]
    with pytest.raises(ValueError, match="user_encoder"):
        VPLRewardModel(32, user_encoder="set")


def test_mixture_reader_recognises_the_user_whose_reward_explains_the_demonstrations():
    """The 'mixture' user encoder weighs the training users by how well each one's reward orders the
    demonstrations: demonstrations oriented the way user 2 ranks them put most weight on user 2, the
    opposite orientation takes it away, and z is that blend of the users' latents."""
    torch.manual_seed(0)
    m = VPLRewardModel(32, decoder="bilinear", user_encoder="mixture", n_users=5).eval()
    a, b = torch.randn(3, 8, 32), torch.randn(3, 8, 32)
    dec = m.decoder
    margin2 = ((dec.U(a) - dec.U(b)) * dec.V(m.user_latents[2])).sum(-1)  # (3, 8) under user 2's latent
    flip = (margin2 < 0).unsqueeze(-1)
    chosen, rejected = torch.where(flip, b, a), torch.where(flip, a, b)  # every demonstration as user 2 orders it
    with torch.no_grad():
        w = m.user_weights(chosen, rejected)  # (3, 5)
        assert torch.allclose(w.sum(-1), torch.ones(3)) and (w.argmax(-1) == 2).all(), w
        assert (m.user_weights(rejected, chosen).argmin(-1) == 2).all()  # reversed: the least likely user
        mu, _ = m.encode_user(chosen, rejected)
        assert torch.allclose(mu, w @ m.user_latents, atol=1e-6)
        shift = torch.randn(3, 1, 32)  # what the two sides share cannot change the reading
        assert torch.allclose(m.encode_user(chosen + shift, rejected + shift)[0], mu, atol=1e-4)

    m.train()
    # the output bias cancels in r_w - r_l; the users' latents, log-variances and the sharpness all move
    assert _unchanged_after_one_step(m, chosen, rejected) == ["decoder.mlp.3.bias"]
    with pytest.raises(ValueError, match="user_encoder"):
        VPLRewardModel(32, decoder="concat", user_encoder="mixture", n_users=5)


def test_mixture_and_fit_readers_need_a_bilinear_term_in_a_config():
    from core.training.config import ConfigError, build_config

    for reader in ("mixture", "fit", "blend"):
        with pytest.raises(ConfigError, match=f"user_encoder '{reader}'"):
            build_config({"preset": "personal", "user_encoder": reader, "decoder": "concat"})
    assert build_config({"preset": "personal"}).user_encoder == "blend"
    with pytest.raises(ConfigError, match="agreed_share"):
        build_config({"preset": "personal", "contested_only": False})  # agreed_share needs the contested filter


def _oriented(m: VPLRewardModel, z: torch.Tensor, a: torch.Tensor, b: torch.Tensor):
    """(chosen, rejected) (B, K, D): each demonstration ordered the way the reward at latent z (L,) orders it."""
    B, K, D = a.shape
    zz = z.expand(B * K, -1)
    flip = (m.reward(a.reshape(-1, D), zz) < m.reward(b.reshape(-1, D), zz)).view(B, K, 1)
    return torch.where(flip, b, a), torch.where(flip, a, b)


@pytest.mark.parametrize("decoder", ["linear", "bilinear"])
def test_fit_reader_finds_the_likeliest_taste_and_is_surer_with_more_demonstrations(decoder):
    """The 'fit' user encoder is the MAP of the demonstrations under the model's own likelihood: with the
    linear decoder the objective's gradient vanishes at the reading; demonstrations ordered as one taste
    would order them read closer to that taste than reversed ones; more of them shrink the Laplace
    variance; their order does not matter; and one step trains every parameter it has."""
    torch.manual_seed(0)
    m = VPLRewardModel(32, decoder=decoder, user_encoder="fit", z_mode="mean", fit_steps=6).eval()
    L = m.dims.latent
    target = 3.0 * torch.randn(L)
    a, b = torch.randn(4, 16, 32), torch.randn(4, 16, 32)
    with torch.no_grad():
        chosen, rejected = _oriented(m, target, a, b)
        mu, logvar = m.encode_user(chosen, rejected)
        back, _ = m.encode_user(rejected, chosen)
        cos = torch.nn.functional.cosine_similarity
        assert (cos(mu - m.prior_mean, target[None]) > cos(back - m.prior_mean, target[None]) + 0.2).all()
        _, lv8 = m.encode_user(chosen[:, :8], rejected[:, :8])
        assert (logvar.exp().sum(-1) < lv8.exp().sum(-1)).all()  # 16 demonstrations: a surer reading
        perm = torch.randperm(16)
        assert torch.allclose(m.encode_user(chosen[:, perm], rejected[:, perm])[0], mu, atol=1e-4)
    if decoder == "linear":  # the reading is a stationary point of log-likelihood + log-prior (y = S^-1 (z - z0))
        z = mu.detach().clone().requires_grad_(True)
        B, K, D = chosen.shape
        zz = z.repeat_interleave(K, 0)
        margin = m.reward(chosen.reshape(-1, D), zz) - m.reward(rejected.reshape(-1, D), zz)
        y = torch.linalg.solve(m.prior_shape, (z - m.prior_mean).T).T
        obj = torch.nn.functional.logsigmoid(margin).sum() - 0.5 * m.log_prior_precision.exp() * (y ** 2).sum()
        (g,) = torch.autograd.grad(obj, z)
        assert g.norm() < 1e-3 * (1 + mu.norm()), g.norm()
    m.train()
    out_bias = "decoder.base.3.bias" if decoder == "linear" else "decoder.mlp.3.bias"
    assert _unchanged_after_one_step(m, chosen, rejected) == [out_bias]
    with pytest.raises(ValueError, match="user_encoder"):
        VPLRewardModel(32, decoder="concat", user_encoder="fit")


def test_losses_by_hand():
    assert torch.allclose(btl_loss(torch.tensor([0.0]), torch.tensor([0.0])), torch.log(torch.tensor([2.0])))
    assert float(kl_to_standard_normal(torch.zeros(1, 3), torch.zeros(1, 3))) == 0.0
    mu = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    # pairs (0,1) same user cos 1 -> -1 each way; (0,2), (1,2) different users cos -1 -> -1 each way
    assert torch.isclose(contrastive_loss(mu, torch.tensor([0, 0, 1])), torch.tensor(-1.0))
    assert torch.isclose(contrastive_loss(mu, torch.tensor([0, 1, 1])), torch.tensor(1.0 / 3.0))
    assert active_units(torch.tensor([[0.0, 1.0], [0.0, -1.0]])) == 0.5


def test_btl_head_is_user_agnostic():
    m = BTLRewardModel(16)
    x = torch.randn(3, 16)
    assert torch.equal(m.reward(x), m.reward(x, torch.randn(3, 4)))


@pytest.mark.parametrize("decoder", ["concat", "bilinear", "linear", "film", "hyper"])
def test_reward_grid_is_every_response_under_every_latent(decoder):
    """reward_grid (used to score people on all pairs) equals scoring each latent separately."""
    torch.manual_seed(0)
    m = VPLRewardModel(24, decoder=decoder).eval()
    e, z = torch.randn(7, 24), torch.randn(5, m.dims.latent)
    with torch.no_grad():
        loop = torch.stack([m.reward(e, zz.expand(7, -1)) for zz in z])  # (5, 7)
        assert torch.allclose(m.reward_grid(e, z), loop, atol=1e-5)


def test_blend_reader_reads_a_user_between_the_trained_ones_with_an_uncertainty():
    """The 'blend' user encoder's z is a posterior mean over blends of the training users: demonstrations
    ordered as user 2 orders them read nearest user 2, as a blend of users 0 and 1 between those two, and
    more of them narrow the posterior; one step trains every parameter it has."""
    torch.manual_seed(0)
    m = VPLRewardModel(32, decoder="linear", user_encoder="blend", n_users=4, z_mode="mean").eval()
    with torch.no_grad():
        m.user_latents.mul_(3.0)  # well-separated tastes
        v = m.user_latents
        a, b = torch.randn(2, 32, 32), torch.randn(2, 32, 32)
        chosen, rejected = _oriented(m, v[2], a, b)
        mu, logvar = m.encode_user(chosen, rejected)
        assert (torch.cdist(mu, v).argmin(-1) == 2).all()
        _, lv4 = m.encode_user(chosen[:, :4], rejected[:, :4])
        assert (logvar.exp().sum(-1) < lv4.exp().sum(-1)).all()
        mid = (v[0] + v[1]) / 2
        chosen, rejected = _oriented(m, mid, a, b)
        mu, _ = m.encode_user(chosen, rejected)
        d = torch.cdist(mu, torch.stack([v[0], v[1], mid]))  # (2, 3)
        assert (d[:, 2] < d[:, 0]).all() and (d[:, 2] < d[:, 1]).all(), d
    m.train()
    assert _unchanged_after_one_step(m, chosen, rejected) == ["decoder.base.3.bias"]


def test_a_grid_over_the_tastes_reads_people_among_many_users_closer_than_a_grid_over_the_users():
    """Over 40 users a Dirichlet(1) blend of all of them is always near the even blend, so the 'users' grid
    holds no taste between a user and the centre. The 'tastes' grid (blend_space) draws over the four aspects
    and writes each as a blend of the users: its points spread over the tastes, and people none of the users
    is are read nearer their own latent. Up to four users both grids are one grid."""
    import numpy as np

    from core.models.reward_models import VPLRewardModel, blend_grid, taste_grid

    rng = np.random.default_rng(0)
    W = rng.dirichlet(np.ones(4), 40)  # (40, 4) the users' tastes
    Wt = torch.from_numpy(W).float()
    spread = {name: float((g[41:] @ Wt).max(1).values.mean()) for name, g in
              (("users", blend_grid(40)), ("tastes", taste_grid(W)))}  # a draw's largest aspect weight
    assert spread["users"] < 0.33 and spread["tastes"] > 0.45, spread  # Dirichlet(1) over 4: 0.52 on average
    assert torch.equal(taste_grid(np.eye(4)), blend_grid(4)) and torch.equal(taste_grid(np.eye(4)[:2]), blend_grid(2))
    people = torch.from_numpy(rng.dirichlet(np.ones(4), 8)).float()  # (8, 4) people none of them is
    torch.manual_seed(0)
    a, b = torch.randn(8, 64, 32), torch.randn(8, 64, 32)  # one reading of 64 demonstrations a person
    dist = {}
    for space in ("users", "tastes"):
        torch.manual_seed(1)
        m = VPLRewardModel(32, decoder="linear", user_encoder="blend", n_users=40, z_mode="mean",
                           blend_tastes=W if space == "tastes" else None).eval()
        with torch.no_grad():
            T = 3.0 * torch.randn(4, m.user_latents.shape[1])  # (4, L) one latent a taste
            m.user_latents.copy_(Wt @ T)  # each user's latent the blend of the tastes it weighs
            m.log_sharpness.fill_(2.0)  # a likelihood that can tell blends apart (a trained run learns its own)
            Zp = people @ T  # (8, L) each person's own latent
            sides = [_oriented(m, z, a[i:i + 1], b[i:i + 1]) for i, z in enumerate(Zp)]
            mu, _ = m.encode_user(torch.cat([c for c, _ in sides]), torch.cat([r for _, r in sides]))
            dist[space] = float(((mu - Zp).norm(dim=-1) / (Zp - Zp.mean(0)).norm(dim=-1).mean()).mean())
    assert dist["tastes"] < 0.7 * dist["users"], dist


def test_the_blend_readers_centre_prior_reads_people_at_the_centre_but_does_not_train_there():
    """blend_centre_prior is a prior for reading people: in eval mode a large one puts an ordinary reading at
    the even blend of the users' latents; in training mode the reader is the plain grid posterior."""
    from core.models.reward_models import VPLDims, VPLRewardModel

    torch.manual_seed(0)
    dims = VPLDims.scaled(16)
    plain = VPLRewardModel(16, dims, decoder="linear", user_encoder="blend", n_users=4)
    strong = VPLRewardModel(16, dims, decoder="linear", user_encoder="blend", n_users=4, centre_prior=20.0)
    strong.load_state_dict(plain.state_dict())
    c, r = torch.randn(5, 8, 16), torch.randn(5, 8, 16)  # 5 readings of 8 demonstrations
    centre = strong.user_latents.mean(0)
    with torch.no_grad():
        strong.eval()
        mu, _ = strong.posterior(c, r)
        assert torch.allclose(mu, centre.expand_as(mu), atol=1e-3)
        strong.train()
        plain.train()
        assert torch.equal(strong.posterior(c, r)[0], plain.posterior(c, r)[0])
        assert not torch.allclose(plain.posterior(c, r)[0], centre.expand_as(mu), atol=1e-2)


def test_an_mlp_z_head_learns_a_taste_a_linear_probe_of_e_cannot_while_the_reward_stays_linear_in_z():
    """z_head 'mlp': U(e) = U e + an MLP of e, so a taste that is a nonlinear function of the embedding (here
    the reward of user k is |e_k|, which no linear map of e orders) is learned; with U e alone the model gets
    no further than its shared MLP(e) does for everyone (sum_k |e_k| agrees with each |e_k| more often than
    not). Either way the reward is linear in z, which the blend and fit readers rely on."""
    from core.models.decoders import LinearDecoder

    torch.manual_seed(0)
    D, L, H = 8, 4, 32
    Z = torch.eye(L)  # one latent per user; user k's reward is |e_k|

    def pairs(n):
        u = torch.randint(0, L, (n,))
        a, b = torch.randn(n, D), torch.randn(n, D)
        better = a[torch.arange(n), u].abs() > b[torch.arange(n), u].abs()
        return torch.where(better[:, None], a, b), torch.where(better[:, None], b, a), Z[u]

    test_w, test_l, test_z = pairs(2000)
    acc = {}
    for kind in ("linear", "mlp"):
        torch.manual_seed(1)
        dec = LinearDecoder(D, L, H, z_head_kind=kind)
        opt = torch.optim.Adam(dec.parameters(), lr=3e-3)
        for _ in range(400):
            w, lo, z = pairs(256)
            loss = btl_loss(dec(w, z), dec(lo, z)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            acc[kind] = (dec(test_w, test_z) > dec(test_l, test_z)).float().mean().item()
            e, z1, z2 = torch.randn(6, D), torch.randn(6, L), torch.randn(6, L)
            assert torch.allclose(dec(e, 0.3 * z1 + 0.7 * z2), 0.3 * dec(e, z1) + 0.7 * dec(e, z2), atol=1e-5)
    assert acc["mlp"] > 0.9 and acc["mlp"] - acc["linear"] > 0.2, acc


def test_z_head_needs_a_decoder_with_a_z_term():
    from core.training.config import ConfigError, build_config

    with pytest.raises(ConfigError, match="z_head"):
        build_config({"method": "vpl", "decoder": "concat", "z_head": "mlp"})
    with pytest.raises(ConfigError, match="z_head"):
        build_config({"method": "vpl", "decoder": "linear", "z_head": "deep"})
    m = VPLRewardModel(16, decoder="linear", user_encoder="blend", n_users=3, z_head="mlp")
    c, r = torch.randn(2, 8, 16), torch.randn(2, 8, 16)
    assert _unchanged_after_one_step(m.train(), c, r) == ["decoder.base.3.bias"]


@pytest.mark.parametrize("user_encoder", ["blend", "fit"])
def test_the_linear_decoders_shortcuts_give_the_margins_and_readings_of_the_plain_path(user_encoder):
    """Training and evaluation compute a text's base(e) and U e once and read demonstrations once per distinct
    pair (issue 32: about 3x less work a step); a pair's margin and a query's reading must be what the plain
    path computes from the gathered copies, or a faster run is a different model."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    m = VPLRewardModel(24, VPLDims.scaled(24, latent=6, decoder_hidden=10), user_encoder=user_encoder,
                       decoder="linear", z_head="mlp", n_users=3, z_mode="mean")
    q, z, user = torch.randn(16, 24), torch.randn(8, 6), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    blend = user_encoder == "blend"  # the population and vertex terms live on the blend reader's user latents
    own, pop, vert = m.training_margins(q, z, user, population=blend, vertex=blend)
    close = dict(atol=1e-5, rtol=1e-5)
    assert torch.allclose(own, m.margin_at(q, z), **close)
    if blend:
        assert torch.allclose(pop, m.population_margin(q), **close)
        assert torch.allclose(vert, m.vertex_margin(q, user), **close)
        assert not torch.allclose(own, vert, **close)  # three latents, three different margins
    else:
        assert pop is None and vert is None
    texts = torch.randn(30, 24)
    dc, dr = torch.randint(0, 30, (12,)), torch.randint(0, 30, (12,))
    for a, b in zip(m.demo_terms_from_parts(m.text_parts(texts), dc, dr), m.demo_terms(texts[dc], texts[dr]),
                    strict=True):
        assert torch.allclose(a, b, **close)
    # a query's K demonstrations named by their rows among the distinct ones, against the gathered copies
    inv = torch.randint(0, 12, (20, 4))
    terms = m.demo_terms(texts[dc], texts[dr])
    mu, logvar = m.posterior_from_terms(terms, inv)
    mu_ref, logvar_ref = m.read_terms(tuple(F.embedding(inv, t) for t in terms))
    assert torch.allclose(mu, mu_ref, **close) and torch.allclose(logvar, logvar_ref, **close)
    assert mu.std(0).min() > 0  # the queries are read differently (their demonstrations differ)

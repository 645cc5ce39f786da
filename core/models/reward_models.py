"""Reward models: the traditional BTL model and the VAE conditional reward model (seed §3.4, Table 1).

Shapes (B = batch of queries, K = demonstrations per query, D = encoder width, L = latent width):

    query_emb     (B, D)      embedding of (prompt + response) for the response being scored
    ctx_chosen    (B, K, D)   frozen embeddings of each demonstration's preferred side
    ctx_rejected  (B, K, D)   ... and of its rejected side
    mu, logvar    (B, L)      posterior over the user's latent taste
    reward        (B,)

BTL:  r(x, y) = MLP(e(x, y));   p(y_w > y_l) = sigmoid(r_w - r_l)
VPL:  z ~ q(z | demos) (mean at evaluation);  r(x, y, z) = decoder(e(x, y), z), where the decoder is

    concat    MLP([e, z])                                the study's; z only shifts the MLP's input
    bilinear  MLP([e, z]) + <U e, V z> / sqrt(H)         adds a term where z multiplies e
    linear    MLP(e) + <U e, V z> / sqrt(H)              z enters only through the bilinear term: a reward
                                                         margin is (base margin) + a . z, linear in z
    film      w . (GELU(A e) * (1 + G z) + B z)          z scales and shifts every hidden feature of e
    hyper     <GELU(A e), w0 + MLP(z)> / sqrt(H)         z writes the weights of a reward head over e

where, for bilinear and linear, "U e" is either that linear map (z_head 'linear') or U e + W GELU(A e)
(z_head 'mlp', core.models.decoders.ResidualMLP): a taste may then be a nonlinear function of e while a margin
stays linear in z, so everything below about the readers holds with U e read as U(e).

and the user encoder q(z | demos) reads the K demonstrations either as

    pairs        MLP([e_w, e_l]) per demonstration, self-attention across them, mean-pool   the study's
    differences  MLP(e_w - e_l) per demonstration, mean-pool, MLP                          a DeepSets reader
    mixture      sum_j softmax_j(sum_k log sigmoid(t m_kj)) v_j over the U training users   a recogniser
    fit          argmax_z sum_k log sigmoid(c_k + a_k . z) - lam/2 |z|^2, by Newton steps  an estimator
    blend        sum_s post_s z_s over S blends z_s = sum_j g_sj v_j of the training users   a posterior mean

The differences reader sees each demonstration only through the direction of preference e_w - e_l
(swap the two sides and its input changes sign), which is what a user's taste is a function of.
The mixture reader keeps one learned latent v_j (L,) per training user and asks how well each of those
users' rewards explains the demonstrations: m_kj = <U (e_w,k - e_l,k), V v_j> / sqrt(H) is the margin the
bilinear decoder's z-dependent term gives demonstration k under user j (B, K, U), t a learned sharpness.
It can only weigh demonstrations by the tastes they show, never by which pairs they are, and it reads a
new user as a blend of the known ones.
The blend reader asks the mixture's question of a grid of S points of the simplex over the users (each
user, the even blend, 256 Dirichlet(1) draws; g (S, U)): post_s = softmax_s(sum_k log sigmoid(t m_ks)), with
m_ks = c_k + a_k . z_s the margin demonstration k gets under blend s (c_k the z-free part of the margin with
decoder 'linear'), and returns the posterior mean of z and its variance. A person between two trained users
is read between them, with an uncertainty, instead of as the nearer one.
The fit reader asks which z makes the model's own BTL likelihood of the K demonstrations highest under a
Gaussian prior z = z0 + S y, y ~ N(0, I / lam) (z0, S and lam learned). With a_k = S^T V^T U (e_w,k - e_l,k)
/ sqrt(H) (B, K, L) and c_k the rest of demonstration k's margin at z0 (B, K), the margin is c_k + a_k . y.
With decoder 'linear' (MLP(e) + <U e, V z>) that is exact and the objective is concave; with 'bilinear' the
MLP's own dependence on z is held at z0. z stays in the span of the a_k, so Newton runs on K coefficients
(y = A^T alpha): alpha += (D G + lam I)^-1 (1 - p - lam alpha), with G = A A^T (B, K, K), p = sigmoid(margins),
D = diag(p (1 - p)). The steps are unrolled and differentiated, so the latent space is trained with the
reader it is read by. logvar is the diagonal of the Laplace posterior S (lam I + A^T D A)^-1 S^T. Weak
evidence leaves z near z0, the population's shared taste, so the uniform person and blends are points of
the same space as the trained users, not forced onto one of them.

With the concat decoder a reward difference r(y_w) - r(y_l) depends on z only through the MLP's
curvature, which at these sizes is too weak to give many users opposite readings of the same
response; the multiplicative decoders make z choose a direction in e directly.

Seam, if it grows: the user readers inside ``VPLRewardModel`` (pairs, differences, mixture, blend, fit)
and their grids (``blend_grid``, ``taste_grid``) could leave for a ``readers`` module beside the decoders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.models.decoders import (  # noqa: F401 - re-exported: tests and benches import them from here
    DECODERS,
    BilinearDecoder,
    ConcatDecoder,
    FiLMDecoder,
    HyperDecoder,
    LinearDecoder,
    make_decoder,
    mlp,
)


@dataclass
class VPLDims:
    """Table 1 of the study at a 1024-wide encoder is 512 everywhere; ``scaled`` keeps that ratio."""

    pair_hidden: int
    pair_out: int
    latent: int
    decoder_hidden: int

    @classmethod
    def scaled(cls, encoder_dim: int, **overrides: int) -> VPLDims:
        half = max(8, encoder_dim // 2)
        dims = {"pair_hidden": half, "pair_out": half, "latent": half, "decoder_hidden": half}
        dims.update({k: v for k, v in overrides.items() if v})
        return cls(**dims)


def query_projection(encoder_dim: int, kind: str) -> nn.Module:
    """'linear': a fresh Linear(D, D) on the pooled query state (the VPL reference code's classification
    head with D outputs), trained with the model; 'none': identity."""
    if kind == "linear":
        return nn.Linear(encoder_dim, encoder_dim)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"query_head: unknown kind {kind!r}")


class BTLRewardModel(nn.Module):
    """User-agnostic reward head: one score per (prompt, response) embedding."""

    conditional = False

    def __init__(self, encoder_dim: int, hidden: int | None = None, dropout: float = 0.0, query_head: str = "none"):
        super().__init__()
        self.query_head = query_projection(encoder_dim, query_head)
        self.head = mlp(encoder_dim, hidden or max(8, encoder_dim // 2), 1, dropout)

    def reward(self, query_emb: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.query_head(query_emb)).squeeze(-1)  # (B,)


USER_ENCODERS = ("pairs", "differences", "mixture", "fit", "blend")


def self_attention(attn: nn.MultiheadAttention, h: torch.Tensor) -> torch.Tensor:
    """nn.MultiheadAttention(h, h, h) without dropout, written out with its own weights: (B, K, P) -> (B, K, P).
    The same numbers as the module (tests/test_models.py), but in plain matmuls that torch.func.vmap batches
    (the fused CPU attention kernel has no batching rule and would run member by member in a grid)."""
    return attention_from_qkv(attn, F.linear(h, attn.in_proj_weight, attn.in_proj_bias))


def attention_from_qkv(attn: nn.MultiheadAttention, qkv: torch.Tensor) -> torch.Tensor:
    """The rest of self_attention once the input projection is done: qkv (B, K, 3P) -> (B, K, P)."""
    B, K, P3 = qkv.shape
    P, H = P3 // 3, attn.num_heads
    q, k, v = qkv.chunk(3, dim=-1)  # (B, K, P) each
    q, k, v = (t.reshape(B, K, H, P // H).transpose(1, 2) for t in (q, k, v))  # (B, H, K, P/H)
    w = (q @ k.transpose(-1, -2) * (P // H) ** -0.5).softmax(-1)  # (B, H, K, K)
    out = (w @ v).transpose(1, 2).reshape(B, K, P)
    return attn.out_proj(out)


def blend_grid(n_users: int, n_samples: int = 256, seed: int = 0) -> torch.Tensor:
    """(S, U) points of the simplex over U users: each user, the even blend, and Dirichlet(1) draws (fixed)."""
    import numpy as np

    draws = torch.from_numpy(np.random.default_rng(seed).dirichlet(np.ones(n_users), size=n_samples)).float()
    return torch.cat([torch.eye(n_users), torch.full((1, n_users), 1.0 / n_users), draws])


def taste_grid(W, n_samples: int = 256, seed: int = 0) -> torch.Tensor:
    """(S, U) blends of U users with tastes W (U, 4): each user, the even blend, and Dirichlet(1) draws over the
    four *aspects*, each written as the least-squares affine blend of the users with that taste (alpha with
    alpha [W, 1] closest to [t, 1]; its entries may be negative). Over 100 users a Dirichlet(1) blend of all of
    them lands near the even blend every time, so blend_grid holds no taste between a user and the centre;
    this grid is spread over the tastes themselves. Up to four users it is blend_grid: with fewer, or with
    tastes all on one face, a taste off their span has no blend; four users that span the simplex have one
    blend for every taste, so a Dirichlet(1) blend of them is already a draw over their tastes."""
    import numpy as np

    W = np.asarray(W, dtype=np.float64)
    U = len(W)
    X = np.c_[W, np.ones(U)]  # (U, 5); rank 4 when the tastes span the simplex (their columns sum to the last)
    if U <= W.shape[1] or np.linalg.matrix_rank(X) < W.shape[1]:
        return blend_grid(U, n_samples, seed)
    # (S, 4) the tastes, a stream of their own (the 'random' preset draws its users with default_rng(0))
    T = np.random.default_rng([seed, 4]).dirichlet(np.ones(W.shape[1]), size=n_samples)
    A = np.c_[T, np.ones(n_samples)] @ np.linalg.pinv(X)  # (S, U)
    return torch.cat([torch.eye(U), torch.full((1, U), 1.0 / U), torch.from_numpy(A).float()])


class VPLRewardModel(nn.Module):
    """VAE conditional reward model (after Poddar et al. 2024), with the study's sub-modules."""

    conditional = True

    def __init__(self, encoder_dim: int, dims: VPLDims | None = None, n_heads: int = 4, dropout: float = 0.0,
                 query_head: str = "none", z_mode: str = "sample", decoder: str = "concat", pair_diff: bool = False,
                 user_encoder: str = "pairs", n_users: int = 0, fit_steps: int = 4, centre_prior: float = 0.0,
                 z_head: str = "linear", blend_tastes=None):
        super().__init__()
        d = dims or VPLDims.scaled(encoder_dim)
        self.dims = d
        if z_mode not in ("sample", "vpl", "mean"):
            raise ValueError(f"z_mode: unknown mode {z_mode!r}")
        self.z_mode = z_mode
        self.query_head = query_projection(encoder_dim, query_head)
        if user_encoder not in USER_ENCODERS:
            raise ValueError(f"user_encoder: unknown kind {user_encoder!r}; choose one of {', '.join(USER_ENCODERS)}")
        if user_encoder in ("mixture", "blend") and (decoder not in ("bilinear", "linear") or n_users < 1):
            raise ValueError("user_encoder: 'mixture' needs decoder 'bilinear' or 'linear' and the number of "
                             "training users")
        if user_encoder == "fit" and decoder not in ("linear", "bilinear"):
            raise ValueError(f"user_encoder: 'fit' needs decoder 'bilinear' or 'linear' (got {decoder!r})")
        self.user_encoder = user_encoder
        self.pair_diff = pair_diff
        self.fit_steps = fit_steps
        if user_encoder == "fit":
            self.log_prior_precision = nn.Parameter(torch.zeros(()))  # lam = exp(.), learned with the rest
            self.prior_shape = nn.Parameter(torch.eye(d.latent))  # (L, L) S: z = z0 + S y, y ~ N(0, I / lam)
            self.prior_mean = nn.Parameter(torch.zeros(d.latent))  # (L,) z0
        elif user_encoder == "blend":
            self.user_latents = nn.Parameter(torch.randn(n_users, d.latent))
            self.log_sharpness = nn.Parameter(torch.zeros(()))
            # (S, U) the blends read: over the users, or over the tastes when their weights are given (blend_tastes)
            grid = blend_grid(n_users) if blend_tastes is None else taste_grid(blend_tastes)
            self.register_buffer("blend_grid", grid, persistent=False)
            # (S,) log prior of each blend: 0 but for the even blend (row U), which gets ``centre_prior``
            log_prior = torch.zeros(len(self.blend_grid))
            log_prior[n_users] = float(centre_prior)
            self.register_buffer("blend_log_prior", log_prior, persistent=False)
        elif user_encoder == "mixture":
            # (U, L) one v_j per user, N(0, 1) like an embedding table: distinct users from the first step (at
            # 0.1 the mixture starts near uniform, every user reads alike, and four users never separated)
            self.user_latents = nn.Parameter(torch.randn(n_users, d.latent))
            self.user_logvar = nn.Parameter(torch.zeros(n_users, d.latent))  # (U, L), mixed like the means
            self.log_sharpness = nn.Parameter(torch.zeros(()))
        elif user_encoder == "pairs":
            # pair encoder: [e_chosen, e_rejected] (+ their difference with pair_diff) -> one vector per demonstration
            self.pair_encoder = mlp((3 if pair_diff else 2) * encoder_dim, d.pair_hidden, d.pair_out, dropout)
            # sequence encoder: self-attention across the K demonstrations, then mean-pool
            heads = n_heads if d.pair_out % n_heads == 0 else 1
            self.attn = nn.MultiheadAttention(d.pair_out, heads, dropout=dropout, batch_first=True)
            self.norm = nn.LayerNorm(d.pair_out)
            self.to_mu = nn.Linear(d.pair_out, d.latent)
        else:
            # e_chosen - e_rejected -> one vector per demonstration; the mean over them -> mu through an MLP
            self.pair_encoder = mlp(encoder_dim, d.pair_hidden, d.pair_out, dropout)
            self.to_mu = mlp(d.pair_out, d.pair_hidden, d.latent, dropout)
        if user_encoder in ("pairs", "differences"):
            self.to_logvar = nn.Linear(d.pair_out, d.latent)
        # decoder: (e(x, y), z) -> reward
        self.decoder_kind = decoder
        self.decoder = make_decoder(decoder, encoder_dim, d.latent, d.decoder_hidden, dropout, z_head)

    def encode_user(self, ctx_chosen: torch.Tensor, ctx_rejected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K, D) x 2 -> mu, logvar (B, L)."""
        return self.read_terms(self.demo_terms(ctx_chosen, ctx_rejected))

    def demo_terms(self, ctx_chosen: torch.Tensor, ctx_rejected: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """What the reader computes from each demonstration on its own, (..., D) x 2 -> tensors (..., X).

        Split from ``read_terms`` so that a demonstration shown with many queries (a user's pool) is read
        once: compute these on the distinct demonstrations, gather them to (B, K, X), then read_terms."""
        kind = self.user_encoder
        if kind in ("fit", "blend"):
            dec = self.decoder
            e_w, e_l = self.query_head(ctx_chosen), self.query_head(ctx_rejected)
            A = ((dec.U(e_w) - dec.U(e_l)) @ dec.V.weight) * dec.scale  # (..., L): the margin's slope in z
            if hasattr(dec, "base"):
                c = dec.base(e_w) - dec.base(e_l)  # (..., 1) the shared reward's margin
            elif kind == "fit":  # bilinear: the MLP's margin at z0 (its slope in z is left out of the fit)
                z0 = self.prior_mean.expand(*e_w.shape[:-1], -1)
                c = (dec.mlp(e_w, z0) - dec.mlp(e_l, z0))[..., None]
            else:
                c = A.new_zeros((*A.shape[:-1], 1))
            return A, c
        if kind == "mixture":
            dec = self.decoder
            return (dec.U(self.query_head(ctx_chosen)) - dec.U(self.query_head(ctx_rejected)),)  # (..., H)
        if kind == "differences":
            return (self.pair_encoder(ctx_chosen - ctx_rejected),)  # (..., P)
        parts = [ctx_chosen, ctx_rejected] + ([ctx_chosen - ctx_rejected] if self.pair_diff else [])
        h = self.pair_encoder(torch.cat(parts, dim=-1))  # (..., P)
        return h, F.linear(h, self.attn.in_proj_weight, self.attn.in_proj_bias)  # (..., P), (..., 3P)

    def read_terms(self, terms: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """demo_terms of each query's K demonstrations, (B, K, X) -> mu, logvar (B, L)."""
        kind = self.user_encoder
        if kind == "fit":
            return self.fit_user(*terms)
        if kind == "blend":
            return self.blend_user(*terms)
        if kind == "mixture":
            w = self.user_weights_from(terms[0])  # (B, U)
            return w @ self.user_latents, w @ self.user_logvar
        if kind == "differences":
            pooled = terms[0].mean(dim=1)  # (B, K, P) -> (B, P)
            return self.to_mu(pooled), self.to_logvar(pooled).clamp(-10.0, 10.0)
        h, qkv = terms
        a = attention_from_qkv(self.attn, qkv)  # (B, K, P): self-attention across the K demonstrations
        pooled = self.norm(h + a).mean(dim=1)  # (B, P)
        return self.to_mu(pooled), self.to_logvar(pooled).clamp(-10.0, 10.0)

    def read_pairs_distinct(self, h: torch.Tensor, qkv: torch.Tensor, inv: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """The 'pairs' reader from its terms of U distinct demonstrations, h (U, P), qkv (U, 3P), and inv (B, K).
        The attention scores of any two demonstrations are one (H, U, U) table, looked up per query instead
        of recomputed from gathered copies: the same numbers as read_terms on the gathered terms."""
        U, P3 = qkv.shape
        P, H = P3 // 3, self.attn.num_heads
        q, k, v = (t.reshape(U, H, P // H) for t in qkv.chunk(3, dim=-1))  # (U, H, P/H) each
        scores = torch.einsum("uhd,whd->huw", q, k) * (P // H) ** -0.5  # (H, U, U)
        w = scores[:, inv[:, :, None], inv[:, None, :]].permute(1, 0, 2, 3).softmax(-1)  # (B, H, K, K)
        B, K = inv.shape
        vg = F.embedding(inv, v.reshape(U, P)).reshape(B, K, H, P // H).transpose(1, 2)  # (B, H, K, P/H)
        a = self.attn.out_proj((w @ vg).transpose(1, 2).reshape(B, K, P))  # (B, K, P)
        pooled = self.norm(F.embedding(inv, h) + a).mean(dim=1)  # (B, P)
        return self.to_mu(pooled), self.to_logvar(pooled).clamp(-10.0, 10.0)

    def user_weights(self, ctx_chosen: torch.Tensor, ctx_rejected: torch.Tensor) -> torch.Tensor:
        """Mixture reader: (B, K, D) x 2 -> (B, U) posterior weights over the training users."""
        dec = self.decoder
        return self.user_weights_from(dec.U(self.query_head(ctx_chosen)) - dec.U(self.query_head(ctx_rejected)))

    def user_weights_from(self, du: torch.Tensor) -> torch.Tensor:
        """du = U e_w - U e_l (B, K, H) -> (B, U)."""
        dec = self.decoder
        margins = torch.einsum("bkh,uh->bku", du, dec.V(self.user_latents)) * dec.scale  # (B, K, U)
        loglik = F.logsigmoid(margins * self.log_sharpness.exp()).sum(dim=1)  # (B, U)
        return loglik.softmax(dim=-1)

    def blend_user(self, A: torch.Tensor, c: torch.Tensor, inv: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Blend reader: the posterior mean over blends of the training users' latents (a fixed grid of
        S simplex points, Dirichlet(1) prior), by how well each blend's reward explains the demonstrations.
        A (B, K, L) each demonstration's margin slope in z, c (B, K, 1) its z-free margin -> mu, logvar (B, L).
        With ``inv`` (B, K): A (U, L) and c (U, 1) are of U distinct demonstrations, each query's K of them
        named by inv; every demonstration's log-likelihood under every blend is then computed once and looked
        up (a user's pool is read by many queries: four users' batch of 1024 reads about 400 distinct ones)."""
        Z = self.blend_grid @ self.user_latents  # (S, L) the blends' latents
        ll = F.logsigmoid((A @ Z.T + c) * self.log_sharpness.exp())  # (B, K, S), or (U, S) distinct
        if inv is None:
            loglik = ll.sum(-2)  # (B, S)
        else:  # looked up a block of queries at a time: (B, K, S) at once would be large for a whole split
            loglik = torch.cat([F.embedding(i, ll).sum(-2) for i in inv.split(4096)])  # (B, S)
        # the centre prior is for reading people (eval mode): trained with it, every user is pulled to the
        # centre and the tastes come out blurred (docs/results/personal-preset.md)
        post = (loglik if self.training else loglik + self.blend_log_prior).softmax(-1)  # (B, S)
        mu = post @ Z  # (B, L)
        var = post @ Z.pow(2) - mu.pow(2)
        return mu, var.clamp_min(1e-6).log()

    def fit_user(self, A: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fit reader: the MAP z of the demonstrations under the model's own likelihood, and its Laplace
        log-variance. A (B, K, L) margin slopes, c (B, K, 1) margins at z = 0 (their z-free part) -> (B, L)
        x 2; see the module docstring."""
        c = c.squeeze(-1) + A @ self.prior_mean  # (B, K) margin at z = z0
        A = A @ self.prior_shape  # (B, K, L): margin = c + (A S) y
        G = A @ A.transpose(1, 2)  # (B, K, K)
        lam = self.log_prior_precision.exp()
        eye = torch.eye(G.shape[-1], device=G.device, dtype=G.dtype)
        alpha = torch.zeros_like(c)  # (B, K); z = A^T alpha starts at 0
        for _ in range(self.fit_steps):
            p = torch.sigmoid(c + (G @ alpha[..., None]).squeeze(-1))
            d = p * (1 - p)
            step = torch.linalg.solve(d[..., None] * G + lam * eye, (1 - p) - lam * alpha)
            alpha = alpha + step
        y = (alpha[:, None, :] @ A).squeeze(1)  # (B, L)
        p = torch.sigmoid(c + (G @ alpha[..., None]).squeeze(-1))
        m = (p * (1 - p)).clamp_min(1e-6).sqrt()  # (B, K) D^1/2
        MA = m[..., None] * A  # (B, K, L)
        X = m[..., None] * G * m[:, None, :] + lam * eye  # (B, K, K)
        # Cov(y) = (I - A^T M X^-1 M A) / lam and z = z0 + S y, so with Q = M A S^T (B, K, L) the diagonal of
        # Cov(z) = S Cov(y) S^T is (rowsum(S^2) - colsum(Q * X^-1 Q)) / lam: O(B K L), no (L, L) per reading
        Sm = self.prior_shape
        Q = MA @ Sm.T
        var = ((Sm ** 2).sum(1) - (Q * torch.linalg.solve(X, Q)).sum(1)).clamp_min(1e-8) / lam
        return self.prior_mean + y @ Sm.T, var.log()

    def posterior(self, ctx_chosen: torch.Tensor, ctx_rejected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """encode_user, then the z_mode's clamp: 'vpl' keeps mu and logvar in [-1, 1]."""
        return self.posterior_from_terms(self.demo_terms(ctx_chosen, ctx_rejected))

    def posterior_from_terms(self, terms: tuple[torch.Tensor, ...], inv: torch.Tensor | None = None
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        """posterior() from demo_terms: already gathered to (B, K, X), or of U distinct demonstrations (U, X)
        with ``inv`` (B, K) saying which of them each query's K demonstrations are."""
        if inv is None:
            mu, logvar = self.read_terms(terms)
        elif self.user_encoder == "pairs":
            mu, logvar = self.read_pairs_distinct(*terms, inv)
        elif self.user_encoder == "blend":
            mu, logvar = self.blend_user(*terms, inv=inv)
        else:
            mu, logvar = self.read_terms(tuple(F.embedding(inv, t) for t in terms))
        if self.z_mode == "vpl":
            mu, logvar = mu.clamp(-1.0, 1.0), logvar.clamp(-1.0, 1.0)
        return mu, logvar

    def latent(self, mu: torch.Tensor, logvar: torch.Tensor, *, train: bool,
               generator: torch.Generator | None = None, eps: torch.Tensor | None = None) -> torch.Tensor:
        """z (B, L): a reparameterized sample in training, mu at evaluation. 'vpl' puts the training
        sample on the sphere of radius sqrt(L) (but not mu at evaluation: the reference code's mismatch).
        ``eps`` (B, L): the standard normal noise, when drawn beforehand (the grid draws it per run)."""
        if not train or self.z_mode == "mean":
            return mu
        z = self.sample(mu, logvar, generator) if eps is None else mu + torch.exp(0.5 * logvar) * eps
        if self.z_mode == "vpl":
            z = F.normalize(z, dim=-1) * math.sqrt(z.shape[-1])
        return z

    @staticmethod
    def sample(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterized z = mu + sigma * eps."""
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * eps

    def reward(self, query_emb: torch.Tensor, z: torch.Tensor, z_emb: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D), (B, L) -> (B,). ``z_emb`` (B, D): the response features z acts on, when they are not
        query_emb (z_features 'frozen': the frozen encoder's, while query_emb comes through LoRA)."""
        if z_emb is None:
            return self.decoder(self.query_head(query_emb), z)
        return self.decoder(self.query_head(query_emb), z, self.query_head(z_emb))

    def margin_at(self, query_emb: torch.Tensor, z: torch.Tensor, z_emb: torch.Tensor | None = None) -> torch.Tensor:
        """r_chosen - r_rejected (B,) of pairs (2B, D: chosen then rejected), each scored at latent z (B, L)."""
        n = query_emb.shape[0] // 2
        r = self.reward(query_emb, torch.cat([z, z]), z_emb=z_emb)
        return r[:n] - r[n:]

    def margins_at(self, query_emb: torch.Tensor, zs: list[torch.Tensor], z_emb: torch.Tensor | None = None
                   ) -> list[torch.Tensor]:
        """margin_at for several latents, each (B, L), of the same pairs (2B, D). With the linear decoder the
        reward is base(e) + <U e, V z>, so the response side (base and U of every text, the costly part) is
        computed once for all of them: training's own, population and vertex terms read three latents."""
        if not isinstance(self.decoder, LinearDecoder):
            return [self.margin_at(query_emb, z, z_emb) for z in zs]
        n = query_emb.shape[0] // 2
        parts = self.text_parts(query_emb, z_emb)
        rows = torch.arange(2 * n, device=query_emb.device)
        return [self.margin_from_parts(parts, rows[:n], rows[n:], z) for z in zs]

    def text_parts(self, query_emb: torch.Tensor, z_emb: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """The linear decoder's response side, (T, D) -> base (T,), U e (T, H): a text's reward under any z
        is base + <U e, V z> / sqrt(H), so texts read under many latents are computed once."""
        dec = self.decoder
        e = self.query_head(query_emb)
        return dec.base(e).squeeze(-1), dec.U(e if z_emb is None else self.query_head(z_emb))

    def demo_terms_from_parts(self, parts: tuple[torch.Tensor, torch.Tensor], chosen: torch.Tensor,
                              rejected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """demo_terms of the 'blend' and 'fit' readers over the linear decoder, from text_parts rows (U,) x 2 of
        the demonstrations' two sides: A (U, L) the margin's slope in z, c (U, 1) its z-free part."""
        dec = self.decoder
        b, u = parts
        return ((u[chosen] - u[rejected]) @ dec.V.weight) * dec.scale, (b[chosen] - b[rejected])[..., None]

    def margin_from_parts(self, parts: tuple[torch.Tensor, torch.Tensor], chosen: torch.Tensor,
                          rejected: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """r_chosen - r_rejected (B,) of pairs given as rows (B,) x 2 of text_parts, at latents z (B, L)."""
        dec = self.decoder
        b, u = parts
        return (b[chosen] - b[rejected]) + ((u[chosen] - u[rejected]) * dec.V(z)).sum(-1) * dec.scale

    def population_latent(self, n: int) -> torch.Tensor:
        """(n, L) the even blend of the training users' latents: the point population_coef trains with the
        traditional objective."""
        return self.user_latents.mean(0).expand(n, -1)

    def population_margin(self, query_emb: torch.Tensor, z_emb: torch.Tensor | None = None) -> torch.Tensor:
        """Margins (B,) at the even blend of the training users' latents (population_latent)."""
        return self.margin_at(query_emb, self.population_latent(query_emb.shape[0] // 2), z_emb)

    def vertex_margin(self, query_emb: torch.Tensor, user: torch.Tensor, z_emb: torch.Tensor | None = None
                      ) -> torch.Tensor:
        """Margins (B,) at each pair's own training user's latent (user (B,)): the term vertex_coef trains,
        so each user's own point is that user's reward."""
        return self.margin_at(query_emb, self.user_latents[user], z_emb)

    def training_margins(self, query_emb: torch.Tensor, z: torch.Tensor, user: torch.Tensor | None,
                         population: bool, vertex: bool, z_emb: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The margins (B,) a training step reads: at the pairs' own latents z (B, L), and, when asked, at the
        population point and at each pair's own user's latent (user (B,)); None where not asked."""
        zs = [z] + ([self.population_latent(len(z))] if population else []) + (
            [self.user_latents[user]] if vertex else [])
        ms = iter(self.margins_at(query_emb, zs, z_emb))
        own = next(ms)
        return own, next(ms) if population else None, next(ms) if vertex else None

    def reward_grid(self, query_emb: torch.Tensor, z: torch.Tensor, chunk: int = 64,
                    z_emb: torch.Tensor | None = None) -> torch.Tensor:
        """Every response under every latent: (T, D), (N, L) -> (N, T)."""
        e = self.query_head(query_emb)
        if z_emb is not None:
            return self.decoder.grid(e, z, self.query_head(z_emb))
        if hasattr(self.decoder, "grid"):
            return self.decoder.grid(e, z)
        T = len(e)
        rows = [self.decoder(e.repeat(len(zz), 1), zz.repeat_interleave(T, 0)).view(len(zz), T)
                for zz in z.split(chunk)]
        return torch.cat(rows) if rows else e.new_zeros((0, T))


def distinct_demos(ctx_chosen, ctx_rejected):
    """Text ids of each query's demonstrations, (B, K) x 2 (numpy) -> the distinct (chosen, rejected) pairs
    (U,) x 2 and, for each query and slot, the position of its pair among them (B, K). A user's pool is
    shown with many queries: reading each distinct demonstration once is 5-50x less work at evaluation."""
    import numpy as np

    c, r = np.asarray(ctx_chosen, dtype=np.int64), np.asarray(ctx_rejected, dtype=np.int64)
    keyed = c * (int(max(c.max(initial=0), r.max(initial=0))) + 1) + r
    uniq, first, inv = np.unique(keyed.ravel(), return_index=True, return_inverse=True)
    return c.ravel()[first], r.ravel()[first], inv.reshape(c.shape)


def active_units(mu: torch.Tensor, threshold: float = 0.01) -> float:
    """Share of latent dimensions whose mean varies across inputs (Var > threshold); 0 = collapse."""
    if mu.shape[0] < 2:
        return 0.0
    return float((mu.var(dim=0) > threshold).float().mean())


def model_from_config(cfg, encoder_dim: int, n_users: int | None = None) -> nn.Module:
    """The reward model a TrainConfig describes (BTL or VPL, widths scaled from the encoder's).

    ``n_users``: how many users it is trained on (the mixture reader keeps one latent each); taken from
    the config's users when not given."""
    if cfg.method == "btl":
        return BTLRewardModel(encoder_dim, hidden=cfg.decoder_hidden or None, query_head=cfg.query_head)
    dims = VPLDims.scaled(encoder_dim, pair_hidden=cfg.pair_hidden, pair_out=cfg.pair_out, latent=cfg.latent,
                          decoder_hidden=cfg.decoder_hidden)
    tastes = cfg.user_encoder == "blend" and cfg.blend_space == "tastes"
    W = None
    if tastes or (n_users is None and cfg.user_encoder in ("mixture", "blend")):
        from core.users.tastes import load_users

        W = load_users(cfg)  # (U, 4) the training users' tastes
        n_users = len(W) if n_users is None else n_users
    return VPLRewardModel(encoder_dim, dims, query_head=cfg.query_head, z_mode=cfg.z_mode, decoder=cfg.decoder,
                          pair_diff=cfg.pair_diff, user_encoder=cfg.user_encoder, n_users=n_users or 0,
                          fit_steps=cfg.fit_steps, centre_prior=cfg.blend_centre_prior, z_head=cfg.z_head,
                          blend_tastes=W if tastes else None)

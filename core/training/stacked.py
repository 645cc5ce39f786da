"""Stacked groups: the runs of a grid whose models have the same shapes step as one (docs/architecture.md §4).

Members on cached embeddings whose models have the same shapes and forward (the ``stack_key``) step
together. Every parameter of the group is one tensor (M, ...) and every member's parameter is a view of
its slice, so a member's own AdamW, clipping, schedule, checkpoint and resume work unchanged, while the
forward and backward of all M members is one ``torch.func.vmap`` call:

    q      (M, 2B, D)     chosen then rejected responses of each member's batch (B = batch x accumulation)
    demos  (M, U, D)      the distinct demonstrations of each member's batch, both sides (read once each)
    inv    (M, B, K)      which of them each pair's K demonstrations are
    eps    (M, B, L)      each member's noise, drawn from its own generator in its own micro-batch order
    loss   (M, B)         per-pair loss, mu (M, B, L)

The micro-batches of a step run as one forward: equal micro-batches under a plain sum give the same
gradient; the contrastive term is still taken per micro-batch. MGDA / PCGrad members get one backward per
user over the whole group (core.training.gradients) and aggregate per member. LoRA members share one base
model (core.models.stacked_lora). Runs that train their whole query encoder step alone (``SoloGroup``).

Seam, if it grows: ``StackedAdamW`` (the optimizer over the stacks) from the group's forward and backward.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, vmap

from core.models.losses import btl_loss, contrastive_loss, vpl_loss
from core.models.reward_models import distinct_demos
from core.training.gradients import user_jacobians, user_weights
from core.training.member import Member

FUSED_ADAM = True  # torch's fused AdamW over a group's stacks when its members share lr and step count

# TrainConfig fields that decide a model's shapes and forward, or a step's batch shape: members agreeing on
# all of them (and on the table and encoder they read) stack
STACK_FIELDS = ("method", "query_encoder", "query_head", "z_mode", "z_features", "decoder", "user_encoder",
                "pair_diff", "fit_steps", "population_coef", "blend_centre_prior", "z_head", "vertex_coef", "blend_space",
                "pair_hidden", "pair_out", "latent", "decoder_hidden", "beta", "batch_size", "grad_accum", "n_demos",
                "data", "corpus_prompts", "corpus_seed", "signal", "rating_noise", "encoder", "max_length", "segment_pool", "device")


# Texts x tokens one LoRA group sends through the shared base model per step: its activations for the
# backward pass (~0.7 MB a token for SmolLM2-135M in bf16) must fit the GPU; bigger grids form more groups
LORA_GROUP_TOKENS = 65536


def stack_key(trainer: Member) -> tuple | None:
    """Members with equal keys step as one stacked group; None = steps alone (full fine-tuning, a trained
    encoder of its own, or one run across ranks)."""
    cfg = trainer.cfg
    if cfg.query_encoder == "full" or (cfg.query_encoder == "lora" and trainer.query_encoder is not None):
        return None
    if getattr(trainer, "ranks", None) is not None:  # one run across ranks: DDP steps it alone
        return None
    shapes = tuple((n, tuple(p.shape)) for n, p in trainer.model.named_parameters())
    per_user = cfg.grad_strategy != "sum"
    lora = (cfg.lora_r, cfg.lora_alpha) if cfg.query_encoder == "lora" else None
    return tuple(getattr(cfg, f) for f in STACK_FIELDS) + (len(trainer.W), per_user, lora, shapes)


class _StepLoss(nn.Module):
    """One member's per-pair loss for a fused step; called through functional_call under vmap."""

    def __init__(self, model: nn.Module, method: str, beta: float, population_coef: float = 0.0,
                 vertex_coef: float = 0.0):
        super().__init__()
        self.model, self.method, self.beta, self.population_coef = model, method, beta, population_coef
        self.vertex_coef = vertex_coef
        self.text_mode = False  # forward is by_text (StackedGroup sets it)

    def by_text(self, texts, q_rows, dc_rows, dr_rows, inv, eps=None, user=None):
        """forward for the linear decoder read by 'blend' or 'fit' on cached features: every distinct text of
        the step (queries and both sides of the demonstrations) goes through the decoder's response side once.
        texts (T, D); q_rows (2B,) the queries' rows of texts, chosen then rejected; dc_rows, dr_rows (U,) the
        distinct demonstrations' rows; inv (B, K) -> per-pair loss (B,), mu (B, L)."""
        model = self.model
        parts = model.text_parts(texts)  # base (T,), U e (T, H)
        mu, logvar = model.posterior_from_terms(model.demo_terms_from_parts(parts, dc_rows, dr_rows), inv)
        z = model.latent(mu, logvar, train=True, eps=eps)
        n = q_rows.shape[0] // 2
        zs = [z] + ([model.population_latent(n)] if self.population_coef > 0 else []) + (
            [model.user_latents[user]] if self.vertex_coef > 0 else [])
        margins = iter([model.margin_from_parts(parts, q_rows[:n], q_rows[n:], zz) for zz in zs])
        own = next(margins)
        pop = next(margins) if self.population_coef > 0 else None
        vert = next(margins) if self.vertex_coef > 0 else None
        return self._loss(own, mu, logvar, pop, vert), mu

    def _loss(self, own, mu, logvar, pop, vert):
        return vpl_loss(own, mu, logvar, beta=self.beta, population=pop, population_coef=self.population_coef,
                        vertex=vert, vertex_coef=self.vertex_coef)

    def forward(self, *args):
        return self.by_text(*args) if self.text_mode else self.by_pairs(*args)

    def by_pairs(self, q, demo_c=None, demo_r=None, inv=None, eps=None, qz=None, user=None):
        """q (2B, D); demo_c, demo_r (U, D) the distinct demonstrations of the batch, inv (B, K) each pair's
        K of them; eps (B, L); qz (2B, D) the frozen features z acts on (z_features 'frozen' with LoRA)
        -> per-pair loss (B,), mu (B, L)."""
        n = q.shape[0] // 2
        if self.method == "btl":
            r = self.model.reward(q)
            return btl_loss(r[:n], r[n:]), q.new_zeros((n, 1))
        terms = self.model.demo_terms(demo_c, demo_r)  # (U, X) each
        mu, logvar = self.model.posterior_from_terms(terms, inv)  # (B, L)
        z = self.model.latent(mu, logvar, train=True, eps=eps)
        own, pop, vert = self.model.training_margins(q, z, user, self.population_coef > 0, self.vertex_coef > 0,
                                                     z_emb=qz)
        return self._loss(own, mu, logvar, pop, vert), mu


def _set_param(module: nn.Module, name: str, value: nn.Parameter) -> None:
    *path, leaf = name.split(".")
    for p in path:
        module = getattr(module, p)
    module._parameters[leaf] = value


class StackedGroup:
    """Members of one stack_key: their parameters stacked, stepped by one vmapped forward and backward."""

    def __init__(self, trainers: list):
        self.trainers = trainers
        t0 = trainers[0]
        self.names = [n for n, _ in t0.model.named_parameters()]
        per_member = [dict(t.model.named_parameters()) for t in trainers]
        # (M, ...) leaves; each member's parameter becomes a view of its slice (its optimizer updates it in place)
        self.stacked = [torch.stack([pm[n].detach() for pm in per_member]).requires_grad_() for n in self.names]
        for m, t in enumerate(trainers):
            for n, S in zip(self.names, self.stacked, strict=True):
                _set_param(t.model, n, nn.Parameter(S.detach()[m]))
        self.encoder = None
        if t0.cfg.query_encoder == "lora":  # one base model, every member's adapters on it (core.models.stacked_lora)
            from core.models.encoders import TextEncoder
            from core.models.stacked_lora import MemberEncoder, add_stacked_lora

            self.encoder = TextEncoder.load(t0.cfg.encoder, device=t0.device, max_length=t0.cfg.max_length,
                                           segments=t0.cfg.segment_pool)
            adapters = add_stacked_lora(self.encoder.model, [t.cfg.seed for t in trainers], t0.cfg.lora_r,
                                        t0.cfg.lora_alpha)
            self.encoder.model.train()
            for m, t in enumerate(trainers):
                t.attach_query_encoder(MemberEncoder(self.encoder, adapters, m))
            self.stacked += [p for mod in adapters.values() for p in (mod.A, mod.B)]  # the order MemberAdapters lists
        for t in trainers:
            t.make_optimizer()  # over the views: head parameters, then the adapters
        self.buffers = {n: b for n, b in t0.model.named_buffers()}  # identical in every member (fixed grids)
        cfg = t0.cfg
        self.method, self.per_user = cfg.method, cfg.grad_strategy != "sum"
        self.sample_noise = cfg.method == "vpl" and cfg.z_mode != "mean"
        self.bs, self.ga = cfg.batch_size, cfg.grad_accum
        step_loss = _StepLoss(t0.model, cfg.method, cfg.beta, cfg.population_coef, cfg.vertex_coef)
        prefix = {n: "model." + n for n in self.names}
        bufs = {"model." + n: b for n, b in self.buffers.items()}

        # the linear decoder read by blending (or fitting) on cached features: each distinct text of a step
        # through the decoder once (personal; with 100 users a step's demonstrations share most of their texts)
        self.by_text = (self.encoder is None and cfg.method == "vpl" and cfg.decoder == "linear"
                        and cfg.user_encoder in ("blend", "fit"))

        step_loss.text_mode = self.by_text
        self.step_loss = step_loss

        def one(params, *args):
            return functional_call(step_loss, ({prefix[n]: p for n, p in zip(self.names, params, strict=True)}, bufs),
                                   args)

        self._one = one
        self.E = t0.embeddings  # shared by the whole group (same table and encoder: part of the stack key)
        self.adam = StackedAdamW(self)

    def step(self, members: list[int]) -> list[float]:
        """One optimizer step for the members at these positions; returns their mean training losses."""
        ts = [self.trainers[m] for m in members]
        dev = self.E.device
        splits = []
        for t in ts:
            splits.append(t.data.train.take(t.batch_indices()))
        whole = len(members) == len(self.trainers)
        q_ids = np.stack([np.concatenate([s.chosen, s.rejected]) for s in splits])  # (M, 2B)
        if self.by_text:
            args = self._text_args(ts, splits, q_ids)
        elif self.encoder is None:
            args = [F.embedding(torch.as_tensor(q_ids, device=dev), self.E)]  # (M, 2B, D)
        else:  # every adapter's block in one pass of the base (members that left repeat a member's texts)
            at = dict(zip(members, q_ids, strict=True))
            rows = [at.get(m, q_ids[0]) for m in range(len(self.trainers))]
            texts = [t.data.texts[i] for r in rows for i in r]
            tokens = self.encoder.tokenize(texts, blocks=len(rows))  # segments, too, in one block per run
            q = self.encoder.forward(tokens).view(len(rows), q_ids.shape[1], -1)
            args = [q if whole else q[torch.as_tensor(members, device=dev)]]
        if self.method == "vpl" and not self.by_text:
            # each member's distinct demonstrations, padded to the longest list with its first (M, U, D) x 2
            demos = [distinct_demos(s.ctx_chosen, s.ctx_rejected) for s in splits]
            U = max(len(uc) for uc, _, _ in demos)
            pad = [(np.pad(uc, (0, U - len(uc)), mode="edge"), np.pad(ur, (0, U - len(ur)), mode="edge"))
                   for uc, ur, _ in demos]
            args.append(F.embedding(torch.as_tensor(np.stack([c for c, _ in pad]), device=dev), self.E))
            args.append(F.embedding(torch.as_tensor(np.stack([r for _, r in pad]), device=dev), self.E))
            args.append(torch.as_tensor(np.stack([inv for _, _, inv in demos]), device=dev))  # (M, B, K)
            args.append(self._z_noise(ts, dev))
            if self.encoder is not None and ts[0].cfg.z_features == "frozen":
                args.append(F.embedding(torch.as_tensor(q_ids, device=dev), self.E))  # (M, 2B, D)
            else:
                args.append(None)
            args.append(torch.as_tensor(np.stack([s.user for s in splits]), device=dev) if ts[0].cfg.vertex_coef > 0
                        else None)  # (M, B) each pair's training user, for the vertex term
        sel = torch.as_tensor(members, device=dev)
        head = self.stacked[:len(self.names)]
        params = head if whole else [S[sel] for S in head]
        in_dims = (0,) + tuple(None if a is None else 0 for a in args)
        loss, mu = vmap(self._one, in_dims=in_dims)(params, *args)  # (M, B), (M, B, L)
        users = torch.as_tensor(np.stack([s.user for s in splits]), device=dev)  # (M, B)
        coef = torch.tensor([t.cfg.contrastive_coef for t in ts], device=dev, dtype=loss.dtype)
        extra = None
        if self.method == "vpl" and bool((coef > 0).any()):  # per micro-batch, as the study's loop takes it
            M = len(ts)
            extra = coef * contrastive_loss(mu.view(M, self.ga, self.bs, -1), users.view(M, self.ga, self.bs)).mean(1)
        for S in self.stacked:
            S.grad = None
        if not self.per_user:
            obj = loss.mean(1).sum() + (extra.sum() if extra is not None else 0.0)
            obj.backward()
            grads = [torch.zeros_like(S) if S.grad is None else S.grad for S in self.stacked]
            grads = grads if whole else [g[sel] for g in grads]  # (M, ...) each member's gradient
        else:
            grads = self._per_user_grads(ts, loss, users, extra, params + self.stacked[len(self.names):], sel, whole)
        self._clip(ts, grads)
        if whole:
            self.adam.step(grads)
        else:  # some members left: their own AdamW (whose state is a view of the stacks) on their slices
            for i, t in enumerate(ts):
                for p, g in zip(t.params, grads, strict=True):
                    p.grad = g[i]
                t.optimizer.step()
        out = []
        for i, (t, s) in enumerate(zip(ts, splits, strict=True)):
            total = float(loss[i].detach().mean())
            t.end_step(total, len(s.user), stepped_elsewhere=whole)
            out.append(total)
        return out

    def _z_noise(self, ts, dev) -> torch.Tensor | None:
        """Each member's draws for z this step (M, B, L), from its own generator (as alone), or None."""
        if not self.sample_noise:
            return None
        L = ts[0].model.dims.latent
        return torch.stack([torch.cat([t.noise(self.bs, L) for _ in range(self.ga)]) for t in ts])

    def _text_args(self, ts, splits, q_ids: np.ndarray) -> list:
        """_StepLoss.by_text's arguments for each member: its step's distinct texts (M, T, D), padded to the longest
        list by repeating its first; the queries' rows of them (M, 2B); the distinct demonstrations' rows
        (M, U) x 2; inv (M, B, K); the noise (M, B, L) or None; the pairs' users (M, B) or None."""
        dev = self.E.device
        demos = [distinct_demos(s.ctx_chosen, s.ctx_rejected) for s in splits]
        U = max(len(uc) for uc, _, _ in demos)
        ids, rows = [], []
        for q, (uc, ur, _) in zip(q_ids, demos, strict=True):
            uc, ur = np.pad(uc, (0, U - len(uc)), mode="edge"), np.pad(ur, (0, U - len(ur)), mode="edge")
            texts, r = np.unique(np.concatenate([q, uc, ur]), return_inverse=True)
            ids.append(texts)
            rows.append(r)
        T = max(len(t) for t in ids)
        ids = np.stack([np.pad(t, (0, T - len(t)), mode="edge") for t in ids])  # (M, T)
        rows = torch.as_tensor(np.stack(rows), device=dev)  # (M, 2B + 2U)
        n = q_ids.shape[1]
        args = [F.embedding(torch.as_tensor(ids, device=dev), self.E), rows[:, :n], rows[:, n:n + U],
                rows[:, n + U:], torch.as_tensor(np.stack([inv for _, _, inv in demos]), device=dev)]
        args.append(self._z_noise(ts, dev))
        args.append(torch.as_tensor(np.stack([s.user for s in splits]), device=dev) if ts[0].cfg.vertex_coef > 0
                    else None)  # (M, B) each pair's training user, for the vertex term
        return args

    @staticmethod
    @torch.no_grad()
    def _clip(ts, grads) -> None:
        """torch.nn.utils.clip_grad_norm_ per member: each member's whole gradient scaled to its max_grad_norm."""
        max_norm = torch.tensor([t.cfg.max_grad_norm for t in ts], dtype=grads[0].dtype, device=grads[0].device)
        if not bool((max_norm > 0).any()):
            return
        M = len(ts)
        norm = torch.stack([g.reshape(M, -1).pow(2).sum(1) for g in grads]).sum(0).sqrt()  # (M,)
        coef = torch.where(max_norm > 0, (max_norm / (norm + 1e-6)).clamp(max=1.0), torch.ones_like(norm))
        for g in grads:
            g.mul_(coef.view((M,) + (1,) * (g.ndim - 1)))

    def _per_user_grads(self, ts, loss, users, extra, params, sel, whole) -> list[torch.Tensor]:
        """MGDA / PCGrad: one backward per user over the group, then each member aggregates its own rows
        (core.training.gradients); returns the stacked gradients (M, ...). ``params``: the head tensors as the forward
        used them, then the LoRA adapters (whole stacks: their rows of members that left are dropped)."""
        present = {}
        user_losses: dict[int, torch.Tensor] = {}
        for u in torch.unique(users).tolist():
            mask = (users == u).to(loss.dtype)  # (M, B)
            cnt = mask.sum(1)
            mean = (loss * mask).sum(1) / cnt.clamp_min(1)
            if extra is not None:  # the contrastive term is shared: added to every user's objective
                mean = mean + extra
            user_losses[u] = mean * (cnt > 0)
            present[u] = (cnt > 0).tolist()
        jac = user_jacobians(user_losses, params)
        if not whole:
            jac = {u: [g if k < len(self.names) else g[sel] for k, g in enumerate(gs)] for u, gs in jac.items()}
            params = [p if k < len(self.names) else p[sel] for k, p in enumerate(params)]
        M, users_ = params[0].shape[0], sorted(jac)
        # J[m, u] = user u's gradient in member m, every parameter flattened: (M, U, N) -- one copy, so the
        # Gramians G[m] = J[m] J[m]^T and the updates w[m]^T J[m] are one batched matmul each
        J = torch.stack([torch.cat([g.reshape(M, -1) for g in jac[u]], dim=1) for u in users_], dim=1)
        G = J @ J.transpose(1, 2)  # (M, U, U)
        w = torch.zeros((M, len(users_)), dtype=loss.dtype, device=loss.device)  # (M, U): absent users weigh 0
        for i, t in enumerate(ts):
            here = [a for a, u in enumerate(users_) if present[u][i]]
            w[i, here] = user_weights(G[i][here][:, here], t.cfg.grad_strategy)
        flat = (w[:, None, :] @ J).squeeze(1)  # (M, N)
        sizes = [p[0].numel() for p in params]
        return [g.view(p.shape) for g, p in zip(flat.split(sizes, dim=1), params, strict=True)]


class StackedAdamW:
    """torch.optim.AdamW's update (amsgrad off) for every member of a group at once, on the stacked tensors.

    Each member keeps its own AdamW: its state tensors are views of these stacks, so its checkpoint,
    resume and a step of its own (when some members have left the loop) read and write the same numbers."""

    def __init__(self, group: StackedGroup):
        self.group = group
        self.exp_avg = [torch.zeros_like(S, requires_grad=False) for S in group.stacked]
        self.exp_avg_sq = [torch.zeros_like(S, requires_grad=False) for S in group.stacked]
        self.link()

    def link(self) -> None:
        """Copy each member's AdamW state (fresh, or loaded by a resume) into the stacks and make it views
        (the step counts too: one (M, n_params) table, so a step counts every member's tensors at once)."""
        ts = self.group.trainers
        self.step_table = torch.zeros((len(ts), len(ts[0].params)))
        with torch.no_grad():
            for i, t in enumerate(ts):
                for j, p in enumerate(t.params):
                    st = t.optimizer.state.get(p, {})
                    if "exp_avg" in st:
                        self.exp_avg[j][i].copy_(st["exp_avg"])
                        self.exp_avg_sq[j][i].copy_(st["exp_avg_sq"])
                    else:
                        self.exp_avg[j][i].zero_()
                        self.exp_avg_sq[j][i].zero_()
                    self.step_table[i, j] = float(st["step"]) if "step" in st else 0.0
                    t.optimizer.state[p] = {"step": self.step_table[i, j], "exp_avg": self.exp_avg[j][i],
                                            "exp_avg_sq": self.exp_avg_sq[j][i]}

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor]) -> None:
        ts = self.group.trainers
        M = len(ts)
        pg = [t.optimizer.param_groups[0] for t in ts]
        b1, b2 = pg[0]["betas"]
        eps = pg[0]["eps"]
        same = {(g["lr"], g["weight_decay"], g["betas"], g["eps"]) for g in pg}
        if FUSED_ADAM and len(same) == 1 and bool((self.step_table == self.step_table[0, 0]).all()):
            self._fused_step(grads, pg[0])  # the usual case: members that started together with one schedule
            return
        self.step_table += 1.0
        step = self.step_table[:, 0].double()
        lr = torch.tensor([g["lr"] for g in pg], dtype=torch.float64)
        wd = torch.tensor([g["weight_decay"] for g in pg], dtype=torch.float64)
        dtype, dev = grads[0].dtype, grads[0].device
        decay = (1 - lr * wd).to(dtype=dtype, device=dev)
        step_size = (lr / (1 - b1 ** step)).to(dtype=dtype, device=dev)  # (M,)
        bc2_sqrt = (1 - b2 ** step).sqrt().to(dtype=dtype, device=dev)
        for S, m, v, g in zip(self.group.stacked, self.exp_avg, self.exp_avg_sq, grads, strict=True):
            shape = (M,) + (1,) * (S.ndim - 1)
            P = S.detach()
            P.mul_(decay.view(shape))
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v.sqrt() / bc2_sqrt.view(shape)).add_(eps)
            P.sub_(m / denom * step_size.view(shape))

    def _fused_step(self, grads: list[torch.Tensor], group: dict) -> None:
        """Every member with the same learning rate, decay and step count: torch's fused AdamW over the stacks
        (one pass over memory per tensor; ~5x less time than element-wise ops on a CPU), same update."""
        stacked = self.group.stacked
        if getattr(self, "_fused", None) is None:
            fused_ok = stacked[0].device.type in ("cpu", "cuda")
            self._fused = torch.optim.AdamW(stacked, lr=group["lr"], betas=group["betas"], eps=group["eps"],
                                            weight_decay=group["weight_decay"], fused=fused_ok,
                                            foreach=None if fused_ok else True)
            for j, S in enumerate(stacked):
                self._fused.state[S] = {"step": torch.zeros((), dtype=torch.float32, device=S.device)
                                        if fused_ok else torch.zeros(()),
                                        "exp_avg": self.exp_avg[j], "exp_avg_sq": self.exp_avg_sq[j]}
        opt = self._fused
        opt.param_groups[0].update(lr=group["lr"], weight_decay=group["weight_decay"])
        step = float(self.step_table[0, 0])
        for S, g in zip(stacked, grads, strict=True):
            opt.state[S]["step"].fill_(step)
            # the fused kernel walks memory: a gradient must have its parameter's layout (a batched backward
            # can hand back a transposed one, and MGDA/PCGrad combine those)
            S.grad = g if g.stride() == S.stride() else g.contiguous()
        opt.step()
        for S in stacked:
            S.grad = None
        self.step_table += 1.0


class SoloGroup:
    """A member that trains its query encoder: stepped by its own micro-batch loop (Trainer.train_step)."""

    def __init__(self, trainer):
        self.trainers = [trainer]

    def step(self, members: list[int]) -> list[float]:
        return [self.trainers[0].train_step()] if members else []


def plan_groups(trainers: list) -> list:
    groups: dict[tuple, list] = {}
    solo = []
    for t in trainers:
        k = stack_key(t)
        if k is None:
            solo.append(SoloGroup(t))
        else:
            groups.setdefault(k, []).append(t)
    out = []
    for ts in groups.values():
        cfg = ts[0].cfg
        per = 1 if cfg.query_encoder != "lora" else cfg.batch_size * cfg.grad_accum * 2 * cfg.max_length
        size = max(1, LORA_GROUP_TOKENS // per) if cfg.query_encoder == "lora" else len(ts)
        out += [StackedGroup(ts[i:i + size]) for i in range(0, len(ts), size)]
    return out + solo

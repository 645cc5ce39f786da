"""One training run: ``Trainer`` builds its data, people, encoder and model, and steps, evaluates,
checkpoints and resumes. The loop that drives it is core.training.grid; core.training.launch starts runs.

Seams, if it grows: the set-up (data, people, embeddings, encoder: ``__init__`` and its helpers) from
the step (``forward``, ``train_step``) and the loop's calls (the Member protocol); evaluation and
checkpoints are already apart (core.training.evaluation, core.training.checkpoints).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from core.common.progress import Progress, status_writer
from core.common.runs import RunDir
from core.models.embedding_store import EmbeddingCache, default_cache_root
from core.models.encoders import TextEncoder
from core.models.losses import (
    btl_loss,
    contrastive_loss,
    vpl_loss,
)
from core.models.reward_models import distinct_demos, model_from_config
from core.models.stacked_lora import lora_targets
from core.training import distributed
from core.training.checkpoints import CheckpointMixin
from core.training.config import (
    MANY_USERS,
    ConfigError,
    TrainConfig,
)
from core.training.dataset import PrefData, build, used_text_ids
from core.training.evaluation import EvaluationMixin
from core.training.references import shuffled_partners
from core.training.samplers import AdaptiveSampler, UniformSampler
from core.training.shared import DATA_FIELDS, ENCODER_FIELDS, PEOPLE_FIELDS, TABLE_FIELDS, Embeddings, Shared
from core.training.stopping import EarlyStopping
from core.users.people import (
    PeopleSet,
    build_people_set,
    outside_people,
    trained_people,
)
from core.users.tastes import load_users, user_groups


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_table(cfg: TrainConfig):
    from core.data import generate_table, load_ultrafeedback

    if cfg.data == "offline":
        return generate_table(n_prompts=cfg.corpus_prompts, seed=cfg.corpus_seed, signal=cfg.signal,
                              rating_noise=cfg.rating_noise)
    return load_ultrafeedback(cfg.data)


# Pairs one forward may send through a trained (LoRA / full) query encoder on CPU: the most that fit a 24 GB
# machine with `personal`'s segment features (docs/results/study-setting.md)
CPU_TRAINED_ENCODER_MAX_PAIRS = 64


def check_fits_device(cfg: TrainConfig, device: torch.device) -> None:
    """ConfigError naming batch_size where one forward would hold more pairs than a trained encoder can
    back-propagate on this device's memory (today: CPU only; a GPU run is left to the user)."""
    if cfg.query_encoder == "frozen" or device.type != "cpu":
        return
    pairs = cfg.batch_size * (cfg.grad_accum if cfg.fused_accumulation else 1)
    if pairs > CPU_TRAINED_ENCODER_MAX_PAIRS:
        raise ConfigError(
            f"batch_size: {pairs} pairs a forward through a trained query encoder (query_encoder="
            f"{cfg.query_encoder!r}) on CPU needs more memory than such a machine has (64 pairs took 12.9 GB); "
            f"set batch_size <= {CPU_TRAINED_ENCODER_MAX_PAIRS} and raise grad_accum to keep the pairs a step, "
            f"or train on a GPU (got batch_size={cfg.batch_size})")


class Trainer(EvaluationMixin, CheckpointMixin):
    """A small generic loop (minGPT-style) with callbacks: ``on_eval(trainer, record)``, ``on_step(trainer)``.

    ``show_progress`` ("auto", True or False): the embedding and training bars (or plain lines off a
    terminal, core.common.progress); status.json gets the progress either way."""

    def __init__(self, cfg: TrainConfig, run: RunDir, *, log: Callable[[str], None] = print,
                 show_progress: bool | str = False, shared: Shared | None = None, adapters_later: bool = False):
        self.cfg, self.run, self.log = cfg, run, log
        self.show_progress = show_progress
        self.shared = shared or Shared()  # parts other runs of this process may already have built
        self.ranks = distributed.current()  # None: one process; else this rank's place (core.training.distributed)
        self.device = self.ranks.device if self.ranks else resolve_device(cfg.device)
        check_fits_device(cfg, self.device)  # before anything is loaded: a clear error, not the OOM killer
        self.callbacks: dict[str, list[Callable]] = {"on_eval": [], "on_step": []}
        self.progress: Progress | None = None  # the training stage's, made by the loop (core.training.grid)
        self._stop_requested = False
        self._stop_agreed = False  # with ranks: a stop every rank has seen at the same step
        self._t_start = time.perf_counter()  # this session's start (reset by start())
        # early stopping on the validation loss (None: train every step); stopped_early is set when it fires
        self.stopper = EarlyStopping(cfg.early_stop_patience, cfg.early_stop_min_delta) if cfg.early_stop_patience else None
        self.stopped_early: dict | None = None
        np.random.seed(cfg.seed)

        t0 = time.perf_counter()
        self.table = self.shared.get("table", cfg, TABLE_FIELDS, lambda: load_table(cfg))
        self.W = load_users(cfg)
        self.data: PrefData = self.shared.get("data", cfg, DATA_FIELDS, lambda: build(
            self.table, self.W, seed=cfg.seed, test_share=cfg.test_share, contested_only=cfg.contested_only,
            pool_size=cfg.pool_size, n_demos=cfg.n_demos, max_train_per_user=cfg.max_train_per_user,
            max_test_per_user=cfg.test_cap(len(self.W)), agreed_share=cfg.agreed_share, val_share=cfg.val_share))
        self.log(f"data: {json.dumps(self.data.summary())} ({time.perf_counter() - t0:.1f}s)")
        # who is scored on all pairs of the test questions (core.users.people)
        self.people = self.shared.get("people", cfg, PEOPLE_FIELDS, self._people_set)

        if cfg.query_encoder == "frozen":  # read through the cache only: one encoder for every run that agrees
            self.encoder = self.shared.get("encoder", cfg, ENCODER_FIELDS, lambda: TextEncoder.load(
                cfg.encoder, device=self.device, max_length=cfg.max_length, segments=cfg.segment_pool))
        else:  # LoRA / full fine-tuning change the encoder: every run its own
            self.encoder = TextEncoder.load(cfg.encoder, device=self.device, max_length=cfg.max_length,
                                            segments=cfg.segment_pool)
        self.embeddings = self._embed_frozen()  # (n_texts, D) on device
        if self.device.type == "cpu":
            # small heads on cached embeddings: one thread is ~70x faster than two fighting a busy core
            # (a grid of many stacked runs sets its own: its ops are large)
            threads = cfg.cpu_threads or (1 if cfg.query_encoder == "frozen" else torch.get_num_threads())
            torch.set_num_threads(threads)
            # flush float32 subnormals (reached in the backward pass) to zero: x86 takes a slow path for each,
            # and a long run slowed as they grew (bench/bench_flush_denormal.py)
            torch.set_flush_denormal(True)
        torch.manual_seed(cfg.seed)  # here, so a run's initial weights do not depend on what was built before
        self.model = model_from_config(cfg, self.encoder.dim, n_users=len(self.W)).to(self.device)
        # adapters_later: a grid puts this run's LoRA adapters on a base model its group shares (core.models.stacked_lora)
        self.query_encoder = None if adapters_later and cfg.query_encoder == "lora" else self._setup_query_encoder()
        self._q_cache: dict[int, torch.Tensor] | None = None  # text id -> query embedding, during an evaluation
        # Micro-batches of equal size under a plain sum give the same gradient as one batch of all of
        # them; fusing them pays off where a step is launch-bound (a trained encoder on CUDA: measured
        # on an H200, LoRA SmolLM2 spent ~15x more CPU than GPU time per micro-batch). The contrastive
        # term is per micro-batch and MGDA/PCGrad need per-user losses, so those keep the loop.
        fuse = cfg.fused_accumulation
        if fuse is None:
            fuse = self.device.type == "cuda" and cfg.query_encoder != "frozen"
        self.fused = bool(fuse) and cfg.grad_strategy == "sum" and cfg.contrastive_coef == 0 and cfg.grad_accum > 1
        if self.device.type == "cuda":
            # cuDNN's attention rebuilds its graph for every new padded length (~1.9 ms CPU a call,
            # 40% of a LoRA step's CPU time on an H200); flash / memory-efficient kernels do not
            torch.backends.cuda.enable_cudnn_sdp(False)
        self.make_optimizer()
        # with ranks: DDP over the trainable parts (the loop steps this run alone: core.training.stacked.stack_key)
        self.ddp = distributed.wrap(self.model, self.query_encoder.model if self.query_encoder else None,
                                    self.ranks) if self.ranks else None
        users = self.data.train.user
        if cfg.sampler == "adaptive":
            unit = cfg.adaptive_unit
            if unit == "auto":
                unit = "user" if self.data.n_users <= 8 else "group"
            self.sampler = AdaptiveSampler(users, cfg.steps, order=cfg.adaptive_order, weights=cfg.adaptive_weights,
                                           steps_per_phase=cfg.steps_per_phase, seed=cfg.seed,
                                           unit_of_user=user_groups(cfg.users, self.W) if unit == "group" else None)
        else:
            self.sampler = UniformSampler(users, seed=cfg.seed)
        self.z_gen = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.step = 0
        self.wall_offset = 0.0  # wall seconds spent before a resume
        self.samples_seen = 0
        self.loss_sum, self.loss_n = 0.0, 0
        self.probe = self._probe_indices()
        # the test split with every pair's demonstrations taken from another user (fixed by seed)
        # (N_test,) the pair whose demonstrations each test pair borrows for z_shuffled_accuracy
        self.shuffled_partner = shuffled_partners(self.data.test, cfg.seed + 11) if cfg.method == "vpl" else None

    def make_optimizer(self) -> None:
        """AdamW + warmup-cosine over the model's parameters (and a trained encoder's); called again by a
        grid once it has made the parameters views into its stacked tensors."""
        cfg = self.cfg
        params = [p for p in self.model.parameters()]
        if self.query_encoder is not None:
            params += [p for p in self.query_encoder.model.parameters() if p.requires_grad]
        self.params = params
        # foreach: one kernel per step for all tensors (the default only on CUDA; 3x less optimizer time on CPU)
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
        from transformers import get_cosine_schedule_with_warmup

        self.scheduler = get_cosine_schedule_with_warmup(self.optimizer, int(math.ceil(cfg.warmup_ratio * cfg.steps)),
                                                         cfg.steps)

    # ------------------------------------------------------------------ setup helpers
    def _people_set(self) -> list[PeopleSet] | None:
        """The run's users and people outside training, each read from n_demos of their own choices on
        random train questions and scored on every strict pair of the test questions. Fixed by the seed
        and the user set alone, so runs of any method on the same data score the same people and pairs."""
        cfg = self.cfg
        trained = trained_people(self.W)
        outside = outside_people(cfg.users, self.W, user_seed=cfg.user_seed, seed=cfg.seed)
        ratings = self.table.ratings
        try:
            # many users: one reading each (their figure is a mean over many people anyway)
            sets = [build_people_set(ratings, trained, self.data.train_questions, self.data.test_questions,
                                     n_demos=cfg.n_demos, seed=cfg.seed,
                                     n_readings=1 if len(trained) > MANY_USERS else cfg.people_readings),
                    build_people_set(ratings, outside, self.data.train_questions, self.data.test_questions,
                                     n_demos=cfg.n_demos, seed=cfg.seed + 1, n_readings=cfg.people_readings)]
        except ValueError as err:  # a tiny corpus: too few questions to read somebody from
            self.log(f"people: not scored ({err})")
            return None
        return sets

    def _embed_frozen(self) -> torch.Tensor:
        """The shared (n_texts, D) frozen-embedding matrix of this run's table and encoder, with every row
        this run reads filled (from the disk cache, encoding what it lacks)."""
        cfg = self.cfg
        extra = np.concatenate([s.needed_ids() for s in self.people]) if self.people else None
        ids = used_text_ids(self.data, extra)
        emb = self.shared.get("embeddings", cfg, TABLE_FIELDS + ENCODER_FIELDS,
                              lambda: Embeddings(len(self.data.texts), self.encoder.dim, self.device))
        need = emb.missing(ids)
        cache = EmbeddingCache(cfg.cache_dir or default_cache_root(), self.encoder, log=self.log)
        todo = len(cache.missing([self.data.texts[i] for i in need])) if len(need) else 0
        self.log(f"embeddings: {len(ids)} texts used, {todo} not cached yet (encoding them once)")
        self.run.update_status(phase="embedding")
        if len(need):
            prog = Progress(todo, unit="texts", stage="embedding", show=self.show_progress and todo > 0,
                            status=status_writer(self.run, "embedding") if todo else None, status_every_s=2.0)
            rows = cache.get([self.data.texts[i] for i in need], progress=lambda done, total: prog.set(done, total))
            prog.close()
            emb.fill(need, rows)
            emb.encoded += cache.encoded
        self.cache_encoded = cache.encoded
        return emb.matrix

    def _setup_query_encoder(self) -> TextEncoder | None:
        mode = self.cfg.query_encoder
        if mode == "frozen":  # read only through the cache (under no_grad); never loaded if all is cached
            return None
        enc = self.encoder
        if mode == "lora":
            from peft import LoraConfig, get_peft_model

            peft_cfg = LoraConfig(r=self.cfg.lora_r, lora_alpha=self.cfg.lora_alpha,
                                  target_modules=lora_targets(enc.model), lora_dropout=0.0)
            enc.model = get_peft_model(enc.model, peft_cfg)
        else:
            for p in enc.model.parameters():
                p.requires_grad_(True)
        enc.model.train()
        return enc

    def _probe_indices(self) -> np.ndarray:
        """Fixed test queries whose latent means are saved at each evaluation (for t-SNE)."""
        rng = np.random.default_rng(self.cfg.seed + 7)
        out = []
        for u in range(self.data.n_users):
            idx = np.flatnonzero(self.data.test.user == u)
            out.append(rng.permutation(idx)[: self.cfg.probe_per_user])
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    # ------------------------------------------------------------------ forward
    def _query(self, ids: np.ndarray) -> torch.Tensor:
        """(N,) text ids -> (N, D) query embeddings: cached rows, or through the trained encoder. During an
        evaluation each distinct text goes through the encoder once (the shuffled and fresh-demonstration
        passes and the people read the same responses)."""
        if self.query_encoder is None:
            return F.embedding(torch.as_tensor(ids, device=self.device), self.embeddings)
        if self._q_cache is None:
            batch = self.query_encoder.tokenize([self.data.texts[i] for i in ids])
            return self.query_encoder.forward(batch)
        todo = [int(i) for i in dict.fromkeys(np.asarray(ids).tolist()) if int(i) not in self._q_cache]
        for s in range(0, len(todo), 128):
            part = todo[s:s + 128]
            rows = self.query_encoder.forward(self.query_encoder.tokenize([self.data.texts[i] for i in part]))
            self._q_cache.update(zip(part, rows, strict=True))
        return torch.stack([self._q_cache[int(i)] for i in ids]) if len(ids) else self.embeddings[:0]

    def _query_chunked(self, ids: np.ndarray, chunk: int = 128) -> torch.Tensor:
        if self.query_encoder is None:
            return self._query(ids)
        return torch.cat([self._query(ids[s:s + chunk]) for s in range(0, len(ids), chunk)])

    def _z_rows(self, ids: np.ndarray) -> torch.Tensor | None:
        """The frozen features z acts on (z_features 'frozen' with a trained query encoder), else None."""
        if self.cfg.z_features != "frozen" or self.query_encoder is None:
            return None
        return self._frozen_rows(ids)

    def _frozen_rows(self, ids: np.ndarray) -> torch.Tensor:
        return self.embeddings[torch.as_tensor(ids, device=self.device)]

    def forward(self, split, idx: np.ndarray, *, train: bool, latent: tuple | None = None,
                shard: tuple[int, np.ndarray] | None = None):
        """Per-pair loss (B,), r_chosen - r_rejected (B,), mu (B, L) or None, user (B,).

        ``latent``: the pairs' (mu, logvar), each (B, L), when already computed (evaluation). ``shard``: (n, rows)
        when idx is this rank's rows of a global batch of n: z's noise is drawn for all n and these rows kept,
        so every rank's pairs get the noise they get in one process."""
        s = split.take(idx)
        n = len(idx)
        ids = np.concatenate([s.chosen, s.rejected])  # (2B,) chosen then rejected
        q = self._query(ids)  # (2B, D)
        user = torch.as_tensor(s.user, device=self.device)
        if self.cfg.method == "btl":
            r = self.model.reward(q)
            margin = r[:n] - r[n:]
            return btl_loss(r[:n], r[n:]), margin, None, user
        mu, logvar = self._posterior(s) if latent is None else latent  # (B, L)
        eps = None
        if shard is not None and train and self.model.z_mode != "mean":
            eps = torch.randn((shard[0], mu.shape[-1]), generator=self.z_gen, device=self.device)[
                torch.as_tensor(shard[1], device=self.device)]
        z = self.model.latent(mu, logvar, train=train, generator=self.z_gen, eps=eps)
        zq = self._z_rows(ids)  # (2B, D) or None: the features z acts on
        # in training also the population term (the traditional objective at the users' centre) and the vertex
        # term (each user's own latent scores that user's pairs)
        pop_on, vert_on = train and self.cfg.population_coef > 0, train and self.cfg.vertex_coef > 0
        margin, pop, vert = self.model.training_margins(q, z, user, pop_on, vert_on, z_emb=zq)
        loss = vpl_loss(margin, mu, logvar, beta=self.cfg.beta, population=pop, population_coef=self.cfg.population_coef,
                        vertex=vert, vertex_coef=self.cfg.vertex_coef)
        return loss, margin, mu, user

    def _posterior(self, s) -> tuple[torch.Tensor, torch.Tensor]:
        """mu, logvar (B, L) of the user latent read from each pair's demonstrations (B, K)."""
        E = self.embeddings
        uc, ur, inv = distinct_demos(s.ctx_chosen, s.ctx_rejected)  # (U,) x 2, (B, K): each demonstration once
        terms = self.model.demo_terms(E[torch.as_tensor(uc, device=self.device)],
                                      E[torch.as_tensor(ur, device=self.device)])  # (U, X) each
        inv = torch.as_tensor(inv, device=self.device)
        return self.model.posterior_from_terms(terms, inv)

    # ------------------------------------------------------------------ one optimizer step
    def train_step(self) -> float:
        if self.ranks is not None:
            return self.train_step_ranks()
        cfg = self.cfg
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        per_user: dict[int, list[torch.Tensor]] = {}
        total, pairs = 0.0, 0
        if self.fused:  # one forward over all micro-batches: the same mean loss, 1/grad_accum the launches
            idx = self.batch_indices()
            loss, _, _, _ = self.forward(self.data.train, idx, train=True)
            loss.mean().backward()
            total = float(loss.detach().mean())
            pairs += len(idx)
        for _ in range(0 if self.fused else cfg.grad_accum):
            idx = self.sampler.sample(self.step, cfg.batch_size)
            loss, _, mu, user = self.forward(self.data.train, idx, train=True)
            extra = cfg.contrastive_coef * contrastive_loss(mu, user) if (mu is not None and cfg.contrastive_coef) else 0.0
            total += float(loss.detach().mean()) / cfg.grad_accum
            if cfg.grad_strategy == "sum":
                ((loss.mean() + extra) / cfg.grad_accum).backward()
            else:
                for u in user.unique().tolist():
                    per_user.setdefault(u, []).append(loss[user == u])
                if torch.is_tensor(extra):
                    per_user.setdefault(-1, []).append(extra.reshape(1))
            pairs += len(idx)
        if cfg.grad_strategy != "sum":
            self._combine_user_gradients(per_user)
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
        self.optimizer.step()
        self.end_step(total, pairs)
        return total

    def train_step_ranks(self) -> float:
        """train_step across ranks: each rank's share of every micro-batch, gradients averaged by DDP. Each rank's
        loss is its pairs' sum times world / the global batch, so the average is the global mean's gradient."""
        cfg, ranks = self.cfg, self.ranks
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        micro = [self.batch_indices()] if self.fused else [self.sampler.sample(self.step, cfg.batch_size)
                                                           for _ in range(cfg.grad_accum)]
        n_all = sum(len(idx) for idx in micro)
        mine = torch.zeros(2, device=self.device)  # [this rank's loss sum, its stop request]
        for k, idx in enumerate(micro):
            rows = ranks.shard(len(idx))
            # only the last micro-batch's backward all-reduces: the others accumulate locally
            with self.ddp.no_sync() if k < len(micro) - 1 else contextlib.nullcontext():
                loss = self.ddp(lambda idx=idx, rows=rows: self.forward(self.data.train, idx[rows], train=True,
                                                                        shard=(len(idx), rows))[0])
                (loss.sum() * ranks.world / n_all).backward()
            mine[0] += loss.detach().sum()
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
        self.optimizer.step()
        mine[1] = 1.0 if self._stop_requested else 0.0
        torch.distributed.all_reduce(mine)  # the global loss, and a stop asked of any rank stops all at this step
        self._stop_agreed = bool(mine[1].item() > 0)
        ranks.beat(self.step + 1)
        total = float(mine[0].item()) / n_all
        self.end_step(total, n_all)
        return total

    def _combine_user_gradients(self, per_user: dict[int, list[torch.Tensor]]) -> None:
        """One gradient per user's mean loss, combined by MGDA or PCGrad (torchjd)."""
        from torchjd.aggregation import MGDA, PCGrad
        from torchjd.autojac import backward, jac_to_grad

        extra = per_user.pop(-1, None)
        losses = [torch.cat(v).mean() for _, v in sorted(per_user.items())]
        if extra is not None:  # the contrastive term is shared: add it to every user's objective
            shared = torch.cat(extra).mean()
            losses = [loss + shared for loss in losses]
        if len(losses) == 1:
            losses[0].backward()
            return
        params = [p for p in self.params if p.requires_grad]
        backward(torch.stack(losses), inputs=params)
        jac_to_grad(params, MGDA() if self.cfg.grad_strategy == "mgda" else PCGrad())

    # ------------------------------------------------------------------ what the loop calls (core.training.member.Member)
    def request_stop(self, *_):
        self._stop_requested = True

    @property
    def stop_requested(self) -> bool:
        return self._stop_agreed if self.ranks is not None else self._stop_requested

    def start(self, show_progress: bool | str) -> bool:
        """Begin this session: resume from the run's checkpoint if it has one (returns whether it did), mark
        the run as training and open its progress."""
        self._t_start = time.perf_counter()
        resumed = self.try_resume()
        self.run.update_status(phase="training", steps=self.cfg.steps, resumed=resumed)
        self.progress = Progress(self.cfg.steps, unit="steps", stage="training", done=self.step, show=show_progress,
                                 status=status_writer(self.run))
        return resumed

    def wall_s(self) -> float:
        """Seconds this run has trained, over every session."""
        return self.wall_offset + (time.perf_counter() - self._t_start)

    def batch_indices(self) -> np.ndarray:
        """This step's training pairs, every micro-batch's in order (B x grad_accum,)."""
        return np.concatenate([self.sampler.sample(self.step, self.cfg.batch_size) for _ in range(self.cfg.grad_accum)])

    def noise(self, n: int, width: int) -> torch.Tensor:
        """(n, width) standard normal draws from this run's own generator (its z noise)."""
        return torch.randn((n, width), generator=self.z_gen, device=self.device)

    def attach_query_encoder(self, encoder) -> None:
        """A grid's LoRA group gives this run its adapters on the group's shared base model."""
        self.query_encoder = encoder

    def end_step(self, loss: float, pairs: int, stepped_elsewhere: bool = False) -> None:
        """Book an optimizer step taken on this run's parameters: the schedule, the counters, the mean loss.
        ``stepped_elsewhere``: a grid's stacked AdamW stepped them (so the scheduler does not warn)."""
        if stepped_elsewhere:
            self.optimizer._opt_called = True  # what optimizer.step() sets; torch's scheduler checks it
        self.scheduler.step()
        self.step += 1
        self.samples_seen += pairs
        self.loss_sum += loss
        self.loss_n += 1

    def _in_last_phase(self, step: int) -> bool:
        """Early stopping reads an adaptive sampler's evaluations from its last phase on: before it, some users
        have not been trained yet, so the validation loss says nothing about being done (the two-opposed
        lesson's vpl-adaptive run, read from the start, stopped at step 20 with its second user at 0.05)."""
        if not isinstance(self.sampler, AdaptiveSampler):
            return True
        return self.sampler.phase(max(0, step - 1)) == len(self.sampler.order) - 1

    @property
    def should_stop_early(self) -> bool:
        mine = self.stopper is not None and self.stopper.should_stop and self.step < self.cfg.steps
        if self.ranks is None or self.stopper is None:
            return mine
        return self.ranks.main_says(mine)  # rank 0 alone evaluates, so its stopper decides for all

    def evaluate(self, final: bool = False) -> dict | None:
        """EvaluationMixin.evaluate. Across ranks rank 0 alone evaluates (the others return None): it writes the
        record, and the others would only repeat it on the cores they share with it."""
        if self.ranks is None:
            return super().evaluate(final=final)
        if not self.ranks.main:
            return None
        with self.ranks.all_cores(self.cfg.query_encoder != "frozen"):
            return super().evaluate(final=final)

    def finish_early(self) -> dict | None:
        """Early stopping fired: put the best evaluation's weights back, evaluate them once more as the run's
        last record (with the people, like any run's last evaluation; the same figures as that evaluation's
        record, which is why it carries that step) and checkpoint them as the run's model."""
        stopper, stopped_at = self.stopper, self.step
        if self.ranks is not None and not self.ranks.main:  # rank 0 restores, evaluates and saves the best model
            self.stopped_early = {"at_step": stopped_at, "reason": "rank 0 stopped early"}
            return None
        self.restore_best()
        self.step = stopper.best_step
        try:
            record = self.evaluate(final=True)
        finally:
            self.step = stopped_at
        record.update(kept_best=True, stopped_at=stopped_at, loss=None)
        self.stopped_early = {"at_step": stopped_at, "best_step": stopper.best_step,
                              "best_val_loss": stopper.best, "reason": stopper.reason(stopped_at)}
        self.log(f"early stop: {stopper.reason(stopped_at)}")
        return self.record_eval(record)

    def fit(self, stop_after: int | None = None) -> list[dict]:
        """Train to cfg.steps (or stop after ``stop_after`` steps, for interruption tests): a grid of one."""
        from core.training.grid import Grid

        return Grid([self], log=self.log).fit(stop_after=stop_after)[0]

    def record_eval(self, record: dict | None) -> dict | None:
        """Keep an evaluation: metrics.jsonl, early stopping's best weights, a checkpoint, the log, callbacks.
        None (a rank other than 0, which does not evaluate): nothing to keep."""
        if record is None:
            return None
        record["wall_s"] = self.wall_s()
        if (self.stopper is not None and record.get("val_loss") is not None and not record.get("kept_best")
                and self._in_last_phase(record["step"])):
            if self.stopper.update(record["step"], record["val_loss"]):
                self.save_best()
            record["best_step"] = self.stopper.best_step
        self.run.append_metrics(record)
        if self.step > 0:
            self.save_checkpoint()
        accs = " ".join(f"u{u}={a:.3f}" for u, a in record["user_accuracy"].items())
        self.log(f"step {record['step']:>5} loss {record['loss'] if record['loss'] is not None else float('nan'):.4f} "
                 f"eval_acc {record['accuracy']:.3f} [{accs}]")
        if record.get("new_users_accuracy") is not None and record.get("all_pairs_accuracy") is not None:
            self.log(f"  all pairs (own users) {record['all_pairs_accuracy']:.3f}  "
                     f"people outside training {record['new_users_accuracy']:.3f}")
        for cb in self.callbacks["on_eval"]:
            cb(self, record)
        return record

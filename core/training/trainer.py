"""Train a reward model into a run directory (DESIGN §2, §6).

    python -m core.train --preset vpl-adaptive --run-dir checkpoints/demo [--seed 0] [--steps 200] [--dry-run]
    python -m core.train --config cfg.json --run-dir checkpoints/demo

The run directory is the only output: config.json, status.json, metrics.jsonl (one record per
evaluation), latents/step-N.npz, model.safetensors + train_state.pt (resume), log.txt. Rerunning
on a folder with a checkpoint resumes from it and reaches the same numbers as an uninterrupted run.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core.common.cli import cli_main
from core.common.progress import Progress, echo, status_writer
from core.common.runs import RunDir
from core.models.encoders import EmbeddingCache, TextEncoder, default_cache_root
from core.models.reward_models import (
    btl_loss,
    btl_loss_from_margin,
    contrastive_loss,
    distinct_demos,
    kl_to_standard_normal,
    model_from_config,
)
from core.models.stacked_lora import lora_targets  # noqa: F401 - core.serving.run_reward imports it from here
from core.training.checkpoints import CheckpointMixin
from core.training.config import (
    LESSONS,
    MANY_USERS,
    PRESETS,
    ConfigError,
    TrainConfig,
    build_config,
    load_config_file,
)
from core.training.dataset import PrefData, build, used_text_ids
from core.training.evaluation import EvaluationMixin
from core.training.grid import Cancelled
from core.training.references import shuffled_partners, user_groups
from core.training.samplers import AdaptiveSampler, UniformSampler
from core.training.shared import DATA_FIELDS, ENCODER_FIELDS, PEOPLE_FIELDS, TABLE_FIELDS, Embeddings, Shared
from core.training.stopping import EarlyStopping
from core.users.people import (
    PeopleSet,
    build_people_set,
    outside_people,
    trained_people,
)
from core.users.tastes import load_users  # noqa: F401 - also imported from here by study, reward and pages


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


# Pairs one forward may send through a trained (LoRA / full) query encoder on CPU. Measured with `personal`
# (segment features) and MiniLM at max_length 256, `--dry-run` peak RSS: batch 8 3.9 GB, batch 64 12.9 GB;
# batch 1024 was killed by the OOM killer at 22.8 GB on a 24 GB machine.
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
        self.device = resolve_device(cfg.device)
        check_fits_device(cfg, self.device)  # before anything is loaded: a clear error, not the OOM killer
        self.callbacks: dict[str, list[Callable]] = {"on_eval": [], "on_step": []}
        self.progress: Progress | None = None  # the training stage's, made by the loop (core.training.grid)
        self._stop_requested = False
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
            # flush float32 subnormals (below 1.2e-38, reached in the backward pass) to zero: x86 takes a slow
            # path for each, and the four-users lesson's personal run slowed from 13 s to 21 s per 50 steps by
            # step 600 alone, far more beside other runs; flushed, 13-14 s throughout (bench_flush_denormal.py)
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

    def forward(self, split, idx: np.ndarray, *, train: bool, latent: tuple | None = None):
        """Per-pair loss (B,), r_chosen - r_rejected (B,), mu (B, L) or None, user (B,).

        ``latent``: the pairs' (mu, logvar), each (B, L), when already computed (evaluation)."""
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
        z = self.model.latent(mu, logvar, train=train, generator=self.z_gen)
        zq = self._z_rows(ids)  # (2B, D) or None: the features z acts on
        # in training also the population term (the traditional objective at the users' centre) and the vertex
        # term (each user's own latent scores that user's pairs)
        pop_on, vert_on = train and self.cfg.population_coef > 0, train and self.cfg.vertex_coef > 0
        margin, pop, vert = self.model.training_margins(q, z, user, pop_on, vert_on, z_emb=zq)
        loss = btl_loss_from_margin(margin)
        if self.cfg.beta > 0:
            loss = loss + self.cfg.beta * kl_to_standard_normal(mu, logvar)
        if pop is not None:
            loss = loss + self.cfg.population_coef * btl_loss_from_margin(pop)
        if vert is not None:
            loss = loss + self.cfg.vertex_coef * btl_loss_from_margin(vert)
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
        cfg = self.cfg
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        per_user: dict[int, list[torch.Tensor]] = {}
        total = 0.0
        if self.fused:  # one forward over all micro-batches: the same mean loss, 1/grad_accum the launches
            idx = np.concatenate([self.sampler.sample(self.step, cfg.batch_size) for _ in range(cfg.grad_accum)])
            loss, _, _, _ = self.forward(self.data.train, idx, train=True)
            loss.mean().backward()
            total = float(loss.detach().mean())
            self.samples_seen += len(idx)
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
            self.samples_seen += len(idx)
        if cfg.grad_strategy != "sum":
            self._combine_user_gradients(per_user)
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.loss_sum += total
        self.loss_n += 1
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

    # ------------------------------------------------------------------ the loop
    def request_stop(self, *_):
        self._stop_requested = True

    def _in_last_phase(self, step: int) -> bool:
        """Early stopping reads an adaptive sampler's evaluations from its last phase on: before it, some users
        have not been trained yet, so the validation loss says nothing about being done (the two-opposed
        lesson's vpl-adaptive run, read from the start, stopped at step 20 with its second user at 0.05)."""
        if not isinstance(self.sampler, AdaptiveSampler):
            return True
        return self.sampler.phase(max(0, step - 1)) == len(self.sampler.order) - 1

    @property
    def should_stop_early(self) -> bool:
        return self.stopper is not None and self.stopper.should_stop and self.step < self.cfg.steps

    def finish_early(self) -> dict:
        """Early stopping fired: put the best evaluation's weights back, evaluate them once more as the run's
        last record (with the people, like any run's last evaluation; the same figures as that evaluation's
        record, which is why it carries that step) and checkpoint them as the run's model."""
        stopper, stopped_at = self.stopper, self.step
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
        return self._record(record)

    def fit(self, stop_after: int | None = None) -> list[dict]:
        """Train to cfg.steps (or stop after ``stop_after`` steps, for interruption tests): a grid of one."""
        from core.training.grid import Grid

        return Grid([self], log=self.log).fit(stop_after=stop_after)[0]

    def _record(self, record: dict) -> dict:
        record["wall_s"] = self.wall_offset + (time.perf_counter() - self._t_start)
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


def warm_cache(cfg: TrainConfig, log: Callable[[str], None] = print, show_progress: bool | str = False) -> float:
    """Build cfg's data and encode every text it reads with the frozen encoder (filling the on-disk
    cache), without training or writing a run. Returns the seconds it took."""
    import tempfile

    t0 = time.perf_counter()
    # a plain traditional run on the same data and encoder reads the same texts (a method's own fields, such
    # as personal's population term, would not validate on a btl config)
    keep = set(PEOPLE_FIELDS + ENCODER_FIELDS + ("cache_dir",))
    btl = build_config({k: v for k, v in cfg.model_dump().items() if k in keep} | {"method": "btl"})
    with tempfile.TemporaryDirectory() as tmp:
        Trainer(btl, RunDir(tmp).create(), log=log, show_progress=show_progress)
    return time.perf_counter() - t0


def _cancel_now():
    """SIGTERM before the trainers exist (still loading data or encoding): stop as a cancel."""
    raise Cancelled("cancelled during setup")


def train(cfg: TrainConfig, run_dir: str | Path, *, stop_after: int | None = None,
          log: Callable[[str], None] = print, show_progress: bool | str = False,
          on_step: Callable[[int, int], None] | None = None) -> list[dict]:
    """Train into run_dir (created if needed); returns this session's evaluation records.

    ``show_progress``: bars on a terminal, plain lines elsewhere (see Trainer); ``on_step(step, steps)``
    after every optimizer step (a caller's own progress, e.g. a comparison's). A grid of one."""
    return train_grid([cfg], [run_dir], stop_after=stop_after, log=log, show_progress=show_progress,
                      on_step=None if on_step is None else (lambda i, step, steps: on_step(step, steps)))[0]


def train_grid(cfgs: list[TrainConfig], run_dirs: list[str | Path], *, stop_after: int | None = None,
               log: Callable[[str], None] = print, show_progress: bool | str = False,
               on_step: Callable[[int, int, int], None] | None = None,
               summary: Callable[[str], None] | None = None) -> list[list[dict]]:
    """Train many runs in one process (core.training.grid), each into its own run directory; returns each run's
    evaluation records of this session. ``on_step(i, step, steps)`` after every optimizer step of run i.

    Every run dir gets its config, status and metrics as if trained alone; a member whose status.json asks
    for a cancel stops on its own (checkpointed, ``cancelled``); SIGTERM / SIGINT stop them all."""
    from core.training.grid import Grid

    if len(cfgs) != len(run_dirs) or not cfgs:
        raise ValueError("train_grid: give one run directory per config (and at least one)")
    runs = []
    for cfg, d in zip(cfgs, run_dirs, strict=True):
        run = RunDir(d).create()
        if run.config() not in (None, cfg.model_dump(mode="json")) and (run.path / "train_state.pt").exists():
            raise ConfigError(f"config: the run directory {run.path} holds a checkpoint of a different config; "
                              "use a new folder")
        runs.append(run)
    for cfg, run in zip(cfgs, runs, strict=True):
        run.write_config(cfg.model_dump(mode="json"))
        # a resumed run starts afresh: an old cancel request must not cancel it again
        run.mark_running(kind="train", method=cfg.preset or cfg.method, cancel_requested=None, stopped_early=None)
    trainers: list[Trainer] = []
    prev = {}

    def stop_all(*_):
        if not trainers:
            _cancel_now()
        for t in trainers:
            t.request_stop()

    def member_end(t: Trainer, how: str) -> None:
        snap = t.progress.close()
        if how == "cancelled":
            t.run.mark_final("cancelled", error="cancelled by the user", progress=snap)
        elif t.stopped_early is not None:  # learned before its last step: done, with the step it kept
            t.run.mark_final("succeeded", progress={**snap, "fraction": 1.0}, stopped_early=t.stopped_early)
        elif t.step >= t.cfg.steps:
            t.run.mark_final("succeeded", progress={**snap, "fraction": 1.0})
        else:
            t.run.mark_final("cancelled", error=f"stopped after step {t.step} (resumable)", progress=snap)

    try:
        if hasattr(signal, "SIGTERM"):
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    prev[sig] = signal.signal(sig, stop_all)
                except ValueError:  # not the main thread (e.g. inside a notebook worker)
                    pass
        shared = Shared()
        for i, (cfg, run) in enumerate(zip(cfgs, runs, strict=True)):
            member_log = log if len(cfgs) == 1 else (lambda m, name=run.path.name: log(f"[{name}] {m}"))
            t = Trainer(cfg, run, log=member_log, show_progress=show_progress if len(cfgs) == 1 else False,
                        shared=shared, adapters_later=True)
            if on_step is not None:
                t.callbacks["on_step"].append(lambda t, i=i: on_step(i, t.step, t.cfg.steps))
            trainers.append(t)
        return Grid(trainers, log=summary or log).fit(stop_after=stop_after, on_member_end=member_end)
    except Cancelled as err:
        for run in runs:
            run.mark_final("cancelled", error=str(err), if_state=("queued", "running"))
        log(f"cancelled: {err}")
        return [[] for _ in runs]
    except BaseException as err:
        for run in runs:
            run.mark_final("failed", error=f"{type(err).__name__}: {err}\n{traceback.format_exc()[-2000:]}",
                           if_state=("queued", "running"))
        raise
    finally:
        for t in trainers:
            if t.progress is not None:
                t.progress.close()  # a bar left open would garble the terminal
        for sig, handler in prev.items():
            signal.signal(sig, handler)


@cli_main  # a bad config, a missing file, a full embedding cache, an encoder not loadable offline: one
# "error: ..." line and exit status 2, no traceback (core.common.cli); status.json records the failure either way
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core.train", description="Train a reward model into a run directory.")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help=f"method preset: {', '.join(PRESETS)}")
    src.add_argument("--config", help="JSON config file (may name a preset and override fields)")
    src.add_argument("--lesson", nargs="?", const="two-opposed", choices=list(LESSONS),
                     help="one of the app's lessons (default two-opposed), as its traditional run")
    ap.add_argument("--run-dir", help="output folder (resumes if it holds a checkpoint); not with --warm-cache")
    ap.add_argument("--warm-cache", action="store_true",
                    help="only encode the config's texts into the embedding cache (scripts/setup.sh warms the lesson)")
    ap.add_argument("--seed", type=int, help="random seed (overrides the config)")
    ap.add_argument("--steps", type=int, help="optimizer steps (overrides the config)")
    ap.add_argument("--dry-run", action="store_true", help="tiny data and 2 steps, to check the pipeline end to end")
    args = ap.parse_args(argv)
    over = {"seed": args.seed, "steps": args.steps}
    if args.config:
        cfg = load_config_file(args.config, **over)
    elif args.lesson:
        cfg = build_config({"preset": "traditional", **LESSONS[args.lesson]}, **over)
    else:
        cfg = build_config({"preset": args.preset}, **over)
    if args.dry_run:
        cfg = build_config({**cfg.model_dump(), "corpus_prompts": 60, "steps": 2, "eval_every": 1,
                            "max_train_per_user": 40, "max_test_per_user": 20, "pool_size": 20})
    if args.warm_cache:
        if args.lesson:  # its personal run reads segments too; encoding them also caches the whole texts
            cfg = build_config({**cfg.model_dump(), "segment_pool": PRESETS["personal"]["segment_pool"]})
        secs = warm_cache(cfg, log=echo, show_progress="auto")
        print(f"embedding cache warm ({secs:.1f}s)")
        return 0
    if not args.run_dir:
        print("error: --run-dir is required (unless --warm-cache)", file=sys.stderr)
        return 2
    train(cfg, args.run_dir, log=echo, show_progress="auto")  # a failure is in status.json too, traceback and all
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Training configuration: one validated, documented record, and the study's method presets.

A config file may name a preset and override fields, e.g.
``{"preset": "vpl-adaptive", "seed": 1, "steps": 200}``. A bad value raises ``ConfigError`` whose
message starts with the field's name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# The study's methods on the offline corpus (CPU-sized). Frozen MiniLM heads learn faster than a
# fine-tuned GPT-2, so the presets raise the study's learning rate tenfold; every other optimizer
# setting is the study's (TrainConfig's defaults).
_CPU = {"lr": 1e-3, "steps": 400, "eval_every": 20}
PRESETS: dict[str, dict] = {
    "traditional": {**_CPU, "method": "btl"},
    "vpl": {**_CPU, "method": "vpl"},
    "vpl-adaptive": {**_CPU, "method": "vpl", "sampler": "adaptive"},
    "vpl-mgda": {**_CPU, "method": "vpl", "grad_strategy": "mgda"},
    "vpl-pcgrad": {**_CPU, "method": "vpl", "grad_strategy": "pcgrad"},
    "vpl-contrastive": {**_CPU, "method": "vpl", "contrastive_coef": 0.1},
    # PrefLens's own conditional model, right about people it never trained on; each choice was measured
    # (docs/results/personal-preset.md):
    # - z is the posterior mean, read by blending the training users' latents (user_encoder blend, z_mode mean);
    # - the reward is linear in z, its z term an MLP of the response (decoder linear, z_head mlp);
    # - trained on every pair a user strictly prefers (agreed_share 1), not the contested ones only;
    # - a population term and a centre prior, so an even taste is not read onto one trained user;
    # - a vertex term, so each user's own latent is that user's reward (and a blend of latents a blend);
    # - the blend grid over tastes, not users (a Dirichlet blend of 100 users is always near the centre);
    # - segment features; z on the frozen features, where the demonstrations are read (also with LoRA);
    # - batch 512, heads 128 and early stopping: the cheapest step that kept the figures (issue 32).
    "personal": {**_CPU, "method": "vpl", "z_mode": "mean", "contrastive_coef": 0.0, "z_features": "frozen",
                 "user_encoder": "blend", "decoder": "linear", "z_head": "mlp", "agreed_share": 1.0,
                 "population_coef": 0.5, "blend_centre_prior": 6.0, "batch_size": 512, "grad_accum": 1,
                 "lr": 6e-3, "vertex_coef": 0.5, "blend_space": "tastes", "segment_pool": True, "latent": 128,
                 "decoder_hidden": 128, "eval_every": 50, "early_stop_patience": 3, "val_share": 0.1},
}


# The one-click lessons (Train and Playground pages; `python -m core.train --lesson ... --warm-cache`). Each
# stops once its validation loss stops improving (docs/results/lessons-and-suite.md has their history).
# Early stopping reads vpl-adaptive's evaluations from its last phase on, so its 60 steps are reached
LESSON_TWO_OPPOSED = {"users": "two-opposed", "corpus_prompts": 400, "steps": 60, "eval_every": 5,
                      "early_stop_patience": 3, "val_share": 0.1}
# traditional, vpl and personal on one user per aspect, trained as one grid job
LESSON_FOUR_USERS = {"users": "four-one-hot", "corpus_prompts": 400, "steps": 1200, "eval_every": 25,
                     "early_stop_patience": 3, "val_share": 0.1}
LESSONS = {"two-opposed": LESSON_TWO_OPPOSED, "four-users": LESSON_FOUR_USERS}


# Above MANY_USERS users an unset max_test_per_user means AUTO_TEST_CAP test pairs a user (TrainConfig.test_cap)
MANY_USERS, AUTO_TEST_CAP = 8, 200


class ConfigError(ValueError):
    """A config that does not validate; the message names each bad field."""


def field_problems(err: ValidationError) -> str:
    """pydantic's errors as one line naming each bad field: 'steps: Input should be ... (got 0); ...'."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']} (got {e.get('input')!r})"
                     for e in err.errors())


class TrainConfig(BaseModel):
    """Everything a training run needs; saved as config.json in the run directory."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    preset: str | None = Field(None, description="Method preset the other fields override (see core.training.config.PRESETS).")
    method: Literal["btl", "vpl"] = Field("vpl", description="'btl': traditional user-agnostic reward model; 'vpl': VAE conditional reward model.")
    # users and data
    users: str | list[list[float]] = Field("two-opposed", description="User preset name (two-opposed, random, cluster) or a list of 4-number weight vectors.")
    user_seed: int = Field(0, ge=0, description="Seed of the Dirichlet draws for the random / cluster presets.")
    data: str = Field("offline", description="'offline' for the generated corpus, or an UltraFeedback file path / hub id.")
    corpus_prompts: int = Field(1500, ge=20, le=100_000, description="Questions in the offline corpus.")
    corpus_seed: int = Field(0, ge=0, description="Seed of the offline corpus.")
    signal: float = Field(1.0, ge=0.0, le=1.0, description="Offline corpus: share of text cues that follow the ratings.")
    rating_noise: float = Field(0.0, ge=0.0, le=1.0, description="Offline corpus: share of ratings replaced at random.")
    contested_only: bool = Field(True, description="Keep only pairs on which the users disagree (the study's filter). False: every pair each user strictly prefers.")
    agreed_share: float = Field(0.0, ge=0.0, le=1.0, description="With contested_only: also train on this share of each user's other strict pairs (those the users agree on, or on which another user ties), drawn by seed. 0 = the study's filter; 1 = every pair the user strictly prefers. The test pairs stay the contested ones, so `accuracy` is the study's figure on the same pairs for every method (all pairs: all_pairs_accuracy). Contested-only training with two users teaches 'the opposite of the other user', not a taste.")
    test_share: float = Field(0.2, gt=0.0, lt=1.0, description="Share of questions held out for evaluation.")
    pool_size: int = Field(100, ge=2, description="Demonstration pool per user (fixed by seed).")
    n_demos: int = Field(8, ge=1, le=64, description="Demonstrations given with each query.")
    max_train_per_user: int | None = Field(None, ge=1, description="Cap on training pairs per user (None = all).")
    max_test_per_user: int | None = Field(None, ge=1, description=f"Cap on test pairs per user (None = all with up to {MANY_USERS} users, {AUTO_TEST_CAP} a user beyond: a 100-user preset otherwise scores ~136k pairs, twice, at every evaluation).")
    # model
    encoder: str = Field("bundled-minilm", description="Hugging Face model id or local folder; 'bundled-minilm' is the offline default.")
    query_encoder: Literal["frozen", "lora", "full"] = Field("frozen", description="How the query (prompt+response) encoder trains: frozen (cached), LoRA adapters, or fully.")
    max_length: int = Field(256, ge=16, le=4096, description="Tokens per text before truncation.")
    segment_pool: bool = Field(False, description="A text's features: its pooled embedding beside the mean of its segments' (each line, split further at sentence ends, encoded on its own; core.models.encoders.text_segments), twice the encoder's width. Pooled whole, a long answer is one vector in which one sentence's marker (a hedge, a shout, an off-topic aside) is a small share; a sentence encoder keeps it in that sentence's own embedding. About doubles the tokens encoded (frozen: once, into the cache).")
    lora_r: int = Field(8, ge=1, description="LoRA rank (query_encoder='lora').")
    lora_alpha: int = Field(16, ge=1, description="LoRA scaling alpha (query_encoder='lora').")
    query_head: Literal["none", "linear"] = Field("none", description="'linear': a fresh Linear(D, D) on the pooled query embedding, trained along (the VPL reference code's sequence-classification head with D outputs); 'none': the pooled state itself.")
    z_mode: Literal["sample", "vpl", "mean"] = Field("sample", description="How z is formed. 'sample': z = mu + sigma * eps in training, mu at evaluation. 'mean': z = mu always (no sampling noise; with beta 0 the sampled noise only hides mu from the decoder). 'vpl': the VPL reference code's choice: mu and log-variance clamped to [-1, 1], the sample L2-normalized and scaled by sqrt(latent) in training, the raw (clamped) mu at evaluation.")
    pair_hidden: int = Field(0, ge=0, description="Pair-encoder hidden width (0 = encoder width / 2, Table 1's ratio).")
    pair_out: int = Field(0, ge=0, description="Pair-encoder output width (0 = auto).")
    latent: int = Field(0, ge=0, description="Latent z width (0 = auto).")
    decoder_hidden: int = Field(0, ge=0, description="Decoder hidden width (0 = auto).")
    pair_diff: bool = Field(False, description="Give the pair encoder e(chosen) - e(rejected) beside the two embeddings (the study: only the two), so a demonstration's direction of preference is one linear read away.")
    user_encoder: Literal["pairs", "differences", "mixture", "fit", "blend"] = Field("pairs", description="How the VPL model reads the user from the demonstrations. 'blend': the posterior mean over blends of the training users' latents (a fixed grid of the simplex over users, Dirichlet(1) prior), weighed by how well each blend's reward explains the demonstrations; reads people between the trained users with an uncertainty; needs decoder 'linear' or 'bilinear'. 'pairs': the study's: an MLP over [e(chosen), e(rejected)] per demonstration, self-attention across them, mean-pool. 'differences': an MLP over e(chosen) - e(rejected) per demonstration, mean-pool, an MLP (a DeepSets reader that sees only each demonstration's direction of preference). 'mixture': one learned latent per training user, mixed by how well each user's reward (the bilinear decoder's z term) explains the demonstrations; needs decoder 'bilinear' or 'linear'. 'fit': the z that best explains the demonstrations under the model's own BTL likelihood and a Gaussian prior (a few Newton steps, trained through), with a Laplace uncertainty; reads blends and people unlike any training user; needs decoder 'bilinear' (the MLP's own dependence on z is held at the prior mean) or 'linear' (exact). See core.models.reward_models.")
    fit_steps: int = Field(4, ge=1, le=20, description="Newton steps of the 'fit' user reader.")
    blend_centre_prior: float = Field(0.0, ge=0.0, le=20.0, description="'blend' reader: extra log prior mass on the even blend of the training users (the population point, see population_coef), so a person whose choices do not single out a blend is read there instead of being pushed towards one training taste. Applied when reading (evaluation, people, serving), not in training. 0 = the plain grid prior.")
    blend_space: Literal["users", "tastes"] = Field("users", description="'blend' reader: the grid of blends it reads a person on. 'users': each user, the even blend and Dirichlet(1) blends of all the users. 'tastes': each user, the even blend and Dirichlet(1) draws over the four aspects, each as the least-squares blend of users with that taste (core.models.reward_models.taste_grid): over 100 users a blend of all of them is always near the even blend, so the 'users' grid holds nothing between a user and the centre. The same grid for four one-hot users; 'users' where the users' tastes do not span the simplex (two users).")
    z_head: Literal["linear", "mlp"] = Field("linear", description="The map U from a response's features to the space z's term <U e, V z> is read in (decoders 'linear' and 'bilinear'). 'linear': U e, so each taste is a linear probe of the embedding. 'mlp': U e plus a two-layer MLP of e (GELU; core.models.decoders.ResidualMLP), so a taste can be a nonlinear function of the response while the reward stays linear in z (the blend and fit readers stay exact).")
    z_features: Literal["query", "frozen"] = Field("query", description="Which response features the user latent z acts on (decoders 'linear' and 'bilinear'). 'query': the query encoder's (the study's). 'frozen': the frozen encoder's, the same space the reader reads the demonstrations in, while the shared part of the reward uses the trained (LoRA) query encoder. The same thing for a frozen query encoder.")
    decoder: Literal["concat", "bilinear", "linear", "film", "hyper"] = Field("concat", description="How the VPL decoder joins the response embedding e and the user latent z. 'concat': the study's MLP([e, z]). 'bilinear': MLP([e, z]) + <U e, V z>. 'linear': MLP(e) + <U e, V z> (z only in the bilinear term, so a margin is linear in z). 'film': z scales and shifts the hidden features of e. 'hyper': z writes the weights of a reward head over features of e. See core.models.reward_models.")
    beta: float = Field(0.0, ge=0.0, description="Weight of the KL term (the study: 0 or tiny).")
    # optimization
    lr: float = Field(1e-4, gt=0.0, le=1.0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.001, ge=0.0, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0, description="Share of steps of linear warmup before the cosine decay.")
    batch_size: int = Field(4, ge=1, description="Pairs per micro-batch.")
    grad_accum: int = Field(8, ge=1, description="Micro-batches per optimizer step.")
    steps: int = Field(400, ge=1, description="Optimizer steps.")
    fused_accumulation: bool | None = Field(None, description="Run the grad_accum micro-batches as one forward (same mean loss, fewer kernel launches). None = auto: on for a trained query encoder on CUDA. Ignored with MGDA/PCGrad or a contrastive loss, which need the micro-batches apart.")
    max_grad_norm: float = Field(1.0, ge=0.0, description="Gradient clipping norm (0 = off).")
    sampler: Literal["uniform", "adaptive"] = Field("uniform", description="How batches draw users: uniform, or the study's adaptive 1:2:4 phases.")
    adaptive_order: list[int] | None = Field(None, description="Order in which users (or groups, see adaptive_unit) become 'training' (default: 0, 1, ...).")
    adaptive_unit: Literal["auto", "user", "group"] = Field("auto", description="What an adaptive phase trains: one 'user', or one 'group' of users (the preset's clusters; custom users with equal weights share a group). 'auto': user up to 8 users, group beyond.")
    adaptive_weights: tuple[float, float, float] = Field((1.0, 2.0, 4.0), description="Group weights A:B:C (to be trained : training : finished).")
    steps_per_phase: int | None = Field(None, ge=1, description="Steps per adaptive phase (default: steps / users).")
    grad_strategy: Literal["sum", "mgda", "pcgrad"] = Field("sum", description="How per-user losses combine into one update: plain sum, MGDA or PCGrad (torchjd).")
    contrastive_coef: float = Field(0.0, ge=0.0, description="Weight of the cosine contrastive loss on latent means (seed eq. 12).")
    population_coef: float = Field(0.0, ge=0.0, description="Weight of a population term: every training pair also scored at the even blend of the training users' latents (the centre the mixture and blend readers fall back on when a person's choices say little), under the BTL loss on its own user's label, i.e. the traditional model's objective at that one point. 0 = off. Needs user_encoder 'mixture' or 'blend'.")
    vertex_coef: float = Field(0.0, ge=0.0, description="Weight of a vertex term: every training pair also scored at its own training user's latent (the point the blend reader puts that user at), under the BTL loss, so each user's point is that user's own reward and a blend of points a blend of rewards. 0 = off. Needs user_encoder 'mixture' or 'blend'.")
    # stopping when learned
    early_stop_patience: int = Field(0, ge=0, description="Stop once the validation loss (val_share's held-out training questions; never the test questions) has not improved for this many evaluations in a row, and keep the best checkpoint: the run's model.safetensors and its last metrics record are the model of its best evaluation, and status.json's `stopped_early` says at which step it stopped, which step it kept and why. 0 = off: train all `steps` (the study's presets, where a fixed step count is part of the comparison).")
    early_stop_min_delta: float = Field(0.0, ge=0.0, description="An evaluation improves on the best only if it lowers the validation loss by more than this.")
    val_share: float = Field(0.0, ge=0.0, lt=1.0, description="Share of the training questions held out as the validation set that early stopping reads (their pairs are not trained on; the test questions are the same at every share). 0 = none.")
    # evaluation and bookkeeping
    eval_every: int = Field(20, ge=1, description="Evaluate, record metrics and latents, and checkpoint every N steps.")
    converge_threshold: float = Field(0.8, gt=0.0, lt=1.0, description="A run has converged once every user's accuracy stays at or above this.")
    people_every: int = Field(100, ge=0, description="Score people on all pairs of the test questions (all_pairs_accuracy for the training users, new_users_accuracy for people outside training: core.users.people) every N steps, and always at the last evaluation; 0 = only at the last.")
    people_readings: int = Field(3, ge=1, le=20, description="Readings (independent sets of n_demos of the person's own choices) each person is scored with; their accuracies are averaged.")
    probe_per_user: int = Field(48, ge=1, description="Test queries per user whose latent means are saved at each evaluation.")
    seed: int = Field(0, ge=0, description="Seed for splits, demonstrations, sampling and initialization.")
    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu' or 'cuda[:N]'.")
    cpu_threads: int = Field(0, ge=0, description="Torch CPU threads for training (0 = auto: 1 for frozen-encoder heads, whose tiny ops only lose to thread overhead).")
    cache_dir: str | None = Field(None, description="Embedding cache folder (default: ~/.cache/preflens/embeddings or $PREFLENS_CACHE).")

    @field_validator("users")
    @classmethod
    def _check_users(cls, v):
        from core.users.tastes import PRESETS as USER_PRESETS
        from core.users.tastes import validate_users

        if isinstance(v, str):
            if v not in USER_PRESETS:
                raise ValueError(f"unknown user preset {v!r}; choose one of {', '.join(USER_PRESETS)} or give weights")
            return v
        return validate_users(v).tolist()

    def test_cap(self, n_users: int) -> int | None:
        """The test pairs per user this run keeps (max_test_per_user, or the automatic cap for many users)."""
        if self.max_test_per_user is not None:
            return self.max_test_per_user
        return AUTO_TEST_CAP if n_users > MANY_USERS else None

    @model_validator(mode="after")
    def _check_combinations(self):
        if self.adaptive_order is not None and sorted(self.adaptive_order) != list(range(len(self.adaptive_order))):
            raise ValueError("adaptive_order must be a permutation of 0..n_users-1")
        if self.user_encoder in ("mixture", "blend") and self.decoder not in ("bilinear", "linear"):
            raise ValueError(f"user_encoder {self.user_encoder!r} scores demonstrations with the bilinear decoder's z term; "
                             f"set decoder to 'bilinear' or 'linear' (got {self.decoder!r})")
        if self.user_encoder == "fit" and self.decoder not in ("linear", "bilinear"):
            raise ValueError(f"user_encoder 'fit' solves for z through the decoder's bilinear term; "
                             f"set decoder to 'bilinear' or 'linear' (got {self.decoder!r})")
        if self.z_head != "linear" and self.decoder not in ("linear", "bilinear"):
            raise ValueError(f"z_head {self.z_head!r} needs decoder 'linear' or 'bilinear' (got {self.decoder!r})")
        if self.z_features == "frozen" and self.decoder not in ("linear", "bilinear"):
            raise ValueError(f"z_features 'frozen' needs decoder 'linear' or 'bilinear' (got {self.decoder!r})")
        if self.population_coef > 0 and (self.method != "vpl" or self.user_encoder not in ("mixture", "blend")):
            raise ValueError("population_coef: the population term lives at the centre of the training users' latents; "
                             f"it needs method 'vpl' with user_encoder 'mixture' or 'blend' (got {self.method!r}, "
                             f"{self.user_encoder!r})")
        if self.vertex_coef > 0 and (self.method != "vpl" or self.user_encoder not in ("mixture", "blend")):
            raise ValueError("vertex_coef: the vertex term scores each pair at its own user's latent; it needs method "
                             f"'vpl' with user_encoder 'mixture' or 'blend' (got {self.method!r}, {self.user_encoder!r})")
        if self.blend_space != "users" and (self.method != "vpl" or self.user_encoder != "blend"):
            raise ValueError(f"blend_space: the grid of the 'blend' reader; set user_encoder to 'blend' (got "
                             f"{self.user_encoder!r})")
        if self.blend_centre_prior > 0 and (self.method != "vpl" or self.user_encoder != "blend"):
            raise ValueError(f"blend_centre_prior: a prior of the 'blend' reader; set user_encoder to 'blend' (got "
                             f"{self.user_encoder!r})")
        if self.early_stop_patience > 0 and self.val_share <= 0:
            raise ValueError("early_stop_patience: early stopping reads a validation set; set val_share > 0 (e.g. 0.1) "
                             f"(got val_share={self.val_share})")
        if self.agreed_share > 0 and not self.contested_only:
            raise ValueError("agreed_share: only means something with contested_only=true "
                             "(contested_only=false already keeps every pair)")
        return self


def build_config(raw: dict | None = None, **overrides) -> TrainConfig:
    """Preset (if named) <- file/dict fields <- keyword overrides; validated."""
    merged: dict = {}
    raw = dict(raw or {})
    raw.update({k: v for k, v in overrides.items() if v is not None})
    name = raw.get("preset")
    if name is not None:
        if name not in PRESETS:
            raise ConfigError(f"preset: unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        merged.update(PRESETS[name])
    merged.update(raw)
    merged.pop("kind", None)  # the job system's tag
    try:
        return TrainConfig(**merged)
    except ValidationError as err:
        raise ConfigError(field_problems(err)) from None


def load_config_file(path: str | Path, **overrides) -> TrainConfig:
    try:
        raw = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"config: {path} is not JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config: {path} must hold a JSON object")
    return build_config(raw, **overrides)

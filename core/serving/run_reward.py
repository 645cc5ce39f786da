"""Use a trained run as a reward function: infer a user from a few choices, score any text, plug into TRL.

    rm = RunRewardModel.from_run("checkpoints/<run>")
    me = rm.infer_user([(prompt, chosen, rejected), ...])     # UserEstimate: latent, nearest users, weights
    rm.score(prompt, ["response A", "response B"], user=me)   # one reward per response
    rm.score(prompt, responses, user=0)                       # as the run's simulated user 0
    reward_fn = rm.as_reward_function(me)                     # TRL: reward_funcs=[reward_fn]

Texts are joined as the training data joins them (``Question: ...\\nAnswer: ...``) and embedded with the
run's own encoder through the same on-disk cache, so a text the run saw is never encoded again.

Shapes: demonstrations (K,) -> context embeddings (1, K, D) -> mu, logvar (1, L); responses (R,) ->
query embeddings (R, D) -> rewards (R,).
The command line over this (``python -m core.reward``) is core/reward.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from core.common.runs import RunDir
from core.data.table import ASPECTS, join_prompt_response

Demo = tuple[str, str, str]  # (prompt, chosen, rejected)


class RewardModelError(ValueError):
    """A run that cannot serve, or a request it cannot answer; the message starts with the culprit."""


@dataclass
class UserEstimate:
    """Where a set of demonstrations puts a user in the run's latent space."""

    mu: np.ndarray  # (L,) posterior mean: what the model conditions on
    logvar: np.ndarray  # (L,)
    nearest: list[dict]  # [{"user": i, "distance": d, "weights": [...]}], closest first
    weights: dict[str, float]  # estimated aspect weights (on the simplex)
    weights_std: dict[str, float]  # their uncertainty (posterior spread + the map's own error)
    n_demos: int = 0
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"mu": self.mu.tolist(), "logvar": self.logvar.tolist(), "nearest": self.nearest,
                "weights": self.weights, "weights_std": self.weights_std, "n_demos": self.n_demos}


def _clean(text, where: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise RewardModelError(f"{where}: empty text")
    return text


def _content(x) -> str:
    """TRL passes plain strings, or (conversational) lists of {'role', 'content'} messages."""
    if isinstance(x, str):
        return x
    if isinstance(x, list) and x and isinstance(x[-1], dict):
        return str(x[-1].get("content", ""))
    return str(x)


class RunRewardModel:
    """A finished run's reward model, ready to score texts for any user it can represent."""

    def __init__(self, run: RunDir, cfg, model, encoder, cache, query_encoder, probe, W, device):
        self.run, self.cfg, self.model = run, cfg, model
        self.encoder, self.cache, self.query_encoder = encoder, cache, query_encoder
        self.W = W  # (U, 4) the run's simulated users' weights
        self._probe = probe  # the last evaluation's probe latents {"mu": (n, L), "user": (n,)}, or None
        self.user_latents = None  # (U, L) mean latent of each simulated user's probe queries
        if probe is not None:
            mu, who = probe["mu"], probe["user"]
            self.user_latents = np.stack([mu[who == u].mean(0) if (who == u).any() else np.full(mu.shape[1], np.nan)
                                          for u in range(len(W))])
        self.device = device
        self.weight_map, self.weight_map_quality = self._fit_weight_map()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_run(cls, run_dir: str | Path, device: str = "auto") -> RunRewardModel:
        from safetensors.torch import load_file

        from core.models.embedding_store import EmbeddingCache, default_cache_root
        from core.models.encoders import TextEncoder
        from core.models.reward_models import model_from_config
        from core.training.config import ConfigError, TrainConfig
        from core.training.trainer import resolve_device
        from core.users.tastes import load_users

        run = RunDir(run_dir)
        if not run.path.is_dir() or run.config() is None:
            raise RewardModelError(f"run_dir: no training run at {run.path}")
        state = run.status().get("state")
        if state != "succeeded":
            raise RewardModelError(f"run_dir: run {run.run_id} is {state or 'unknown'!r}, not finished; "
                                   "use a run that succeeded")
        weights_path = run.path / "model.safetensors"
        if not weights_path.exists():
            raise RewardModelError(f"run_dir: {run.run_id} has no model.safetensors")
        try:
            cfg = TrainConfig(**{k: v for k, v in run.config().items() if k != "kind"})
        except Exception as err:  # noqa: BLE001 - an old or foreign config: say which run
            raise RewardModelError(f"run_dir: {run.run_id} does not hold a training config ({err})") from None
        dev = resolve_device(device if device != "auto" else cfg.device)
        encoder = TextEncoder.load(cfg.encoder, device=dev, max_length=cfg.max_length, segments=cfg.segment_pool)
        cache = EmbeddingCache(cfg.cache_dir or default_cache_root(), encoder)
        model = model_from_config(cfg, encoder.dim)
        weights = load_file(str(weights_path))
        model.load_state_dict({k[len("model."):]: v for k, v in weights.items() if k.startswith("model.")})
        model.to(dev).eval()
        query_encoder = None
        if cfg.query_encoder != "frozen":  # its own copy: the cache's encoder must stay the frozen one
            query_encoder = TextEncoder.load(cfg.encoder, device=dev, max_length=cfg.max_length,
                                             segments=cfg.segment_pool)
            if cfg.query_encoder == "lora":
                from peft import LoraConfig, get_peft_model

                from core.models.stacked_lora import lora_targets

                query_encoder.model = get_peft_model(query_encoder.model, LoraConfig(
                    r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=lora_targets(query_encoder.model),
                    lora_dropout=0.0))
            named = dict(query_encoder.model.named_parameters())
            with torch.no_grad():
                for k, v in weights.items():
                    if k.startswith("encoder."):
                        named[k[len("encoder."):]].copy_(v)
            query_encoder.model.eval()
        try:
            W = load_users(cfg)
        except ConfigError as err:
            raise RewardModelError(f"run_dir: {err}") from None
        probe = None
        if model.conditional:
            files = sorted(run.latents_dir.glob("step-*.npz"))
            if not files:
                raise RewardModelError(f"run_dir: {run.run_id} saved no latents; cannot place users")
            with np.load(files[-1]) as z:
                probe = {"mu": z["mu"], "user": z["user"]}
        return cls(run, cfg, model, encoder, cache, query_encoder, probe, W, dev)

    def table(self):
        """The run's preference table (the offline corpus or the UltraFeedback file it trained on)."""
        if getattr(self, "_table", None) is None:
            from core.training.trainer import load_table

            self._table = load_table(self.cfg)
        return self._table

    @property
    def probe(self) -> dict | None:
        """The run's last saved probe latents: {"mu": (n, L), "user": (n,)} (None for a BTL run)."""
        return self._probe

    @property
    def conditional(self) -> bool:
        return bool(self.model.conditional)

    @property
    def n_users(self) -> int:
        return len(self.W)

    # ------------------------------------------------------------------ the latent -> weights map
    def _fit_weight_map(self):
        """Ridge regression from the probe queries' latent means (one per query) to their user's weights.

        Quality on the run's own users is measured, not assumed: with 3 or more users it is the mean
        absolute weight error when each user is left out of the fit; with 2 users no user can be left
        out (the map is a line through them), so only the in-sample error is reported and an
        estimate means "how far along the line between the two users". Stored as
        ``weight_map_quality``.
        """
        if not self.conditional:
            return None, {"kind": "none", "note": "traditional model: no latent"}
        from sklearn.linear_model import Ridge

        z = self._probe
        X, users = z["mu"].astype(np.float64), z["user"].astype(int)
        Y = self.W[users]
        fit = Ridge(alpha=1.0).fit(X, Y)
        in_sample = float(np.abs(fit.predict(X) - Y).mean())
        resid = np.sqrt(((fit.predict(X) - Y) ** 2).mean(0))
        quality = {"kind": "in-sample", "mae": in_sample, "users": int(len(np.unique(users)))}
        if len(np.unique(users)) >= 3:
            errs = []
            for u in np.unique(users):
                m = users == u
                f = Ridge(alpha=1.0).fit(X[~m], Y[~m])
                errs.append(np.abs(_to_simplex(f.predict(X[m]).mean(0)) - self.W[u]).mean())
            quality.update(kind="leave-one-user-out", mae=float(np.mean(errs)), in_sample_mae=in_sample)
        return (fit, resid), quality

    # ------------------------------------------------------------------ embeddings
    def _frozen(self, texts: Sequence[str]) -> torch.Tensor:
        return torch.from_numpy(self.cache.get(list(texts))).to(self.device)  # (n, D)

    @torch.no_grad()
    def _queries(self, texts: Sequence[str]) -> torch.Tensor:
        if self.query_encoder is None:
            return self._frozen(texts)
        return self.query_encoder.forward(self.query_encoder.tokenize(list(texts)))

    # ------------------------------------------------------------------ users
    @torch.no_grad()
    def infer_user(self, demos: Sequence[Demo]) -> UserEstimate:
        """Place a user given their choices: each demo is (prompt, chosen, rejected)."""
        if not self.conditional:
            raise RewardModelError("infer_user: this run's model is traditional (BTL), not conditional; it has no "
                                   "user latent to infer. Use a vpl* or personal run.")
        demos = list(demos or [])
        if not demos:
            raise RewardModelError("demos: give at least one (prompt, chosen, rejected)")
        chosen, rejected = [], []
        for i, d in enumerate(demos):
            if not isinstance(d, (tuple, list)) or len(d) != 3:
                raise RewardModelError(f"demos[{i}]: expected (prompt, chosen, rejected)")
            p, c, r = (_clean(x, f"demos[{i}].{n}") for x, n in zip(d, ("prompt", "chosen", "rejected"), strict=True))
            chosen.append(join_prompt_response(p, c))
            rejected.append(join_prompt_response(p, r))
        emb = self._frozen(chosen + rejected)
        k = len(demos)
        mu, logvar = self.model.posterior(emb[:k][None], emb[k:][None])  # (1, L) each
        mu_np, lv_np = mu[0].float().cpu().numpy(), logvar[0].float().cpu().numpy()
        dist = np.linalg.norm(self.user_latents - mu_np[None], axis=1)
        order = [int(u) for u in np.argsort(np.nan_to_num(dist, nan=np.inf))]
        nearest = [{"user": u, "distance": float(dist[u]), "weights": [float(x) for x in self.W[u]]}
                   for u in order[:5]]
        fit, resid = self.weight_map
        rng = np.random.default_rng(0)
        samples = mu_np[None] + np.exp(0.5 * lv_np)[None] * rng.standard_normal((64, len(mu_np)))
        pred = np.stack([_to_simplex(p) for p in fit.predict(samples.astype(np.float64))])
        point = _to_simplex(fit.predict(mu_np[None].astype(np.float64))[0])
        spread = np.sqrt(pred.std(0) ** 2 + resid ** 2)
        return UserEstimate(mu=mu_np, logvar=lv_np, nearest=nearest,
                            weights={a: float(w) for a, w in zip(ASPECTS, point, strict=True)},
                            weights_std={a: float(s) for a, s in zip(ASPECTS, spread, strict=True)}, n_demos=k)

    def _z(self, user) -> torch.Tensor | None:
        if isinstance(user, UserEstimate):
            if not self.conditional:
                raise RewardModelError("user: a traditional (BTL) model ignores users; pass user=None")
            return torch.as_tensor(user.mu, dtype=torch.float32, device=self.device)
        if user is None:
            if self.conditional:
                raise RewardModelError("user: this model is conditional; pass a UserEstimate (infer_user) or a "
                                       f"simulated user's index 0..{self.n_users - 1}")
            return None
        if isinstance(user, (int, np.integer)) and not isinstance(user, bool):
            if not 0 <= int(user) < self.n_users:
                raise RewardModelError(f"user: index {int(user)} is out of range for a run with {self.n_users} users")
            if not self.conditional:
                return None  # every simulated user gets the same user-agnostic reward
            return torch.as_tensor(self.user_latents[int(user)], dtype=torch.float32, device=self.device)
        raise RewardModelError(f"user: expected a UserEstimate, an int or None, got {type(user).__name__}")

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def score(self, prompt: str, responses: Sequence[str], user=None) -> list[float]:
        """One reward per response, for ``user`` (UserEstimate, simulated user index, or None for BTL)."""
        z = self._z(user)
        prompt = _clean(prompt, "prompt")
        responses = list(responses or [])
        if not responses:
            raise RewardModelError("responses: give at least one response")
        texts = [join_prompt_response(prompt, _clean(r, f"responses[{i}]")) for i, r in enumerate(responses)]
        return self._score_texts(texts, z)

    @torch.no_grad()
    def _score_texts(self, texts: list[str], z: torch.Tensor | None) -> list[float]:
        q = self._queries(texts)  # (R, D)
        zz = None if z is None else z[None].expand(len(texts), -1)  # (R, L)
        if zz is not None and self.query_encoder is not None and getattr(self.cfg, "z_features", "query") == "frozen":
            # z acts on the frozen encoder's features (z_features 'frozen'), the shared part on the trained encoder's
            return [float(r) for r in self.model.reward(q, zz, z_emb=self._frozen(texts)).float().cpu()]
        return [float(r) for r in self.model.reward(q, zz).float().cpu()]

    def preference(self, prompt: str, a: str, b: str, user=None) -> float:
        """P(the user prefers a over b) = sigmoid(r(a) - r(b)) (BTL)."""
        ra, rb = self.score(prompt, [a, b], user=user)
        return float(1.0 / (1.0 + np.exp(-(ra - rb))))

    def as_reward_function(self, user=None) -> Callable[..., list[float]]:
        """A callable with TRL's ``reward_funcs`` signature: ``(prompts, completions, **kwargs) -> list[float]``."""
        z = self._z(user)

        def preflens_reward(prompts, completions, **kwargs) -> list[float]:
            if len(prompts) != len(completions):
                raise RewardModelError(f"completions: {len(completions)} for {len(prompts)} prompts")
            texts = [join_prompt_response(_content(p), _content(c)) for p, c in zip(prompts, completions, strict=True)]
            return self._score_texts(texts, z)

        return preflens_reward


def ask_pairs(table, W: np.ndarray, k: int, how: str = "infogain", seed: int = 0,
              exclude: Sequence[int] = ()) -> list[tuple[int, int, int]]:
    """k A/B questions (question, i, j) on which the run's users disagree, one pair per question.

    ``how='infogain'`` picks the questions greedily by information gain across the users (seed eq.
    5-7), so few answers tell users apart; ``'random'`` draws them. The pair on each question is its
    most contested one (users split most evenly). Demonstrations of this kind are what the model was
    trained on: a best-vs-worst pair on which everyone agrees says little about who is asking.
    """
    from core.users.tastes import contested_pairs, info_gain_select, preferred, user_scores

    if how not in ("infogain", "random"):
        raise RewardModelError(f"how: expected 'infogain' or 'random', got {how!r}")
    pairs, prefers = contested_pairs(table, np.asarray(W, dtype=float))  # (n, 3), (U, n)
    balance = np.abs(prefers.mean(0) - 0.5)  # 0 = an even split
    best: dict[int, int] = {}
    for row in np.argsort(balance, kind="stable"):
        best.setdefault(int(pairs[row, 0]), int(row))
    questions = [q for q in best if q not in set(int(x) for x in exclude)]
    if not questions:
        raise RewardModelError("users: these users never disagree on a question; nothing to ask")
    rng = np.random.default_rng(seed)
    if how == "random" or len(W) < 2:
        chosen = [int(q) for q in rng.permutation(questions)[:k]]
    else:
        top = preferred(user_scores(table, np.asarray(W, dtype=float)))
        chosen, _ = info_gain_select(top, min(k, len(questions)), candidates=sorted(questions))
        if len(chosen) < k:  # information is exhausted: fill with random contested questions
            rest = [q for q in rng.permutation(questions) if q not in set(chosen)]
            chosen = list(chosen) + [int(q) for q in rest[: k - len(chosen)]]
    return [tuple(int(x) for x in pairs[best[q]]) for q in chosen]


def _to_simplex(w: np.ndarray) -> np.ndarray:
    """Clip negatives and renormalize (an all-zero guess becomes uniform)."""
    w = np.clip(np.asarray(w, dtype=np.float64), 0.0, None)
    s = w.sum()
    return w / s if s > 0 else np.full_like(w, 1.0 / len(w))

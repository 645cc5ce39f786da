"""Reading many next-token probabilities in few forward passes: prompts packed as token tries.

The local judge's logit scoring asks, for every (persona, question, response), the probability of a
few short continuations (a cue such as "My grades.\\nTruthfulness:" followed by each grade). This
module turns all of that into as few forward passes as the batch size allows:

- each persona's prefix (its system message) is run once and its key-value cache reused;
- the prompts that follow one prefix are merged into a token *trie*: the two responses of a question
  share the request's tokens, and all cues share their common start ("My grades.\\n"), so every
  distinct token is computed once;
- a trie is packed into one row with a "tree" attention mask (a token sees the prefix and its own
  ancestors, nothing else) and positions counted by depth, so each path computes exactly what it would
  alone;
- rows of different personas go into the same forward pass: their cached prefixes are left-padded to
  a common length and the pad slots masked out;
- logits are computed only at the nodes whose next-token distribution is needed.

The maths is the same as running each prompt on its own (tests compare both within 1e-4); only the
order of floating-point sums differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MIN_SHARED = 8  # tokens two prompts must share to go into one row (e.g. the same request)
MAX_ITEMS_PER_ROW = 4


@dataclass
class TrieRow:
    """One packed row: a prefix (cached) and a trie of token ids after it."""

    prefix: tuple[int, ...]
    tokens: list[int] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)  # -1: attached straight after the prefix
    depth: list[int] = field(default_factory=list)
    n_items: int = 0
    first_body: tuple[int, ...] = ()
    _children: dict = field(default_factory=dict)

    def add(self, seq: list[int], start: int = -1) -> list[int]:
        """Insert ``seq`` below node ``start``; returns the node index of each of its tokens."""
        node, out = start, []
        for t in seq:
            idx = self._children.get((node, t))
            if idx is None:
                idx = len(self.tokens)
                self.tokens.append(int(t))
                self.parent.append(node)
                self.depth.append(0 if node < 0 else self.depth[node] + 1)
                self._children[(node, t)] = idx
            out.append(idx)
            node = idx
        return out

    def ancestors(self) -> np.ndarray:
        """(n, n) bool: [j, k] is True when node k is node j or one of its ancestors."""
        n = len(self.tokens)
        anc = np.zeros((n, n), dtype=bool)
        for j, p in enumerate(self.parent):  # parents always come before their children
            if p >= 0:
                anc[j] = anc[p]
            anc[j, j] = True
        return anc


def shared_len(a, b) -> int:
    n = min(len(a), len(b))
    k = 0
    while k < n and a[k] == b[k]:
        k += 1
    return k


def build_rows(items: list[tuple[tuple[int, ...], list[int]]]) -> tuple[list[TrieRow], list[tuple[int, int]]]:
    """Group (prefix ids, body ids) items into rows; returns (rows, (row index, body leaf node) per item).

    Items with the same prefix that follow one another and share at least ``MIN_SHARED`` leading body
    tokens (the two responses of one question) share a row, up to ``MAX_ITEMS_PER_ROW``.
    """
    rows: list[TrieRow] = []
    where: list[tuple[int, int]] = []
    current: dict[tuple[int, ...], int] = {}  # prefix -> index of its open row
    for prefix, body in items:
        if not body:
            raise ValueError("every prompt needs at least one token after its prefix")
        r = current.get(prefix)
        if r is None or rows[r].n_items >= MAX_ITEMS_PER_ROW or shared_len(rows[r].first_body, body) < MIN_SHARED:
            rows.append(TrieRow(prefix=prefix, first_body=tuple(body)))
            r = current[prefix] = len(rows) - 1
        row = rows[r]
        leaf = row.add(body)[-1]
        row.n_items += 1
        where.append((r, leaf))
    return rows, where


def batches(rows: list[TrieRow], max_items: int) -> list[list[int]]:
    """Row indices per forward pass: rows sorted by length (little padding), about ``max_items`` prompts each."""
    order = sorted(range(len(rows)), key=lambda i: (len(rows[i].tokens), len(rows[i].prefix)))
    out, cur, count = [], [], 0
    for i in order:
        if cur and count + rows[i].n_items > max(1, max_items):
            out.append(cur)
            cur, count = [], 0
        cur.append(i)
        count += rows[i].n_items
    if cur:
        out.append(cur)
    return out


def forward_rows(judge, rows: list[TrieRow], wanted: list[list[int]]):
    """Next-token log-probabilities at the ``wanted`` nodes of each row, in one forward pass.

    Returns a list (one per row) of float32 CPU tensors of shape (len(wanted[i]), vocab).
    """
    import torch
    import torch.nn.functional as F
    from transformers import DynamicCache

    model, dev = judge.model, judge.device
    n_rows = len(rows)
    p_max = max(len(r.prefix) for r in rows)
    t_max = max(len(r.tokens) for r in rows)
    cache = None
    if p_max:
        per_row = [judge._prefix_kv(list(r.prefix)) if r.prefix else None for r in rows]
        template = next(kv for kv in per_row if kv is not None)
        layers = []
        for li, (k0, v0) in enumerate(template):
            ks, vs = [], []
            for kv in per_row:
                if kv is None:
                    k = k0.new_zeros(k0.shape[:2] + (0,) + k0.shape[3:])
                    v = v0.new_zeros(v0.shape[:2] + (0,) + v0.shape[3:])
                else:
                    k, v = kv[li]
                pad = p_max - k.shape[2]
                ks.append(F.pad(k, (0, 0, pad, 0)) if pad else k)
                vs.append(F.pad(v, (0, 0, pad, 0)) if pad else v)
            layers.append((torch.cat(ks), torch.cat(vs)))
        cache = DynamicCache(ddp_cache_data=layers)
    ids = torch.full((n_rows, t_max), judge.pad_id, dtype=torch.long)
    pos = torch.zeros((n_rows, t_max), dtype=torch.long)
    mask = torch.zeros((n_rows, 1, t_max, p_max + t_max), dtype=torch.bool)
    for i, r in enumerate(rows):
        n, p = len(r.tokens), len(r.prefix)
        ids[i, :n] = torch.tensor(r.tokens)
        pos[i, :n] = p + torch.tensor(r.depth)
        pos[i, n:] = p
        mask[i, 0, :n, p_max - p:p_max] = True
        mask[i, 0, :n, p_max:p_max + n] = torch.from_numpy(r.ancestors())
        idx = torch.arange(n, t_max)
        mask[i, 0, idx, p_max + idx] = True  # pad queries see themselves only (no all-masked rows)
    attn = sliding_masks(model.config, mask, rows, p_max, dev) or mask.to(dev)
    with torch.inference_mode():
        out = model.get_decoder()(input_ids=ids.to(dev), attention_mask=attn, position_ids=pos.to(dev),
                                  cache=cache, use_cache=cache is not None)
        hidden = out.last_hidden_state
        flat_rows = torch.tensor([i for i, w in enumerate(wanted) for _ in w], dtype=torch.long)
        flat_nodes = torch.tensor([j for w in wanted for j in w], dtype=torch.long)
        logits = model.get_output_embeddings()(hidden[flat_rows.to(dev), flat_nodes.to(dev)]).float()
        cap = getattr(model.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        logp = torch.log_softmax(logits, -1).cpu()
    out_rows, start = [], 0
    for w in wanted:
        out_rows.append(logp[start:start + len(w)])
        start += len(w)
    return out_rows


def sliding_masks(config, mask, rows: list[TrieRow], p_max: int, dev):
    """For a model with sliding-window layers (Gemma 3: five of every six), the per-layer-type masks:
    the tree mask as is for full attention, and for sliding attention the tree mask less every key whose
    position is ``sliding_window`` or more behind the query's (transformers' rule, counted on positions, so
    packing and padding do not move the window). None for a model without such layers."""
    import torch

    window = getattr(config, "sliding_window", None)
    if not window or "sliding_attention" not in (getattr(config, "layer_types", None) or ()):
        return None
    n_rows, _, t_max, width = mask.shape
    key_pos = torch.full((n_rows, width), -(10 ** 9), dtype=torch.long)  # pad slots: masked anyway
    query_pos = torch.zeros((n_rows, t_max), dtype=torch.long)
    for i, r in enumerate(rows):
        n, p = len(r.tokens), len(r.prefix)
        key_pos[i, p_max - p:p_max] = torch.arange(p)
        key_pos[i, p_max:p_max + n] = p + torch.tensor(r.depth, dtype=torch.long)
        query_pos[i, :n] = p + torch.tensor(r.depth, dtype=torch.long)
    near = (query_pos[:, :, None] - key_pos[:, None, :]) < window
    diag = torch.zeros_like(mask)
    idx = torch.arange(t_max)
    diag[:, 0, idx, p_max + idx] = True  # every query keeps itself (no all-masked rows)
    return {"full_attention": mask.to(dev), "sliding_attention": ((mask & near[:, None]) | diag).to(dev)}

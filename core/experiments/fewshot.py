"""The few-shot prompting baseline (seed §3.3): show an instruction-tuned LM k of a user's own
choices, then ask which of two responses that user prefers.

Per user the k demonstrations are fixed (picked by information gain over the users' top choices,
or at random). Each query is asked in both orders (the preferred response as A, then
as B); the answer is read from the next-token probabilities of "A" versus "B" and the two orders
are averaged, which cancels a constant position bias:

    p(chosen) = ( P(A | chosen first) + P(B | chosen second) ) / 2,  correct if p(chosen) > 0.5

**The prompt is laid out so that a smaller k is a prefix of a larger k.** Demonstrations are picked
greedily (or from one seeded shuffle), so the k=2 set is the first two of the k=8 set; each one's
A/B placement is a coin drawn per user in selection order (not per k); and the block's header does
not name the count. The user message is

    Here are earlier choices of this person.          <- the same for every k >= 1
    --- Example 1 --- ... This person preferred: B    <- demonstrations in selection order
    --- Example 2 --- ...
    --- New question --- ... Which answer does this person prefer, A or B?

so the tokens of the k=2 prompt up to its query are a prefix of the k=8 prompt's. With a local
model, ``LogitChooser.user_probs`` runs each user's largest demonstration block once and answers
every k from its key-value cache (cut at that k's last demonstration), the two orders of a query
share the forward of their common start ("--- New question --- Question: ... Answer A:"), and
queries go in batches. It checks the prefix property on the token ids (not on the text) and
computes a prefix on its own where a tokenizer would merge across the boundary, so its answers
equal those of each full prompt run from scratch (tests: within 1e-4). ``reuse=False`` keeps the
plain path (one prefix per k, one query at a time) for comparison (bench/bench_fewshot.py).

With k=0 the message says that no choices were seen; that prompt is shared by every user.

Backends: a local transformers model (``core.personas.judges.LocalJudge``, GGUF included) reads
the probabilities from its logits. A judge without logits (an OpenAI-compatible endpoint) answers
in text; a reply that names exactly one of A/B counts as probability 1 for it, else 0.5.

Seams, if it grows: the prompt text (``demo_block``, ``query_block``), reading answers (``LogitChooser``,
``TextChooser``) and plans and records (``Plan``, ``prepare``, ``evaluate``).
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import numpy as np

from core.data.table import PreferenceTable
from core.users.tastes import info_gain_select, preferred, user_scores

SYSTEM = ("You predict which of two answers a particular person will prefer. You only know this person "
          "through the choices they made before. Reply with a single letter: A or B.")
K_VALUES = (0, 2, 4, 6, 8)
DEMO_HEADER = "Here are earlier choices of this person.\n"
NO_DEMOS = "You have not seen any of this person's choices yet; use your best judgement.\n\n"


@dataclass(frozen=True)
class Demo:
    prompt: str
    chosen: str
    rejected: str
    chosen_first: bool  # where the preferred answer is shown (fixed by seed, so labels are not all "A")


def _case(prompt: str, a: str, b: str) -> str:
    return f"Question: {prompt}\n\nAnswer A:\n{a}\n\nAnswer B:\n{b}"


def demo_block(demos: list[Demo]) -> str:
    """The demonstrations in selection order, each with the person's choice.

    The header does not name the count, so ``demo_block(d[:k])`` is a string prefix of
    ``demo_block(d)`` for every k >= 1 (what lets the k prompts share one key-value cache)."""
    if not demos:
        return NO_DEMOS
    parts = [DEMO_HEADER]
    for n, d in enumerate(demos, start=1):
        a, b = (d.chosen, d.rejected) if d.chosen_first else (d.rejected, d.chosen)
        parts.append(f"--- Example {n} ---\n{_case(d.prompt, a, b)}\n\nThis person preferred: "
                     f"{'A' if d.chosen_first else 'B'}\n")
    return "\n".join(parts) + "\n"


def query_block(prompt: str, first: str, second: str) -> str:
    return (f"--- New question ---\n{_case(prompt, first, second)}\n\n"
            "Which answer does this person prefer, A or B?")


def pick_demos(table: PreferenceTable, W: np.ndarray, user: int, k: int, *, how: str, questions: np.ndarray,
               seed: int, scores: np.ndarray | None = None) -> list[Demo]:
    """k demonstrations for ``user`` drawn from ``questions`` (training questions only).

    ``how='infogain'``: the questions that best tell all users apart (seed eq. 5-7, greedy), each
    shown as the user's best versus worst response. ``how='random'``: the first k of one seeded
    shuffle, same pairing. Either way the result for k is the first k of the result for any larger
    k, placements included (one coin per demonstration, drawn per user in selection order).
    ``scores`` (U, Q, C) may be passed in when picking for many users, to compute it once.
    """
    if k == 0:
        return []
    scores = user_scores(table, W) if scores is None else scores
    if how == "infogain":
        chosen_q, _ = info_gain_select(preferred(scores), k, candidates=questions)
    elif how == "random":
        chosen_q = np.random.default_rng(seed + 1000 * user).permutation(np.asarray(questions))[:k].tolist()
    else:
        raise ValueError(f"how must be 'infogain' or 'random', got {how!r}")
    coins = np.random.default_rng(seed + 17 * user).random(len(chosen_q)) < 0.5
    demos = []
    for q, first in zip(chosen_q, coins, strict=True):
        s = scores[user, q]
        best, worst = int(np.nanargmax(s)), int(np.nanargmin(s))
        demos.append(Demo(table.prompts[q], table.responses[q][best], table.responses[q][worst],
                          chosen_first=bool(first)))
    return demos


class LogitChooser:
    """P(next token is A) vs B after a chat prompt, read from a local model's logits.

    ``user_probs`` is the fast path (one key-value cache per user for every k, the two orders of a
    query sharing their common start, queries in batches); ``prob_a`` is the plain one (one prefix,
    then one query at a time), kept as the reference and for the bench.
    """

    def __init__(self, judge, *, batch_queries: int | None = None):
        self.judge = judge
        tok = judge.tokenizer
        self.ids = {c: [tok.encode(v, add_special_tokens=False)[-1] for v in (c, f" {c}")] for c in "AB"}
        on_cpu = str(getattr(judge.model, "device", "cpu")).startswith("cpu")
        # On a CPU a forward is compute-bound already at one query: padding to batch more only adds work.
        self.batch_queries = max(1, int(batch_queries or (1 if on_cpu else 16)))
        self._kv: dict[tuple[int, ...], list] = {}
        self.cuts: dict[int, tuple[int, int]] = {}  # last user_probs: k -> (tokens read from the shared cache, + own)

    def prompt_ids(self, prefix_text: str, query_text: str) -> list[int]:
        """Token ids of the whole chat prompt, tokenized in one piece (what the model would be given)."""
        tok = self.judge.tokenizer
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prefix_text + query_text}]
        full = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return tok.encode(full, add_special_tokens=False)

    def _threads(self):
        threads = getattr(self.judge, "_threads", None)
        return threads() if threads else contextlib.nullcontext()

    def _p_a(self, logits) -> np.ndarray:
        """(n, vocab) next-token logits -> P(A) / (P(A) + P(B)), (n,)."""
        import torch

        lp = torch.log_softmax(logits.float(), -1)
        a = torch.logsumexp(lp[:, self.ids["A"]], -1)
        b = torch.logsumexp(lp[:, self.ids["B"]], -1)
        return torch.sigmoid(a - b).cpu().numpy().astype(np.float64)

    # ---------------------------------------------------------------- the plain path
    def prob_a(self, prefix_text: str, queries: list[str]) -> np.ndarray:
        """P(A) / (P(A) + P(B)) for each query after the shared prefix, (n,): the tokens all queries'
        prompts share are run once, then each query on its own copy of that cache."""
        import torch

        model = self.judge.model
        rows = [self.prompt_ids(prefix_text, q) for q in queries]
        cut = _common_prefix(rows)
        out = np.zeros(len(queries))
        with torch.no_grad(), self._threads():
            pre = model(torch.tensor([rows[0][:cut]], device=model.device), use_cache=True).cache
            for i, ids in enumerate(rows):
                logits = model(torch.tensor([ids[cut:]], device=model.device), cache=copy.deepcopy(pre),
                               use_cache=True, logits_to_keep=1).logits[:, -1]
                out[i] = self._p_a(logits)[0]
        return out

    # ---------------------------------------------------------------- the fast path
    def _prefix_kv(self, ids: list[int]) -> list:
        """Per-layer (keys, values), each (1, heads, len(ids), dim), of a prefix; the last two are kept."""
        import torch

        key = tuple(ids)
        if key in self._kv:
            self._kv[key] = self._kv.pop(key)  # most recently used last
        else:
            while len(self._kv) >= 2:
                self._kv.pop(next(iter(self._kv)))
            model = self.judge.model
            out = model(torch.tensor([ids], device=model.device), use_cache=True)
            self._kv[key] = [(layer.keys, layer.values) for layer in out.cache.layers]
        return self._kv[key]

    def _extend(self, kv: list, cut: int, ids: list[int]) -> list:
        """The cache of ``kv``'s first ``cut`` positions followed by ``ids`` (one more forward)."""
        import torch
        from transformers import DynamicCache

        model = self.judge.model
        cache = DynamicCache(ddp_cache_data=[(k[:, :, :cut], v[:, :, :cut]) for k, v in kv])
        out = model(torch.tensor([ids], device=model.device), cache=cache, use_cache=True, logits_to_keep=1)
        return [(layer.keys, layer.values) for layer in out.cache.layers]

    def user_probs(self, demos: list[Demo], ks, queries: list[tuple[str, str, str]],
                   on_rows=None) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """For each k: P(A) with the chosen response shown first, and shown second, (n,) each.

        The prompt for k shows ``demos[:k]``; each prompt is tokenized whole. The tokens that all the
        largest k's prompts share are run once; every k reads as much of that cache as its own prompts
        match token for token (all of its demonstrations, given the layout above), runs what its own
        prompts still share once more, and then the queries. ``on_rows(n)`` after every n prompts.
        """
        import torch

        ks = sorted({int(k) for k in ks}, reverse=True)
        if not queries:
            return {k: (np.zeros(0), np.zeros(0)) for k in ks}
        if ks[0] > len(demos):
            raise ValueError(f"k={ks[0]} needs {ks[0]} demonstrations, got {len(demos)}")
        pairs = [(query_block(p, c, r), query_block(p, r, c)) for p, c, r in queries]
        rows = {k: [(self.prompt_ids(demo_block(demos[:k]), a), self.prompt_ids(demo_block(demos[:k]), b))
                    for a, b in pairs] for k in ks}
        out = {}
        with torch.inference_mode(), self._threads():
            flat = [ids for pair in rows[ks[0]] for ids in pair]
            base = flat[0][:_common_prefix(flat)]
            shared = self._prefix_kv(base)
            for k in ks:
                flat = [ids for pair in rows[k] for ids in pair]
                own = _common_prefix(flat)  # what all of k's prompts share (<= each one's length - 1)
                cut = min(own, _common_prefix([base, flat[0]], keep_last=False))
                kv = shared if own == cut else self._extend(shared, cut, flat[0][cut:own])
                self.cuts[k] = (cut, own - cut)
                first, second = np.zeros(len(pairs)), np.zeros(len(pairs))
                order = sorted(range(len(pairs)), key=lambda i: len(rows[k][i][0]) + len(rows[k][i][1]))
                for start in range(0, len(order), self.batch_queries):
                    idx = order[start:start + self.batch_queries]
                    p = self._pairs_after(kv, own, [(rows[k][i][0][own:], rows[k][i][1][own:]) for i in idx])
                    first[idx], second[idx] = p[0::2], p[1::2]
                    if on_rows:
                        on_rows(2 * len(idx))
                out[k] = (first, second)
        return out

    def _pairs_after(self, kv, cut: int, pairs: list[tuple[list[int], list[int]]]) -> np.ndarray:
        """P(A) of both rows of each pair after the first ``cut`` positions of ``kv``, (2 * n,).

        The two rows of a pair first share a forward of their common start (the stem); then all
        2n continuations go in one forward. Rows are left-padded; pads are masked out and positions
        count real tokens only, so a row's answer does not depend on what it was batched with.
        """
        import torch
        from transformers import DynamicCache

        model = self.judge.model
        dev = model.device
        pad = self.judge.tokenizer.pad_token_id
        pad = 0 if pad is None else pad
        n = len(pairs)
        stems, tails = [], []
        for a, b in pairs:
            common = _common_prefix([a, b])
            stems.append(a[:common])
            tails += [a[common:], b[common:]]
        ws, wt = max(len(s) for s in stems), max(len(t) for t in tails)
        mask = torch.zeros((2 * n, cut + ws + wt), dtype=torch.long)
        mask[:, :cut] = 1
        stem_ids = torch.full((n, ws), pad, dtype=torch.long)
        tail_ids = torch.full((2 * n, wt), pad, dtype=torch.long)
        for i, s in enumerate(stems):
            if s:
                stem_ids[i, ws - len(s):] = torch.tensor(s)
                mask[2 * i:2 * i + 2, cut + ws - len(s):cut + ws] = 1
        for j, t in enumerate(tails):
            tail_ids[j, wt - len(t):] = torch.tensor(t)
            mask[j, cut + ws + wt - len(t):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        layers = [(k[:, :, :cut], v[:, :, :cut]) for k, v in kv]
        if ws:
            cache = DynamicCache(ddp_cache_data=[(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in layers])
            m = mask[0::2, :cut + ws]
            cache = model(stem_ids.to(dev), attention_mask=m.to(dev), position_ids=pos[0::2, cut:cut + ws].to(dev),
                          cache=cache, use_cache=True, logits_to_keep=1).cache
            both = torch.arange(n, device=dev).repeat_interleave(2)
            layers = [(layer.keys.index_select(0, both), layer.values.index_select(0, both)) for layer in cache.layers]
        else:
            layers = [(k.expand(2 * n, -1, -1, -1), v.expand(2 * n, -1, -1, -1)) for k, v in layers]
        logits = model(tail_ids.to(dev), attention_mask=mask.to(dev), position_ids=pos[:, cut + ws:].to(dev),
                       cache=DynamicCache(ddp_cache_data=layers), use_cache=True, logits_to_keep=1).logits[:, -1]
        return self._p_a(logits)


def _common_prefix(rows: list[list[int]], *, keep_last: bool = True) -> int:
    """Length of the token prefix all ``rows`` share; with ``keep_last``, at most the shortest row's
    length - 1, so that every row keeps a token of its own to read the answer after."""
    n = min(len(r) for r in rows)
    limit = n - 1 if keep_last else n
    if limit <= 0:
        return 0
    first = np.asarray(rows[0][:limit])
    same = np.ones(limit, dtype=bool)
    for r in rows[1:]:
        same &= np.asarray(r[:limit]) == first
    return int(limit if same.all() else np.argmin(same))


class TextChooser:
    """For judges without logits: ask for the letter and read it from the reply."""

    def __init__(self, judge):
        self.judge = judge

    def prob_a(self, prefix_text: str, queries: list[str]) -> np.ndarray:
        out = []
        for q in queries:
            reply = self.judge.chat(SYSTEM, prefix_text + q, max_tokens=4).strip().upper()
            has_a, has_b = reply.startswith("A"), reply.startswith("B")
            out.append(1.0 if has_a and not has_b else 0.0 if has_b and not has_a else 0.5)
        return np.asarray(out)


def chooser_for(judge):
    return LogitChooser(judge) if getattr(judge, "supports_logits", False) else TextChooser(judge)


def user_accuracy(chooser, demos: list[Demo], queries: list[tuple[str, str, str]]) -> tuple[float, np.ndarray]:
    """(accuracy, p_chosen per query) for one user and all of ``demos``; queries are (prompt, chosen, rejected)."""
    k = len(demos)
    return _accuracy(*user_probs(chooser, demos, [k], queries, reuse=False)[k])


@dataclass
class Plan:
    """What one seed's few-shot evaluation asks: per user the test queries and the demonstrations
    (the largest k's; a smaller k shows the first k), and the uniform user's reference queries."""

    queries: list[list[tuple[str, str, str]]]
    demos: list[list[Demo]]
    reference: list[tuple[str, str, str]] | None
    ks: tuple[int, ...]

    def rows(self) -> int:
        """Prompts answered: both orders of every query for every k, plus the reference's (k=0)."""
        n = sum(len(q) for q in self.queries) * len(self.ks)
        return 2 * (n + len(self.reference or []))


def prepare(table: PreferenceTable, W: np.ndarray, ks=K_VALUES, *, seed: int = 0, how: str = "infogain",
            queries_per_user: int = 20, test_share: float = 0.2, contested_only: bool = True) -> Plan:
    """The test queries and demonstrations of one seed (no model needed; cheap)."""
    from core.training.dataset import build

    ks = tuple(int(k) for k in ks)
    data = build(table, W, seed=seed, test_share=test_share, contested_only=contested_only,
                 n_demos=1, pool_size=2, max_test_per_user=queries_per_user)
    test_q = set(data.test.question.tolist())
    train_q = np.array([q for q in range(len(table)) if q not in test_q])
    scores = user_scores(table, W)  # (U, Q, C), shared by every user's demonstration pick
    kmax = max(ks, default=0)
    demos = [pick_demos(table, W, u, kmax, how=how, questions=train_q, seed=seed, scores=scores)
             for u in range(len(W))]
    queries = [_queries(table, data.test, data.test.user == u) for u in range(len(W))]
    # reference: the uniform user with no demonstrations (today's user-agnostic reward model)
    try:
        uni = build(table, np.full((1, 4), 0.25), seed=seed, test_share=test_share, contested_only=False,
                    n_demos=1, pool_size=2, max_test_per_user=queries_per_user)
    except ValueError:  # the uniform user ties on (almost) everything: no reference line
        reference = None
    else:
        reference = _queries(table, uni.test, np.ones(len(uni.test), dtype=bool))
    return Plan(queries, demos, reference, ks)


def user_probs(chooser, demos: list[Demo], ks, queries: list[tuple[str, str, str]], *, reuse: bool = True,
               on_rows=None) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per k: P(A) with the chosen response first, and second. ``reuse=False``: one prefix per k and
    one query at a time (the plain path), also what a chooser without ``user_probs`` does."""
    if reuse and hasattr(chooser, "user_probs"):
        return chooser.user_probs(demos, ks, queries, on_rows=on_rows)
    out = {}
    for k in ks:
        if not queries:
            out[k] = (np.zeros(0), np.zeros(0))
            continue
        prefix = demo_block(demos[:k])
        first = chooser.prob_a(prefix, [query_block(p, c, r) for p, c, r in queries])  # chosen shown as A
        second = chooser.prob_a(prefix, [query_block(p, r, c) for p, c, r in queries])  # chosen shown as B
        if on_rows:
            on_rows(2 * len(queries))
        out[k] = (first, second)
    return out


def _accuracy(first: np.ndarray, second: np.ndarray) -> tuple[float, np.ndarray]:
    if len(first) == 0:
        return float("nan"), np.zeros(0)
    p_chosen = 0.5 * (first + (1.0 - second))
    return float((p_chosen > 0.5).mean()), p_chosen


def evaluate(table: PreferenceTable, W: np.ndarray, judge, ks=K_VALUES, *, seed: int = 0, how: str = "infogain",
             queries_per_user: int = 20, test_share: float = 0.2, contested_only: bool = True,
             groups: list[str] | None = None, log=print, reuse: bool = True, on_rows=None,
             plan: Plan | None = None, chooser=None) -> dict[int, dict]:
    """Accuracy per k: overall (mean over users), per user, per group; plus the uniform user's k=0 line.

    Every record also holds ``user_p_chosen`` ({user: [p per query]}). ``on_rows(n)`` is called as
    prompts are answered (``prepare(...).rows()`` of them in all); ``plan`` skips the preparation.
    """
    plan = plan or prepare(table, W, ks, seed=seed, how=how, queries_per_user=queries_per_user,
                           test_share=test_share, contested_only=contested_only)
    chooser = chooser or chooser_for(judge)
    probs = [user_probs(chooser, plan.demos[u], plan.ks, q, reuse=reuse, on_rows=on_rows)
             for u, q in enumerate(plan.queries)]
    ref = None
    if plan.reference is not None:
        ref = user_probs(chooser, [], [0], plan.reference, reuse=reuse, on_rows=on_rows)[0]
    return records(plan, probs, ref, groups=groups, log=log)


def records(plan: Plan, probs: list[dict], reference: tuple | None, *, groups: list[str] | None = None,
            log=print) -> dict[int, dict]:
    """One record per k from every user's ``user_probs`` answer and the reference's (k=0) one."""
    ref = None if reference is None else _accuracy(*reference)[0]
    results: dict[int, dict] = {}
    for k in plan.ks:
        per_user, p_user = {}, {}
        for u, queries in enumerate(plan.queries):
            acc, p = _accuracy(*probs[u][k])
            per_user[str(u)], p_user[str(u)] = acc, p.tolist()
            log(f"fewshot k={k} user {u}: accuracy {acc:.3f} on {len(queries)} queries")
        rec = {"k": k, "accuracy": float(np.nanmean(list(per_user.values()))), "user_accuracy": per_user}
        if groups:
            by = {}
            for u, g in enumerate(groups):
                by.setdefault(g, []).append(per_user[str(u)])
            rec["group_accuracy"] = {g: float(np.nanmean(v)) for g, v in by.items()}
        rec["uniform_k0_accuracy"] = ref
        rec["user_p_chosen"] = p_user
        results[k] = rec
    return results


def _queries(table: PreferenceTable, split, mask: np.ndarray) -> list[tuple[str, str, str]]:
    """(prompt, chosen response, rejected response) for the split's pairs under ``mask``."""
    C = table.n_completions

    def text(i):
        return table.responses[int(i) // C][int(i) % C]

    return [(table.prompts[q], text(c), text(r))
            for q, c, r in zip(split.question[mask], split.chosen[mask], split.rejected[mask], strict=True)]


def parse_methods(methods: list[str]) -> list[int]:
    """``fewshot-k0`` .. -> [0, ...]; ValueError naming the bad method."""
    ks = []
    for m in methods:
        try:
            k = int(m.removeprefix("fewshot-k"))
        except ValueError:
            raise ValueError(f"few-shot methods are named fewshot-k0 .. fewshot-k8, got {m!r}") from None
        if k < 0:
            raise ValueError(f"k must be >= 0, got {m!r}")
        ks.append(k)
    return ks

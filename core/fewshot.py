"""The few-shot prompting baseline (seed §3.3): show an instruction-tuned LM k of a user's own
choices, then ask which of two responses that user prefers.

Per user the k demonstrations are fixed (picked by information gain over the users' top choices,
or at random, DESIGN §4), so the prompt's demonstration part is shared by all of that user's
queries and its key-value cache is computed once. Each query is asked in both orders (the
preferred response as A, then as B); the answer is read from the next-token probabilities of
"A" versus "B" and the two orders are averaged, which cancels a constant position bias:

    p(chosen) = ( P(A | chosen first) + P(B | chosen second) ) / 2,  correct if p(chosen) > 0.5

Backends: a local transformers model (``core.personas.judges.LocalJudge``, GGUF included) reads
the probabilities from its logits. A judge without logits (an OpenAI-compatible endpoint) answers
in text; a reply that names exactly one of A/B counts as probability 1 for it, else 0.5.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass

import numpy as np

from .data.table import PreferenceTable
from .users import info_gain_select, preferred, user_scores

SYSTEM = ("You predict which of two answers a particular person will prefer. You only know this person "
          "through the choices they made before. Reply with a single letter: A or B.")
K_VALUES = (0, 2, 4, 6, 8)


@dataclass(frozen=True)
class Demo:
    prompt: str
    chosen: str
    rejected: str
    chosen_first: bool  # where the preferred answer is shown (fixed by seed, so labels are not all "A")


def _case(prompt: str, a: str, b: str) -> str:
    return f"Question: {prompt}\n\nAnswer A:\n{a}\n\nAnswer B:\n{b}"


def demo_block(demos: list[Demo]) -> str:
    """The demonstrations, in the given (stable) order, each with the person's choice."""
    if not demos:
        return "You have not seen any of this person's choices yet; use your best judgement.\n\n"
    parts = [f"Here are {len(demos)} earlier choices of this person.\n"]
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

    ``how='infogain'``: the questions that best tell all users apart (seed eq. 5-7), each shown as
    the user's best versus worst response. ``how='random'``: random questions, same pairing.
    ``scores`` (U, Q, C) may be passed in when picking for many users, to compute it once.
    """
    if k == 0:
        return []
    scores = user_scores(table, W) if scores is None else scores
    if how == "infogain":
        chosen_q, _ = info_gain_select(preferred(scores), k, candidates=questions)
    elif how == "random":
        chosen_q = np.random.default_rng(seed + 1000 * user).choice(questions, size=k, replace=False).tolist()
    else:
        raise ValueError(f"how must be 'infogain' or 'random', got {how!r}")
    rng = np.random.default_rng(seed + 17 * user + k)
    demos = []
    for q in chosen_q:
        s = scores[user, q]
        best, worst = int(np.nanargmax(s)), int(np.nanargmin(s))
        demos.append(Demo(table.prompts[q], table.responses[q][best], table.responses[q][worst],
                          chosen_first=bool(rng.random() < 0.5)))
    return demos


class LogitChooser:
    """P(next token is A) vs B after a chat prompt, with the demonstration prefix cached per user."""

    def __init__(self, judge):
        self.judge = judge
        tok = judge.tokenizer
        self.ids = {c: [tok.encode(v, add_special_tokens=False)[-1] for v in (c, f" {c}")] for c in "AB"}

    def _prompt_ids(self, prefix_text: str, query_text: str) -> tuple[list[int], list[int]]:
        tok = self.judge.tokenizer
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prefix_text + query_text}]
        full = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        cut = full.index(query_text)  # the shared part ends where this query begins
        return (tok.encode(full[:cut], add_special_tokens=False), tok.encode(full[cut:], add_special_tokens=False))

    def prob_a(self, prefix_text: str, queries: list[str]) -> np.ndarray:
        """P(A) / (P(A) + P(B)) for each query after the shared prefix, (n,)."""
        import torch

        model = self.judge.model
        out = np.zeros(len(queries))
        pre_ids, _ = self._prompt_ids(prefix_text, queries[0])
        threads = getattr(self.judge, "_threads", None)
        with torch.no_grad(), (threads() if threads else contextlib.nullcontext()):
            pre = model(torch.tensor([pre_ids], device=model.device), use_cache=True).cache
            for i, q in enumerate(queries):
                p_ids, q_ids = self._prompt_ids(prefix_text, q)
                if p_ids != pre_ids:  # template did not split cleanly: run the whole prompt
                    logits = model(torch.tensor([p_ids + q_ids], device=model.device), logits_to_keep=1).logits[0, -1]
                else:  # reuse the demonstrations' keys and values; only the query is computed
                    logits = model(torch.tensor([q_ids], device=model.device), cache=copy.deepcopy(pre),
                                   use_cache=True, logits_to_keep=1).logits[0, -1]
                lp = torch.log_softmax(logits.float(), -1)
                a = torch.logsumexp(lp[self.ids["A"]], 0)
                b = torch.logsumexp(lp[self.ids["B"]], 0)
                out[i] = float(torch.sigmoid(a - b))
        return out


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
    """(accuracy, p_chosen per query) for one user; queries are (prompt, chosen, rejected)."""
    if not queries:
        return float("nan"), np.zeros(0)
    prefix = demo_block(demos)
    first = chooser.prob_a(prefix, [query_block(p, c, r) for p, c, r in queries])  # chosen shown as A
    second = chooser.prob_a(prefix, [query_block(p, r, c) for p, c, r in queries])  # chosen shown as B
    p_chosen = 0.5 * (first + (1.0 - second))
    return float((p_chosen > 0.5).mean()), p_chosen


def evaluate(table: PreferenceTable, W: np.ndarray, judge, ks=K_VALUES, *, seed: int = 0, how: str = "infogain",
             queries_per_user: int = 20, test_share: float = 0.2, contested_only: bool = True,
             groups: list[str] | None = None, log=print) -> dict[int, dict]:
    """Accuracy per k: overall (mean over users), per user, per group; plus the uniform user's k=0 line."""
    from .dataset import build

    data = build(table, W, seed=seed, test_share=test_share, contested_only=contested_only,
                 n_demos=1, pool_size=2, max_test_per_user=queries_per_user)
    test_q = set(data.test.question.tolist())
    train_q = np.array([q for q in range(len(table)) if q not in test_q])
    chooser = chooser_for(judge)
    scores = user_scores(table, W)  # (U, Q, C), shared by every user's demonstration pick
    queries_by_user = [_queries(table, data.test, data.test.user == u) for u in range(len(W))]
    results: dict[int, dict] = {}
    for k in ks:
        per_user = {}
        for u, queries in enumerate(queries_by_user):
            demos = pick_demos(table, W, u, k, how=how, questions=train_q, seed=seed, scores=scores)
            acc, _ = user_accuracy(chooser, demos, queries)
            per_user[str(u)] = acc
            log(f"fewshot k={k} user {u}: accuracy {acc:.3f} on {len(queries)} queries")
        rec = {"k": k, "accuracy": float(np.nanmean(list(per_user.values()))), "user_accuracy": per_user}
        if groups:
            by = {}
            for u, g in enumerate(groups):
                by.setdefault(g, []).append(per_user[str(u)])
            rec["group_accuracy"] = {g: float(np.nanmean(v)) for g, v in by.items()}
        results[k] = rec
    # reference: the uniform user with no demonstrations (today's user-agnostic reward model)
    try:
        uni = build(table, np.full((1, 4), 0.25), seed=seed, test_share=test_share, contested_only=False,
                    n_demos=1, pool_size=2, max_test_per_user=queries_per_user)
    except ValueError:  # the uniform user ties on (almost) everything: no reference line
        ref = None
    else:
        ref, _ = user_accuracy(chooser, [], _queries(table, uni.test, np.ones(len(uni.test), dtype=bool)))
    for rec in results.values():
        rec["uniform_k0_accuracy"] = ref
    return results


def _queries(table: PreferenceTable, split, mask: np.ndarray) -> list[tuple[str, str, str]]:
    """(prompt, chosen response, rejected response) for the split's pairs under ``mask``."""
    C = table.n_completions

    def text(i):
        return table.responses[int(i) // C][int(i) % C]

    return [(table.prompts[q], text(c), text(r))
            for q, c, r in zip(split.question[mask], split.chosen[mask], split.rejected[mask], strict=True)]


def run_methods(methods: list[str], seeds: list[int], out, overrides: dict | None = None, *,
                judge_spec: str = "default", how: str = "infogain", queries_per_user: int = 20, log=print) -> list:
    """Run ``fewshot-kN`` methods into out/runs/<method>-s<seed>/ (ordinary run dirs, one metrics record)."""
    from pathlib import Path

    from .config import TrainConfig, build_config
    from .personas.judges import make_judge
    from .runs import RunDir, now_iso
    from .train import load_table, load_users

    ks = []
    for m in methods:
        try:
            k = int(m.removeprefix("fewshot-k"))
        except ValueError:
            raise ValueError(f"few-shot methods are named fewshot-k0 .. fewshot-k8, got {m!r}") from None
        if k < 0:
            raise ValueError(f"k must be >= 0, got {m!r}")
        ks.append(k)
    judge = make_judge(judge_spec)
    out = Path(out)
    dirs, data = [], {}  # data: (table, users) per config-without-seed; the run seed changes neither
    for seed in seeds:
        base = {k: v for k, v in (overrides or {}).items() if k in TrainConfig.model_fields}
        cfg = build_config({**base, "seed": seed})
        key = cfg.model_dump_json(exclude={"seed"})
        if key not in data:
            data[key] = (load_table(cfg), load_users(cfg))
        table, W = data[key]
        groups = None
        if isinstance(cfg.users, str):
            from .users import preset_groups

            groups = preset_groups(cfg.users)
        t0 = time.perf_counter()
        res = evaluate(table, W, judge, ks, seed=seed, how=how, queries_per_user=queries_per_user,
                       test_share=cfg.test_share, contested_only=cfg.contested_only, groups=groups, log=log)
        wall = time.perf_counter() - t0
        for k in ks:
            run = RunDir(out / "runs" / f"fewshot-k{k}-s{seed}").create()
            run.write_config({"kind": "fewshot", "preset": f"fewshot-k{k}", "method": "fewshot", "k": k,
                              "seed": seed, "judge": getattr(judge, "name", judge_spec), "how": how,
                              "queries_per_user": queries_per_user, "users": cfg.users,
                              "converge_threshold": cfg.converge_threshold})
            run.metrics_path.unlink(missing_ok=True)
            run.append_metrics({"step": 0, "epoch": 0.0, **res[k], "wall_s": wall / len(ks)})
            run.update_status(state="succeeded", kind="fewshot", started=now_iso(), ended=now_iso(),
                              progress={"done": 1, "total": 1, "fraction": 1.0})
            dirs.append(run.path)
    return dirs

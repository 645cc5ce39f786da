"""Running a persona simulation: items, the two query modes, incremental results and resume.

An *item* is (persona, question). Each question contributes one pair of its responses: the one the
dataset rates best on average (the dataset's preferred) and the one it rates worst; a seeded coin
decides which is shown first (the "base order"). Results go to ``results.jsonl``, one line per item,
flushed as soon as the item is scored; a restarted run skips items already there.

Choices are recorded in base-order terms: ``first`` / ``second`` (the response shown first or
second in the base order), ``inconsistent`` (pairwise: the two orders disagree), ``tie`` (scoring:
equal totals) and ``invalid`` (unparseable). ``preferred`` says which of first/second the dataset
prefers, so "chose the dataset's preferred" is ``choice == preferred``.

Each record's ``read_from`` says where its choice came from: ``logits`` (a local model's next-token
probabilities), ``logprobs`` (an endpoint's top_logprobs) or ``text`` (parsed from generated text,
including the fallback when an endpoint sent no logprobs); ``run_simulation`` returns the tally.
With the logits method, items of several personas go to the judge together (``rating_probs_many``)
so that a local judge can batch across personas.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.personas import prompts
from core.personas.parse import parse_choice, parse_scores
from core.personas.stories import Story

RESULTS_FILE = "results.jsonl"


@dataclass(frozen=True)
class Question:
    index: int
    qid: str
    prompt: str
    first: str
    second: str
    preferred: str  # "first" | "second"


def pick_questions(table, n_questions: int, seed: int) -> list[Question]:
    """``n_questions`` questions with their (best, worst) pair in a seeded presentation order."""
    rng = np.random.default_rng(seed)
    n = min(int(n_questions), len(table))
    chosen = np.sort(rng.choice(len(table), size=n, replace=False))
    out = []
    for q in chosen:
        r = table.ratings[q]
        valid = (~np.isnan(r)).sum(1)
        means = np.where(valid > 0, np.nansum(r, 1) / np.maximum(valid, 1), -np.inf)
        best, worst = int(np.argmax(means)), int(np.argmin(means))
        if best == worst:
            worst = (best + 1) % table.n_completions
        swap = bool(rng.integers(2))
        first, second = (worst, best) if swap else (best, worst)
        out.append(Question(index=int(q), qid=str(table.qids[q]), prompt=table.prompts[q],
                            first=table.responses[q][first], second=table.responses[q][second],
                            preferred="second" if swap else "first"))
    return out


def item_key(user: int, qid: str) -> str:
    return f"{user}::{qid}"


def done_keys(run_dir: str | Path) -> set[str]:
    from core.common.runs import read_jsonl

    records, _ = read_jsonl(Path(run_dir) / RESULTS_FILE)
    return {r["key"] for r in records if "key" in r}


def combine_pairwise(ans_ab: str | None, ans_ba: str | None) -> str:
    """Base-order choice from the answer in base order (A=first) and in swapped order (A=second)."""
    if ans_ab is None or ans_ba is None:
        return "invalid"
    pick_ab = "first" if ans_ab == "A" else "second"
    pick_ba = "second" if ans_ba == "A" else "first"
    return pick_ab if pick_ab == pick_ba else "inconsistent"


def compare_totals(a: float | None, b: float | None, tol: float = 1e-9) -> str:
    if a is None or b is None or np.isnan(a) or np.isnan(b):
        return "invalid"
    if abs(a - b) <= tol:
        return "tie"
    return "first" if a > b else "second"


def _many(judge, name: str, pairs: list[tuple[str, str]], *args, **kwargs):
    """judge.<name>_many(pairs, ...) where the judge has it, else one call per run of equal prefixes."""
    many = getattr(judge, name + "_many", None)
    if many is not None:
        return many(pairs, *args, **kwargs)
    one = getattr(judge, name, None)
    if one is None:
        return None
    parts, start = [], 0
    for i in range(1, len(pairs) + 1):
        if i == len(pairs) or pairs[i][0] != pairs[start][0]:
            res = one(pairs[start][0], [s for _, s in pairs[start:i]], *args, **kwargs)
            if res is None:
                return None
            parts.append(res)
            start = i
    first = parts[0]
    return type(first)(**{**first.__dict__, "probs": np.concatenate([r.probs for r in parts]),
                          "mass": np.concatenate([r.mass for r in parts])})


def _generate(judge, pairs: list[tuple[str, str]], max_new_tokens: int) -> list[str]:
    """Generated replies for (prefix, suffix) pairs, one judge call per run of equal prefixes."""
    texts, start = [], 0
    for i in range(1, len(pairs) + 1):
        if i == len(pairs) or pairs[i][0] != pairs[start][0]:
            texts += judge.generate(pairs[start][0], [s for _, s in pairs[start:i]], max_new_tokens)
            start = i
    return texts


def score_pairwise_items(judge, items: list[tuple[Story, Question]], max_new_tokens: int,
                         method: str = "generate") -> list[dict]:
    """A/B in both orders per (story, question). ``method``: generate (parse the letters), logits (P(A) vs
    P(B) right after "[[", from logits or an endpoint's logprobs; text when those are missing) or both."""
    base = [(prompts.pairwise_prefix(st), prompts.pairwise_suffix(q.prompt, q.first, q.second)) for st, q in items]
    swap = [(prompts.pairwise_prefix(st), prompts.pairwise_suffix(q.prompt, q.second, q.first)) for st, q in items]
    n = len(items)
    out = [{} for _ in items]
    res = None
    if method in ("logits", "both"):
        res = _many(judge, "choice_probs", base + swap, ("A", "B"), prefill=prompts.PAIRWISE_PREFILL)
        if res is not None:
            p_a = res.probs[:, 0]
            for i in range(n):
                pa_base, pa_swap = float(p_a[i]), float(p_a[n + i])
                ans = [None if np.isnan(x) else ("A" if x > 0.5 else "B" if x < 0.5 else None) for x in (pa_base, pa_swap)]
                # P(first is preferred): "A" in the base order, "B" in the swapped one, averaged (cancels position bias)
                out[i].update(ab_probs=[round(pa_base, 4), round(pa_swap, 4)],
                              ab_mass=[round(float(res.mass[i]), 4), round(float(res.mass[n + i]), 4)],
                              p_first=round(0.5 * (pa_base + 1.0 - pa_swap), 4), logit_answers=ans,
                              logit_choice=combine_pairwise(*ans), read_from=res.source)
    if method in ("generate", "both") or res is None:
        texts = _generate(judge, base + swap, max_new_tokens)
        for i in range(n):
            a, b = parse_choice(texts[i]), parse_choice(texts[n + i])
            # answers are positional (A = shown first in that order): position bias reads straight off them
            out[i].update(raw=[texts[i], texts[n + i]], answers=[a, b], gen_choice=combine_pairwise(a, b))
    for o in out:
        o["choice"] = o.get("logit_choice", o.get("gen_choice", "invalid"))
        o.setdefault("read_from", "text")
    return out


def score_pairwise(judge, story: Story, questions: list[Question], max_new_tokens: int,
                   method: str = "generate") -> list[dict]:
    return score_pairwise_items(judge, [(story, q) for q in questions], max_new_tokens, method)


def score_scoring_items(judge, items: list[tuple[Story, Question]], max_new_tokens: int, method: str) -> list[dict]:
    """Grades for both responses of each (story, question): parsed from text, read from next-token
    probabilities (logits or an endpoint's logprobs; text when those are missing), or both."""
    pairs = [(prompts.scoring_prefix(st), prompts.scoring_suffix(q.prompt, r)) for st, q in items for r in (q.first, q.second)]
    out = [{} for _ in items]
    res = None
    if method in ("logits", "both"):
        res = _many(judge, "rating_probs", pairs, [prompts.logit_cue(d) for d in prompts.DIMENSIONS])
        if res is not None:
            exp, mass = res.expected, res.mass
            for i in range(len(items)):
                e1, e2 = exp[2 * i], exp[2 * i + 1]
                out[i].update(logit_scores=[np.round(e1, 4).tolist(), np.round(e2, 4).tolist()],
                              logit_mass=[np.round(mass[2 * i], 4).tolist(), np.round(mass[2 * i + 1], 4).tolist()],
                              logit_choice=compare_totals(float(e1.sum()), float(e2.sum()), tol=1e-6),
                              read_from=res.source)
    if method in ("generate", "both") or res is None:
        texts = _generate(judge, pairs, max_new_tokens)
        for i in range(len(items)):
            s1, s2 = parse_scores(texts[2 * i]), parse_scores(texts[2 * i + 1])
            out[i].update(raw=[texts[2 * i], texts[2 * i + 1]], gen_scores=[s1, s2],
                          gen_choice=compare_totals(sum(s1) if s1 else None, sum(s2) if s2 else None))
    for o in out:
        o["choice"] = o.get("logit_choice", o.get("gen_choice", "invalid"))
        o.setdefault("read_from", "text")
    return out


def score_scoring(judge, story: Story, questions: list[Question], max_new_tokens: int, method: str) -> list[dict]:
    return score_scoring_items(judge, [(story, q) for q in questions], max_new_tokens, method)


class Cancelled(Exception):
    pass


def run_simulation(judge, stories: list[Story], questions: list[Question], *, mode: str, run_dir: str | Path,
                   scoring_method: str = "both", pairwise_method: str = "generate", max_new_tokens: int | None = None,
                   chunk: int = 4, progress=None, should_stop=None) -> dict:
    """Score every (story, question) item not yet in results.jsonl; returns counts, with ``read_from``:
    how many of the items scored now took their choice from logits, logprobs or text."""
    if mode not in ("pairwise", "scoring"):
        raise ValueError(f"mode must be 'pairwise' or 'scoring', got {mode!r}")
    for name, value in (("scoring_method", scoring_method), ("pairwise_method", pairwise_method)):
        if value not in ("generate", "logits", "both"):
            raise ValueError(f"{name} must be 'generate', 'logits' or 'both', got {value!r}")
    if max_new_tokens is None:
        max_new_tokens = 8 if mode == "pairwise" else 64
    path = Path(run_dir) / RESULTS_FILE
    done = done_keys(run_dir)
    total = len(stories) * len(questions)
    todo = [(u, st, q) for u, st in enumerate(stories) for q in questions if item_key(u, q.qid) not in done]
    n_done = skipped = total - len(todo)
    method = scoring_method if mode == "scoring" else pairwise_method
    if method == "logits":  # nothing to generate: chunks may span personas, and the judge batches across them
        parts = [todo[i:i + chunk] for i in range(0, len(todo), chunk)]
    else:  # generation runs per persona: chunks stay within one
        parts = []
        for u in range(len(stories)):
            mine = [t for t in todo if t[0] == u]
            parts += [mine[i:i + chunk] for i in range(0, len(mine), chunk)]
    read_from: dict[str, int] = {}
    if progress:
        progress(n_done, total)
    if path.exists() and path.stat().st_size:
        with open(path, "rb+") as fh:  # a kill mid-write leaves a torn last line: end it so the next record stands alone
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
    with open(path, "a", encoding="utf-8") as fh:
        for part in parts:
            if should_stop and should_stop():
                raise Cancelled()
            items = [(st, q) for _, st, q in part]
            if mode == "pairwise":
                scored = score_pairwise_items(judge, items, max_new_tokens, pairwise_method)
            else:
                scored = score_scoring_items(judge, items, max_new_tokens, scoring_method)
            for (u, story, q), s in zip(part, scored, strict=True):
                rec = {"key": item_key(u, q.qid), "user": u, "name": story.name,
                       "occupation": story.occupation, "group": story.group, "qid": q.qid,
                       "q_index": q.index, "mode": mode, "preferred": q.preferred, **s}
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
                n_done += 1
                read_from[s["read_from"]] = read_from.get(s["read_from"], 0) + 1
            if progress:
                progress(n_done, total)
    return {"total": total, "done": n_done, "skipped_existing": skipped, "read_from": read_from}

"""Running a persona simulation: items, the two query modes, incremental results and resume.

An *item* is (persona, question). Each question contributes one pair of its responses: the one the
dataset rates best on average (the dataset's preferred) and the one it rates worst; a seeded coin
decides which is shown first (the "base order"). Results go to ``results.jsonl``, one line per item,
flushed as soon as the item is scored; a restarted run skips items already there.

Choices are recorded in base-order terms: ``first`` / ``second`` (the response shown first or
second in the base order), ``inconsistent`` (pairwise: the two orders disagree), ``tie`` (scoring:
equal totals) and ``invalid`` (unparseable). ``preferred`` says which of first/second the dataset
prefers, so "chose the dataset's preferred" is ``choice == preferred``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import prompts
from .parse import parse_choice, parse_scores
from .stories import Story

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
    from core.runs import read_jsonl

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
    if a is None or b is None:
        return "invalid"
    if abs(a - b) <= tol:
        return "tie"
    return "first" if a > b else "second"


def score_pairwise(judge, story: Story, questions: list[Question], max_new_tokens: int) -> list[dict]:
    prefix = prompts.pairwise_prefix(story)
    sufs = [prompts.pairwise_suffix(q.prompt, q.first, q.second) for q in questions]
    sufs += [prompts.pairwise_suffix(q.prompt, q.second, q.first) for q in questions]
    texts = judge.generate(prefix, sufs, max_new_tokens)
    n = len(questions)
    out = []
    for i, _q in enumerate(questions):
        a, b = parse_choice(texts[i]), parse_choice(texts[n + i])
        # answers are positional (A = shown first in that order): position bias reads straight off them
        out.append({"raw": [texts[i], texts[n + i]], "answers": [a, b], "choice": combine_pairwise(a, b)})
    return out


def score_scoring(judge, story: Story, questions: list[Question], max_new_tokens: int, method: str) -> list[dict]:
    prefix = prompts.scoring_prefix(story)
    sufs = [prompts.scoring_suffix(q.prompt, r) for q in questions for r in (q.first, q.second)]
    out = [{} for _ in questions]
    if method in ("generate", "both"):
        texts = judge.generate(prefix, sufs, max_new_tokens)
        for i in range(len(questions)):
            s1, s2 = parse_scores(texts[2 * i]), parse_scores(texts[2 * i + 1])
            out[i].update(raw=[texts[2 * i], texts[2 * i + 1]], gen_scores=[s1, s2],
                          gen_choice=compare_totals(sum(s1) if s1 else None, sum(s2) if s2 else None))
    if method in ("logits", "both") and getattr(judge, "supports_logits", False):
        cues = [prompts.logit_cue(d) for d in prompts.DIMENSIONS]
        res = judge.rating_probs(prefix, sufs, cues)
        exp, mass = res.expected, res.mass
        for i in range(len(questions)):
            e1, e2 = exp[2 * i], exp[2 * i + 1]
            out[i].update(logit_scores=[np.round(e1, 4).tolist(), np.round(e2, 4).tolist()],
                          logit_mass=[np.round(mass[2 * i], 4).tolist(), np.round(mass[2 * i + 1], 4).tolist()],
                          logit_choice=compare_totals(float(e1.sum()), float(e2.sum()), tol=1e-6))
    for o in out:
        o["choice"] = o.get("logit_choice", o.get("gen_choice", "invalid"))
    return out


class Cancelled(Exception):
    pass


def run_simulation(judge, stories: list[Story], questions: list[Question], *, mode: str, run_dir: str | Path,
                   scoring_method: str = "both", max_new_tokens: int | None = None, chunk: int = 4,
                   progress=None, should_stop=None) -> dict:
    """Score every (story, question) item not yet in results.jsonl; returns counts."""
    if mode not in ("pairwise", "scoring"):
        raise ValueError(f"mode must be 'pairwise' or 'scoring', got {mode!r}")
    if max_new_tokens is None:
        max_new_tokens = 8 if mode == "pairwise" else 64
    path = Path(run_dir) / RESULTS_FILE
    done = done_keys(run_dir)
    total = len(stories) * len(questions)
    n_done = sum(1 for u in range(len(stories)) for q in questions if item_key(u, q.qid) in done)
    skipped = n_done
    if progress:
        progress(n_done, total)
    if path.exists() and path.stat().st_size:
        with open(path, "rb+") as fh:  # a kill mid-write leaves a torn last line: end it so the next record stands alone
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
    with open(path, "a", encoding="utf-8") as fh:
        for u, story in enumerate(stories):
            todo = [q for q in questions if item_key(u, q.qid) not in done]
            for start in range(0, len(todo), chunk):
                if should_stop and should_stop():
                    raise Cancelled()
                part = todo[start:start + chunk]
                if mode == "pairwise":
                    scored = score_pairwise(judge, story, part, max_new_tokens)
                else:
                    scored = score_scoring(judge, story, part, max_new_tokens, scoring_method)
                for q, s in zip(part, scored, strict=True):
                    rec = {"key": item_key(u, q.qid), "user": u, "name": story.name,
                           "occupation": story.occupation, "group": story.group, "qid": q.qid,
                           "q_index": q.index, "mode": mode, "preferred": q.preferred, **s}
                    fh.write(json.dumps(rec) + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                    n_done += 1
                if progress:
                    progress(n_done, total)
    return {"total": total, "done": n_done, "skipped_existing": skipped}

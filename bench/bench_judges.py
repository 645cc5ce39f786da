"""Scored items per second for the ways to query a judge, with one judge on this machine.

    .venv/bin/python bench/bench_judges.py [--judge default] [--stories 2] [--questions 4] [--dry-run]

An item is (persona, question). Measured in one run, on the same items:

- scoring-generation: grade both responses by generating [[t, i, h, p]] (2 generations; the seed's
  method, the baseline of every ratio);
- logits-old: the grades from next-token probabilities as before (LocalJudge.rating_probs_unpacked:
  one batch per persona, then the cues' branches in a second pass);
- logits-new: the packed path (all items of all personas at once: prompts as token tries, persona
  prefixes cached, several personas per forward pass, logits only where read);
- pairwise-generation and pairwise-logits (P(A) vs P(B) after "[[", both orders).

It also prints the largest difference between the old and new paths' expected grades (they must agree)
and the prefix-reuse gain on pairwise generation. Writes bench/out/judges-<time>.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._results import write_result  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--judge", default="default")
    p.add_argument("--stories", type=int, default=2)
    p.add_argument("--questions", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--pairwise-tokens", type=int, default=8)
    p.add_argument("--scoring-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dry-run", action="store_true", help="1 story x 2 questions, short generations")
    args = p.parse_args(argv)
    if args.dry_run:
        args.stories, args.questions, args.pairwise_tokens, args.scoring_tokens = 1, 2, 4, 8

    from core.data import generate_table
    from core.personas import default_stories, prompts
    from core.personas.judges import make_judge
    from core.personas.simulate import (
        pick_questions,
        score_pairwise_items,
        score_scoring,
        score_scoring_items,
    )

    t0 = time.perf_counter()
    judge = make_judge(args.judge, batch_size=args.batch_size)
    load_s = time.perf_counter() - t0
    stories = default_stories()[:args.stories]
    questions = pick_questions(generate_table(max(50, args.questions), seed=args.seed), args.questions, args.seed)
    items = [(s, q) for s in stories for q in questions]
    n_items = len(items)
    has_logits = getattr(judge, "supports_logits", False)
    cues = [prompts.logit_cue(d) for d in prompts.DIMENSIONS]
    grades: dict[str, np.ndarray] = {}

    def old_logits():
        exp = []
        for s in stories:
            sufs = [prompts.scoring_suffix(q.prompt, r) for q in questions for r in (q.first, q.second)]
            exp.append(judge.rating_probs_unpacked(prompts.scoring_prefix(s), sufs, cues).expected)
        grades["logits-old"] = np.concatenate(exp)

    def new_logits():
        scored = score_scoring_items(judge, items, args.scoring_tokens, "logits")
        grades["logits-new"] = np.array([r for o in scored for r in o["logit_scores"]])

    work = {
        "scoring-generation": lambda: [score_scoring(judge, s, questions, args.scoring_tokens, "generate")
                                       for s in stories],
        "pairwise-generation": lambda: score_pairwise_items(judge, items, args.pairwise_tokens, "generate"),
    }
    if has_logits:
        work.update({"logits-old": old_logits, "logits-new": new_logits,
                     "pairwise-logits": lambda: score_pairwise_items(judge, items, args.pairwise_tokens, "logits")})
    # warm-up (first-call allocations, the option-token scan) on one item, not timed
    score_scoring_items(judge, items[:1], 2, "logits" if has_logits else "generate")
    if has_logits:
        score_pairwise_items(judge, items[:1], 2, "logits")
    seconds = {}
    for k, fn in work.items():
        if hasattr(judge, "_prefix_cache"):
            judge._prefix_cache.clear()  # every path pays for its personas' prefixes
        seconds[k] = _timed(fn)
        print(f"{k:20s} {n_items / seconds[k]:8.3f} items/s  ({seconds[k]:.1f} s for {n_items} items)", flush=True)
    ratios = {k: round(seconds["scoring-generation"] / s, 3) for k, s in seconds.items()}
    print("speed vs scoring-generation: " + ", ".join(f"{k} {v}x" for k, v in ratios.items()))
    agreement = None
    if has_logits:
        agreement = float(np.abs(grades["logits-new"] - grades["logits-old"]).max())
        print(f"logits-new vs logits-old: {seconds['logits-old'] / seconds['logits-new']:.2f}x faster; "
              f"largest expected-grade difference {agreement:.2e}")
    reuse = {}
    if hasattr(judge, "reuse_prefix"):
        k = "pairwise-generation"
        judge.reuse_prefix = False
        judge._prefix_cache.clear()
        off = _timed(work[k])
        judge.reuse_prefix = True
        reuse[k] = {"with_reuse_s": round(seconds[k], 3), "without_reuse_s": round(off, 3),
                    "gain": round(off / seconds[k], 3)}
        print(f"prefix reuse gain on {k}: {off / seconds[k]:.2f}x ({off:.1f} s without, {seconds[k]:.1f} s with)")
    out = {"judge": getattr(judge, "name", args.judge), "load_s": round(load_s, 2), "items": n_items,
           "stories": len(stories), "questions": len(questions), "batch_size": args.batch_size,
           "pairwise_tokens": args.pairwise_tokens, "scoring_tokens": args.scoring_tokens,
           "items_per_s": {k: round(n_items / s, 4) for k, s in seconds.items()}, "ratios_vs_scoring_generation": ratios,
           "max_expected_grade_diff_new_vs_old": agreement, "prefix_reuse": reuse, "threads": getattr(judge, "threads", None), "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
           "dry_run": args.dry_run}
    path = write_result("judges", out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

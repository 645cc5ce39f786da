"""Scored items per second for the three ways to query a judge, with one judge on this machine.

    .venv/bin/python bench/bench_judges.py [--judge default] [--stories 2] [--questions 4] [--dry-run]

An item is (persona, question): pairwise-generation asks A/B in both orders (2 generations),
scoring-generation grades both responses ([[t, i, h, p]], 2 generations), scoring-from-logits reads
the grades from next-token probabilities (2 forward passes, no decoding). Ratios are against
scoring-generation (the seed's method) measured in the same run; the prefix-reuse gain compares the
same work with and without reusing each persona's key-value cache. Writes bench/out/judges-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
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
    from core.personas import default_stories
    from core.personas.judges import make_judge
    from core.personas.simulate import pick_questions, score_pairwise, score_scoring

    t0 = time.perf_counter()
    judge = make_judge(args.judge, batch_size=args.batch_size)
    load_s = time.perf_counter() - t0
    stories = default_stories()[:args.stories]
    questions = pick_questions(generate_table(max(50, args.questions), seed=args.seed), args.questions, args.seed)
    n_items = len(stories) * len(questions)
    has_logits = getattr(judge, "supports_logits", False)

    def work(kind):
        def run():
            for s in stories:
                if kind == "pairwise-generation":
                    score_pairwise(judge, s, questions, args.pairwise_tokens)
                elif kind == "scoring-generation":
                    score_scoring(judge, s, questions, args.scoring_tokens, "generate")
                else:
                    score_scoring(judge, s, questions, args.scoring_tokens, "logits")
        return run

    # warm-up (first-call allocations) on one story / one question, not timed
    score_scoring(judge, stories[0], questions[:1], 2, "logits" if has_logits else "generate")
    kinds = ["scoring-generation", "pairwise-generation"] + (["scoring-from-logits"] if has_logits else [])
    seconds = {}
    for k in kinds:
        seconds[k] = _timed(work(k))
        print(f"{k:22s} {n_items / seconds[k]:8.3f} items/s  ({seconds[k]:.1f} s for {n_items} items)", flush=True)
    base = n_items / seconds["scoring-generation"]
    ratios = {k: round((n_items / s) / base, 3) for k, s in seconds.items()}
    print("ratios vs scoring-generation: " + ", ".join(f"{k} {v}x" for k, v in ratios.items()))
    reuse = {}
    if hasattr(judge, "reuse_prefix"):
        for k in ("scoring-from-logits", "pairwise-generation"):
            if k not in seconds:
                continue
            judge.reuse_prefix = False
            judge._prefix_cache.clear()
            off = _timed(work(k))
            judge.reuse_prefix = True
            reuse[k] = {"with_reuse_s": round(seconds[k], 3), "without_reuse_s": round(off, 3),
                        "gain": round(off / seconds[k], 3)}
            print(f"prefix reuse gain on {k}: {off / seconds[k]:.2f}x ({off:.1f} s without, {seconds[k]:.1f} s with)")
    out = {"judge": getattr(judge, "name", args.judge), "load_s": round(load_s, 2), "items": n_items,
           "stories": len(stories), "questions": len(questions), "batch_size": args.batch_size,
           "pairwise_tokens": args.pairwise_tokens, "scoring_tokens": args.scoring_tokens,
           "items_per_s": {k: round(n_items / s, 4) for k, s in seconds.items()}, "ratios_vs_scoring_generation": ratios,
           "prefix_reuse": reuse, "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
           "dry_run": args.dry_run}
    out_dir = ROOT / "bench" / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"judges-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

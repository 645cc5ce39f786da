"""Bench a finished run used as a reward model: scoring throughput (cached vs new texts) and infer_user latency.

    .venv/bin/python bench/bench_reward.py [--run DIR] [--responses 64] [--repeats 5] [--dry-run]

Without --run it trains the two-opposed lesson's vpl-adaptive run (400 questions) into a temp folder
first. Then, in the same process:
- uncached: score ``--responses`` responses the cache has never seen (each is encoded once);
- cached: score the same responses again (embeddings read from the on-disk cache);
- infer_user: place a visitor from 8 contested A/B answers (cached texts), median of ``--repeats``.
Prints responses/s for both, their ratio, and the latency; writes bench/out/reward.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._results import write_result  # noqa: E402
from core.serving.run_reward import RunRewardModel, ask_pairs  # noqa: E402
from core.training.config import LESSON_TWO_OPPOSED, build_config  # noqa: E402
from core.training.launch import train  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a finished run directory (default: train the lesson's vpl-adaptive run)")
    ap.add_argument("--responses", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dry-run", action="store_true", help="8 responses, 1 repeat, a 20-step run")
    args = ap.parse_args(argv)
    if args.dry_run:
        args.responses, args.repeats = 8, 1
    run = args.run
    if run is None:
        run = tempfile.mkdtemp(prefix="bench-reward-")
        steps = 20 if args.dry_run else 150
        t0 = time.perf_counter()
        train(build_config({"preset": "vpl-adaptive", **LESSON_TWO_OPPOSED, "steps": steps, "seed": args.seed}),
              run, log=lambda m: None)
        print(f"trained the lesson run in {time.perf_counter() - t0:.1f}s")
    rm = RunRewardModel.from_run(run, device="cpu")
    table = rm.table()
    pairs = ask_pairs(table, rm.W, 8, how="random", seed=args.seed)
    demos = [(table.prompts[q], table.responses[q][i], table.responses[q][j]) for q, i, j in pairs]
    me = rm.infer_user(demos)  # warm-up (loads the encoder on first use)
    stamp = time.time_ns()
    prompt = "Describe a lighthouse for a beginner."
    fresh = [f"Response {n} ({stamp}): a lighthouse guides ships with a bright light." for n in range(args.responses)]
    t0 = time.perf_counter()
    rm.score(prompt, fresh, user=me)
    uncached = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.repeats):
        rm.score(prompt, fresh, user=me)
    cached = (time.perf_counter() - t0) / args.repeats
    lat = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        rm.infer_user(demos)
        lat.append(time.perf_counter() - t0)
    res = {"run": str(run), "responses": args.responses, "uncached_per_s": args.responses / uncached,
           "cached_per_s": args.responses / cached, "cached_vs_uncached": uncached / cached,
           "infer_user_ms_median": 1000 * statistics.median(lat), "demos": len(demos)}
    print(f"score, new texts:    {res['uncached_per_s']:8.1f} responses/s")
    print(f"score, cached texts: {res['cached_per_s']:8.1f} responses/s  ({res['cached_vs_uncached']:.1f}x)")
    print(f"infer_user ({len(demos)} answers, cached): {res['infer_user_ms_median']:.1f} ms (median of {args.repeats})")
    print(f"wrote {write_result('reward', res)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

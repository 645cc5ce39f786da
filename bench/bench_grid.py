"""The grid against today's way: the trained part of `compare`, timed both ways on this machine in one run.

    .venv/bin/python bench/bench_grid.py [--baseline-ref 2dd2ad6] [--presets ...] [--seeds 0 1 2] \
        [--users two-opposed] [--steps 200] [--seed 0] [--dry-run]

"Today's way" is `python -m core.experiments compare` as it was at ``--baseline-ref`` (the last commit
before core.training.grid), checked out into a temporary git worktree and run with this checkout's virtual
environment: the runs one after another in one process. "Grid" is the same command on this checkout,
which trains them as one grid (core.training.grid). Both read the same warm embedding cache (warmed first, not
timed) and start from fresh output folders. Prints each run's final accuracy both ways and their largest
difference, the two wall times and the ratio; writes bench/out/grid-*.json.

The target (issue 19): the grid at least 4x faster, every run's final accuracy within 0.01.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PRESETS = ["traditional", "vpl", "vpl-adaptive", "vpl-mgda", "vpl-pcgrad", "vpl-contrastive", "personal"]


def compare(cwd: Path, out: Path, args) -> float:
    cmd = [sys.executable, "-m", "core.experiments", "compare", "--presets", *args.presets,
           "--seeds", *map(str, args.seeds), "--steps", str(args.steps), "--users", args.users, "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"compare failed in {cwd}:\n{proc.stderr[-3000:]}")
    return wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline-ref", default="2dd2ad6", help="git commit of today's way (before core.training.grid)")
    ap.add_argument("--presets", nargs="+", default=PRESETS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--users", default="two-opposed")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seed", type=int, help="shorthand for --seeds SEED")
    ap.add_argument("--dry-run", action="store_true", help="two presets, one seed, 10 steps")
    args = ap.parse_args(argv)
    if args.seed is not None:
        args.seeds = [args.seed]
    if args.dry_run:
        args.presets, args.seeds, args.steps = ["traditional", "vpl"], args.seeds[:1], 10
    import pandas as pd

    from bench._results import write_result
    from core.training.config import build_config
    from core.training.launch import warm_cache

    for p in args.presets:  # the embedding cache warm for every seed's data, so neither side pays for encoding
        for s in args.seeds:
            warm_cache(build_config({"preset": p, "seed": s, "users": args.users}), log=lambda m: None)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = tmp / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), args.baseline_ref], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            today_s = compare(base, tmp / "today", args)
            grid_s = compare(ROOT, tmp / "grid", args)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, capture_output=True)
        a = pd.read_csv(tmp / "today" / "runs.csv")[["method", "seed", "accuracy"]]
        b = pd.read_csv(tmp / "grid" / "runs.csv")[["method", "seed", "accuracy"]]
    m = a.merge(b, on=["method", "seed"], suffixes=("_today", "_grid"))
    m["diff"] = m["accuracy_grid"] - m["accuracy_today"]
    print(m.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    worst = float(m["diff"].abs().max())
    ratio = today_s / grid_s
    print(f"\n{len(m)} runs x {args.steps} steps, {args.users}: today's compare {today_s:.1f}s, grid {grid_s:.1f}s, "
          f"{ratio:.2f}x faster; largest accuracy difference {worst:.4f} "
          f"(targets: >= 4x, <= 0.01: {'met' if ratio >= 4 and worst <= 0.01 else 'NOT met'})")
    path = write_result("grid", {"today_s": today_s, "grid_s": grid_s, "ratio": ratio, "max_abs_diff": worst,
                                 "steps": args.steps, "users": args.users, "baseline_ref": args.baseline_ref,
                                 "cpus": os.cpu_count(), "runs": m.to_dict(orient="records")})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Bench the human-ratings analyses (core.personas.humans) on a generated table with planted groups.

    .venv/bin/python bench/bench_humans.py [--users 300] [--groups 5] [--items 200] [--per-user 50]
        [--permutations 1000] [--metric pearson] [--format csv|jsonl|parquet] [--seed 0] [--dry-run]

Generates users x per-user ratings (each group shares a taste over the items, plus noise), writes
them in the chosen format, then times each stage in this process (read, matrix, similarity, groups
with permutations, graph with layout, write) and the whole CLI as a child process (Python start and
imports included). Baseline, same run: a pair-by-pair Python loop computing the same similarities
on the first --baseline-users users, against the vectorized code on that subset (median of --repeats;
ratio and largest difference). Prints the figures; writes bench/out/humans.json.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._results import write_result  # noqa: E402
from core.personas import humans  # noqa: E402


def loop_similarity(R: np.ndarray, metric: str, min_overlap: int) -> np.ndarray:
    """The obvious pair-by-pair computation: the baseline, and a check of the vectorized result."""
    n = len(R)
    rated = [dict((j, R[u, j]) for j in np.flatnonzero(~np.isnan(R[u]))) for u in range(n)]
    means = [np.mean(list(d.values())) for d in rated]
    sim = np.full((n, n), np.nan)
    for u in range(n):
        for v in range(u + 1, n):
            common = sorted(rated[u].keys() & rated[v].keys())
            if len(common) < min_overlap:
                continue
            x = np.array([rated[u][j] for j in common])
            y = np.array([rated[v][j] for j in common])
            x, y = (x - x.mean(), y - y.mean()) if metric == "pearson" else (x - means[u], y - means[v])
            den = np.sqrt((x @ x) * (y @ y))
            if den > 1e-9:
                sim[u, v] = sim[v, u] = x @ y / den
    return sim


def _median_time(fn, repeats: int):
    """Median wall time of ``repeats`` calls (a shared 2-core machine is noisy) and the last result."""
    times = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--groups", type=int, default=5)
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--per-user", type=int, default=50)
    ap.add_argument("--permutations", type=int, default=1000)
    ap.add_argument("--metric", choices=humans.METRICS, default="pearson")
    ap.add_argument("--min-overlap", type=int, default=5)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--format", choices=["csv", "jsonl", "parquet"], default="csv")
    ap.add_argument("--baseline-users", type=int, default=80, help="users in the loop-vs-vectorized comparison")
    ap.add_argument("--repeats", type=int, default=5, help="timings of the baseline comparison (median)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dry-run", action="store_true", help="40 users, 100 permutations, 20 baseline users")
    args = ap.parse_args(argv)
    if args.dry_run:
        args.users, args.permutations, args.baseline_users = 40, 100, 20
    tmp = Path(tempfile.mkdtemp(prefix="bench-humans-"))
    sec = {}

    t = time.perf_counter()
    df = humans.planted_ratings(args.users, args.groups, args.items, args.per_user, seed=args.seed)
    sec["generate"] = time.perf_counter() - t
    path = tmp / f"ratings.{args.format}"
    t = time.perf_counter()
    {"csv": lambda: df.to_csv(path, index=False), "parquet": lambda: df.to_parquet(path),
     "jsonl": lambda: df.to_json(path, orient="records", lines=True)}[args.format]()
    sec["write input"] = time.perf_counter() - t

    t = time.perf_counter()
    r = humans.read_ratings(path, "user", "item", "rating", "group")
    sec["read"] = time.perf_counter() - t
    a = humans.analyse(r, args.metric, args.min_overlap, args.top_k, args.permutations, args.seed)
    sec.update(a.seconds)
    t = time.perf_counter()
    opts = {"min_overlap": args.min_overlap, "top_k": args.top_k, "metric": args.metric, "seed": args.seed}
    s = humans.write_outputs(tmp / "out", r, a, opts)
    sec["write outputs"] = time.perf_counter() - t
    in_process = sum(v for k, v in sec.items() if k not in ("generate", "write input"))

    cmd = [sys.executable, "-m", "core.personas.humans", "--ratings", str(path), "--user", "user", "--item", "item",
           "--rating", "rating", "--group", "group", "--metric", args.metric, "--min-overlap", str(args.min_overlap),
           "--top-k", str(args.top_k), "--permutations", str(args.permutations), "--seed", str(args.seed),
           "--out", str(tmp / "cli")]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    cli = time.perf_counter() - t
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        return 1

    R, *_ = humans.rating_matrix(r)
    sub = R[: args.baseline_users]
    loop_s, slow = _median_time(lambda: loop_similarity(sub, args.metric, args.min_overlap), args.repeats)
    vec_s, (fast, _) = _median_time(lambda: humans.similarity(sub, args.metric, args.min_overlap), args.repeats)
    both = np.isfinite(slow) & np.isfinite(fast)
    agree = bool((np.isfinite(slow) == np.isfinite(fast)).all())
    max_diff = float(np.abs(slow[both] - fast[both]).max()) if both.any() else 0.0

    print(f"{s['ratings']:,} ratings, {s['users']} users, {s['items']} items, {s['groups']} groups "
          f"({args.format}, {args.metric}, {args.permutations} permutations)")
    for k, v in sec.items():
        print(f"  {k:<14} {v:8.3f} s")
    print(f"  {'total':<14} {in_process:8.3f} s  (read to written, in process)")
    print(f"CLI as a child process, end to end: {cli:.2f} s")
    print(f"within {s['within_mean']:.3f} vs between {s['between_mean']:.3f}, p = {s['p_value']:.4f}; "
          f"{s['pairs_meeting_overlap']:,} pairs meet the overlap; {s['graph_edges']} graph edges")
    print(f"baseline, {len(sub)} users, median of {args.repeats}: pair loop {loop_s:.3f} s vs vectorized {vec_s:.4f} s "
          f"({loop_s / max(vec_s, 1e-9):.0f}x); same pairs defined: {agree}; largest difference {max_diff:.1e}")
    res = {"args": vars(args), "ratings": s["ratings"], "users": s["users"], "items": s["items"],
           "seconds": {k: round(v, 4) for k, v in sec.items()}, "total_in_process_s": round(in_process, 4),
           "cli_s": round(cli, 3), "within_mean": s["within_mean"], "between_mean": s["between_mean"],
           "p_value": s["p_value"], "baseline": {"users": len(sub), "loop_s": loop_s, "vectorized_s": vec_s,
                                                  "ratio": loop_s / max(vec_s, 1e-9), "same_pairs": agree,
                                                  "max_abs_diff": max_diff}}
    print(f"wrote {write_result('humans', res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

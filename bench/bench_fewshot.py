"""The few-shot baseline before and after prefix reuse, in one run, on the same prompts.

    .venv/bin/python bench/bench_fewshot.py [--quick | --dry-run] [--seeds 0] [--ks 0 2 4 6 8] [--queries 20]
        [--users two-opposed] [--workers 2]

"before" is the plain path (``reuse=False``: one prefix forward per k and user, then one query at a
time, each on a copy of that cache); "after" is ``LogitChooser.user_probs`` (one cache per user for
every k, the two orders of a query sharing their common start). Both answer the same prompts, so
the bench also prints the largest difference in P(chosen) and whether every accuracy is equal.
The default size is one seed of ``python -m core.experiments compare`` (1500 questions, two users,
20 queries each); ``--quick`` is 3 queries per user and k in 0 2 4 8 (a few minutes on 2 busy cores;
it has fewer queries per prefix, so its ratio differs from the full size's). Timings include no model
loading, except ``--workers N``, which also times the fast path in N processes (as
``compare --fewshot-workers N`` runs it; each process loads the judge). Writes bench/out/fewshot-<time>.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._results import write_result  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--judge", default="default")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--ks", type=int, nargs="+", default=[0, 2, 4, 6, 8])
    p.add_argument("--queries", type=int, default=20, help="test queries per user")
    p.add_argument("--users", default="two-opposed")
    p.add_argument("--how", choices=["infogain", "random"], default="infogain")
    p.add_argument("--batch-queries", type=int, help="queries per forward in the fast path (default: 1 on CPU)")
    p.add_argument("--set", nargs="*", default=[], help="config overrides, key=value (as for compare)")
    p.add_argument("--quick", action="store_true", help="3 queries per user, k in 0 2 4 8")
    p.add_argument("--dry-run", action="store_true", help="1 query per user, k in 0 1 (checks the bench runs)")
    p.add_argument("--after-only", action="store_true", help="time the fast path only (no comparison)")
    p.add_argument("--workers", type=int, default=1,
                   help="also time the fast path in this many worker processes (judge loading included)")
    args = p.parse_args(argv)
    if args.quick:
        args.queries, args.ks = 3, [0, 2, 4, 8]
    if args.dry_run:
        args.queries, args.ks = 1, [0, 1]

    import numpy as np

    from core.experiments.compare import parse_set
    from core.experiments.fewshot import LogitChooser, evaluate, prepare
    from core.experiments.fewshot_runs import _answer_tasks
    from core.personas.judges import make_judge
    from core.training.config import build_config
    from core.training.trainer import load_table
    from core.users.tastes import load_users

    cfg = build_config({**parse_set(args.set), "users": args.users})
    table, W = load_table(cfg), load_users(cfg)
    t0 = time.perf_counter()
    judge = make_judge(args.judge)
    load_s = time.perf_counter() - t0
    if not getattr(judge, "supports_logits", False):
        print("error: --judge must be a local model (the bench times the logit path)", file=sys.stderr)
        return 2
    plans = {s: prepare(table, W, args.ks, seed=s, how=args.how, queries_per_user=args.queries,
                        test_share=cfg.test_share, contested_only=cfg.contested_only) for s in args.seeds}
    rows = sum(pl.rows() for pl in plans.values())
    print(f"judge {getattr(judge, 'name', args.judge)} loaded in {load_s:.1f}s; seeds {args.seeds}, k {args.ks}, "
          f"{len(W)} users x {args.queries} queries: {rows} prompts per path", flush=True)

    def run(reuse: bool) -> tuple[float, dict]:
        chooser = LogitChooser(judge, batch_queries=args.batch_queries)
        t = time.perf_counter()
        res = {s: evaluate(table, W, judge, args.ks, seed=s, plan=pl, chooser=chooser, reuse=reuse,
                           log=lambda m: None) for s, pl in plans.items()}
        return time.perf_counter() - t, res

    LogitChooser(judge).prob_a("warm-up", ["Which answer? A or B"])  # first-call allocations, not timed
    timings, results = {}, {}
    for name, reuse in (("before", False), ("after", True)):
        if name == "before" and args.after_only:
            continue
        timings[name], results[name] = run(reuse)
        print(f"{name:6s} {timings[name]:8.1f} s  {rows / timings[name]:6.2f} prompts/s", flush=True)
    if args.workers > 1:
        tasks = [((s, u), pl.demos[u], pl.ks, q) for s, pl in plans.items() for u, q in enumerate(pl.queries)]
        tasks += [((s, "ref"), [], [0], pl.reference) for s, pl in plans.items() if pl.reference is not None]
        t = time.perf_counter()
        _answer_tasks(tasks, args.judge, args.workers, True, lambda tag, n: None)
        timings[f"after, {args.workers} workers"] = time.perf_counter() - t
        print(f"after, {args.workers} workers {timings[f'after, {args.workers} workers']:8.1f} s  "
              f"(each worker loads the judge)", flush=True)
    out = {"judge": getattr(judge, "name", args.judge), "seeds": args.seeds, "ks": args.ks, "users": args.users,
           "queries_per_user": args.queries, "prompts": rows, "quick": args.quick,
           "seconds": {k: round(v, 2) for k, v in timings.items()},
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                       "load_avg_1m": round(os.getloadavg()[0], 2)}}
    if "before" in timings:
        ratio = timings["before"] / timings["after"]
        for name, secs in timings.items():
            if name.startswith("after, "):
                print(f"ratio  {timings['before'] / secs:8.2f}x  (before / {name})")
                out[f"ratio_{args.workers}_workers"] = round(timings["before"] / secs, 3)
        diffs, same_acc = [], True
        for s in args.seeds:
            for k in args.ks:
                a, b = results["before"][s][k], results["after"][s][k]
                same_acc &= a["user_accuracy"] == b["user_accuracy"] and a["uniform_k0_accuracy"] == b["uniform_k0_accuracy"]
                for u, pa in a["user_p_chosen"].items():
                    diffs.append(np.max(np.abs(np.asarray(pa) - np.asarray(b["user_p_chosen"][u])), initial=0.0))
        print(f"ratio  {ratio:8.2f}x  (before / after, same run)")
        print(f"largest |P(chosen) before - after|: {max(diffs):.2e}; accuracies identical: {same_acc}")
        out.update(ratio=round(ratio, 3), max_abs_diff=float(max(diffs)), accuracies_identical=bool(same_acc))
    path = write_result("fewshot", out)
    print(f"wrote {path} (load average {out['machine']['load_avg_1m']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

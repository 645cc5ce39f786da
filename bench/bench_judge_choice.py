"""Which bundled judge: SmolLM2-135M-Instruct (the default) against Gemma 3 270M (a base model), same settings.

    .venv/bin/python bench/bench_judge_choice.py [--judges bundled-smollm2 bundled-gemma3]
        [--probe-questions 12] [--ks 0 4] [--queries 16] [--seed 0] [--dry-run]

For each judge, in one run:

(a) the judge-quality probe (``core.personas.quality.run_probe``, as the Personas page and
    ``python -m core.personas`` run it): Spearman rho between the judge's expected grades and the offline
    corpus's true ratings, per dimension, over ``4 x --probe-questions`` responses; and the share of
    next-token mass on the grade tokens;
(b) the few-shot baseline on the two-opposed lesson's data (``core.experiments.fewshot_runs.run_methods``, the code path of
    ``python -m core.experiments compare --presets fewshot-k0 fewshot-k4``, which loads the judge by its
    spec): accuracy per k over both users, ``--queries`` test pairs a user, one seed;
(c) seconds per item: probe seconds per response, few-shot seconds per prompt (one query in one order).

"Clearly better" is decided by a rule fixed here, not by taste: the candidate must beat the default on the
probe's mean rho with a paired bootstrap 95% interval above 0 (same responses for both judges), and its
few-shot accuracy at the largest k must not be lower than the default's by more than the pooled 95%
interval. Otherwise the default stays. Writes bench/out/judge-choice-<time>.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._results import write_result  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PROBE_SEED = 1234  # run_probe's default corpus seed


class Recording:
    """Passes the probe's calls through to a judge and keeps the last RatingResult (the per-response
    expected grades, for the paired bootstrap)."""

    def __init__(self, judge):
        self.judge, self.name, self.last = judge, getattr(judge, "name", str(judge)), None

    def rating_probs(self, *args, **kwargs):
        self.last = self.judge.rating_probs(*args, **kwargs)
        return self.last


def _spearman_cols(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    from core.personas.quality import spearman_per_dimension

    return np.array([np.nan if v is None else v for v in spearman_per_dimension(scores, truth).values()])


def paired_bootstrap(a: np.ndarray, b: np.ndarray, truth: np.ndarray, n: int = 1000, seed: int = 0) -> dict:
    """95% interval of mean-rho(b) - mean-rho(a), resampling responses (the same ones for both judges)."""
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n):
        idx = rng.integers(0, len(truth), len(truth))
        da, db = _spearman_cols(a[idx], truth[idx]), _spearman_cols(b[idx], truth[idx])
        if np.isnan(da).all() or np.isnan(db).all():
            continue
        diffs.append(np.nanmean(db) - np.nanmean(da))
    lo, hi = np.percentile(diffs, [2.5, 97.5]) if diffs else (np.nan, np.nan)
    return {"low": round(float(lo), 4), "high": round(float(hi), 4), "draws": len(diffs)}


def few_shot_prompts(cfg, queries: int, n_ks: int) -> tuple[int, int]:
    """How many prompts evaluate() scores (both orders of every user's queries per k, plus the uniform
    user's k=0 reference line), counted with the same split it builds."""
    from core.training.dataset import build
    from core.training.trainer import load_table
    from core.users.tastes import load_users

    table, W = load_table(cfg), load_users(cfg)
    data = build(table, W, seed=cfg.seed, test_share=cfg.test_share, contested_only=cfg.contested_only,
                 n_demos=1, pool_size=2, max_test_per_user=queries)
    try:
        uni = build(table, np.full((1, 4), 0.25), seed=cfg.seed, test_share=cfg.test_share, contested_only=False,
                    n_demos=1, pool_size=2, max_test_per_user=queries)
        n_uni = len(uni.test)
    except ValueError:
        n_uni = 0
    return 2 * (len(data.test) * n_ks + n_uni), len(data.test)


def measure(spec: str, args, overrides: dict, work: Path) -> dict:
    from core.experiments.fewshot_runs import run_methods
    from core.personas.judges import make_judge
    from core.personas.quality import probe_items, run_probe
    from core.training.config import build_config

    out: dict = {"spec": spec}
    t0 = time.perf_counter()
    judge = make_judge(spec)
    out["load_s"] = round(time.perf_counter() - t0, 2)
    out["name"], out["prompt_format"] = judge.name, getattr(judge, "prompt_format", None)
    print(f"[{spec}] loaded {judge.name} in {out['load_s']} s ({out['prompt_format']})", flush=True)
    rec = Recording(judge)
    probe = run_probe(rec, args.probe_questions, PROBE_SEED)
    _, truth = probe_items(args.probe_questions, PROBE_SEED)
    out["probe"] = probe
    out["probe_scores"] = rec.last.expected.round(5).tolist()
    out["probe_s_per_response"] = round(probe["seconds"] / probe["n_responses"], 3)
    rhos = [v for v in probe["spearman"].values() if v is not None]
    out["probe_mean_rho"] = round(float(np.mean(rhos)), 4) if rhos else None
    print(f"[{spec}] probe: {probe['spearman']}, grade mass {probe.get('rating_token_mass')}, "
          f"{probe['seconds']} s for {probe['n_responses']} responses", flush=True)
    del judge, rec
    gc.collect()

    methods = [f"fewshot-k{k}" for k in args.ks]
    t0 = time.perf_counter()
    dirs = run_methods(methods, [args.seed], work / spec, overrides, judge_spec=spec, how="infogain",
                       queries_per_user=args.queries, log=lambda m: print(f"[{spec}] {m}", flush=True))
    wall = time.perf_counter() - t0
    few = {}
    eval_s = 0.0
    for d in dirs:
        cfg_run = json.loads((d / "config.json").read_text())
        m = json.loads((d / "metrics.jsonl").read_text().splitlines()[-1])
        eval_s += m["wall_s"]
        few[str(cfg_run["k"])] = {"accuracy": round(m["accuracy"], 4),
                                  "user_accuracy": {u: round(a, 4) for u, a in m["user_accuracy"].items()},
                                  "uniform_k0_accuracy": m.get("uniform_k0_accuracy")}
    cfg = build_config({**overrides, "seed": args.seed})
    n_prompts, n_queries = few_shot_prompts(cfg, args.queries, len(args.ks))
    out["fewshot"] = few
    out["fewshot_queries_total"] = n_queries  # test pairs over both users (each asked in both orders)
    out["fewshot_wall_s"] = round(wall, 1)  # includes loading the judge again (run_methods loads by spec)
    out["fewshot_s_per_prompt"] = round(eval_s / n_prompts, 3)
    print(f"[{spec}] few-shot: " + ", ".join(f"k={k} {v['accuracy']:.3f}" for k, v in few.items())
          + f" on {n_queries} queries; {out['fewshot_s_per_prompt']} s per prompt ({n_prompts} prompts)", flush=True)
    return out


def acc_interval(p: float, n: int) -> float:
    """Half-width of a normal 95% interval for an accuracy over n queries."""
    return 1.96 * float(np.sqrt(max(p * (1 - p), 1e-9) / max(n, 1)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--judges", nargs="+", default=["bundled-smollm2", "bundled-gemma3"],
                   help="judge specs; the first is the default the others are compared against")
    p.add_argument("--probe-questions", type=int, default=12, help="probe questions (4 responses each)")
    p.add_argument("--ks", nargs="+", type=int, default=[0, 4], help="few-shot demonstrations per user")
    p.add_argument("--queries", type=int, default=16, help="few-shot test pairs per user")
    p.add_argument("--seed", type=int, default=0, help="few-shot seed (split, demonstrations, order)")
    p.add_argument("--dry-run", action="store_true", help="1 probe question, k=0 only, 2 queries a user")
    args = p.parse_args(argv)
    if args.dry_run:
        args.probe_questions, args.ks, args.queries = 1, [0], 2

    import torch

    from core.personas.quality import probe_items
    from core.training.config import LESSON_TWO_OPPOSED

    overrides = {k: v for k, v in LESSON_TWO_OPPOSED.items() if k in ("users", "corpus_prompts")}
    print(f"settings: probe {args.probe_questions} questions (seed {PROBE_SEED}), few-shot {overrides} "
          f"k={args.ks}, {args.queries} queries a user, seed {args.seed}; torch threads as each judge sets them",
          flush=True)
    t_all = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="judge-choice-") as tmp:
        for spec in args.judges:
            results.append(measure(spec, args, overrides, Path(tmp)))
    total = time.perf_counter() - t_all

    _, truth = probe_items(args.probe_questions, PROBE_SEED)
    base = results[0]
    k_top = str(max(args.ks))
    dims = list(base["probe"]["spearman"])
    head = (f"{'judge':<17}{'format':<14}{'load s':>7}" + "".join(f"{d[:13]:>14}" for d in dims)
            + f"{'mean rho':>9}{'mass':>7}{'s/resp':>8}" + "".join(f"{'k=' + str(k):>8}" for k in args.ks)
            + f"{'uni k0':>8}{'s/prompt':>9}")
    print("\n" + head)
    for r in results:
        rho = "".join(f"{'n/a' if v is None else f'{v:+.3f}':>14}" for v in r["probe"]["spearman"].values())
        acc = "".join(f"{r['fewshot'][str(k)]['accuracy']:>8.3f}" for k in args.ks)
        uni = r["fewshot"][str(args.ks[0])]["uniform_k0_accuracy"]
        mean = "n/a" if r["probe_mean_rho"] is None else f"{r['probe_mean_rho']:+.3f}"
        print(f"{r['spec']:<17}{str(r['prompt_format']):<14}{r['load_s']:>7.1f}{rho}{mean:>9}"
              f"{r['probe'].get('rating_token_mass', float('nan')):>7.3f}{r['probe_s_per_response']:>8.2f}{acc}"
              f"{'n/a' if uni is None else f'{uni:.3f}':>8}{r['fewshot_s_per_prompt']:>9.2f}")
    n_q = base["fewshot_queries_total"]
    print(f"({4 * args.probe_questions} probe responses; few-shot accuracy over {n_q} queries, both users; "
          f"an accuracy's 95% interval is about +-{acc_interval(0.5, n_q):.2f} at 0.5)")

    verdicts = {}
    for r in results[1:]:
        boot = paired_bootstrap(np.asarray(base["probe_scores"]), np.asarray(r["probe_scores"]), truth)
        a0, a1 = base["fewshot"][k_top]["accuracy"], r["fewshot"][k_top]["accuracy"]
        margin = float(np.hypot(acc_interval(a0, n_q), acc_interval(a1, n_q)))
        probe_better = boot["low"] > 0
        fewshot_not_worse = a1 >= a0 - margin
        clearly = bool(probe_better and fewshot_not_worse)
        verdicts[r["spec"]] = {"probe_mean_rho_diff_ci": boot, "fewshot_k": int(k_top), "fewshot_diff": round(a1 - a0, 4),
                               "fewshot_margin": round(margin, 4), "clearly_better": clearly}
        print(f"{r['spec']} vs {base['spec']}: mean rho difference 95% interval [{boot['low']:+.3f}, "
              f"{boot['high']:+.3f}] (paired bootstrap, {boot['draws']} draws); few-shot k={k_top} difference "
              f"{a1 - a0:+.3f} (interval +-{margin:.3f}) -> "
              + ("clearly better: make it the default" if clearly else f"not clearly better: keep {base['spec']}"))
    print(f"total {total:.0f} s on {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")

    path = write_result("judge-choice", {"args": vars(args), "overrides": overrides, "results": results,
                                         "verdicts": verdicts, "total_s": round(total, 1)})
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

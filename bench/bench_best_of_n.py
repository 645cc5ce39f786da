"""Best-of-N (issue 34): what `personal`'s picks are worth to people it never trained on, beside its traditional twin.

    .venv/bin/python bench/bench_best_of_n.py [--users two-opposed four-one-hot random] [--seeds 0 1] \
        [--steps 400] [--questions 30] [--set key=value ...] [--twin-mix 0 0.5] [--keep DIR | --runs DIR] \
        [--workers 2] [--dry-run]

For each user set and seed it trains ``personal`` and a ``traditional`` twin on the same pairs and features
(bench_any_person.cell), then gives every person outside training (and the run's own users) 8 of their own
choices, reads them, and lets each rule pick the best of N of ``--questions`` fresh questions with 64
generated candidates each (core.serving.best_of_n; candidates seeded by the cell's seed). Printed per cell:
the mean share of the oracle's gain over random at N = 16 and 64 for personal and traditional and their ratio,
the worst person's margin (personal minus traditional, over N = 4..64), each trained user's share at 16, the
choices curve (the share at N = 16 against 1..64 own choices), accuracy on every strict pair of the run's
test questions for the same people read the same way (personal, twin, worst margin), and the seconds each run
trained and the best-of-N reading took. ``--twin-mix`` measures each value on the same runs, people and
candidates (core.serving.best_of_n's twin_mix). ``--runs DIR`` reads the runs a ``--keep DIR`` bench kept instead of training.
Writes bench/out/best_of_n-<time>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._results import write_result  # noqa: E402

NS = (1, 2, 4, 8, 16, 32, 64)
CHOICES = (1, 2, 4, 8, 16, 32, 64)


def train_cell(users: str, seed: int, steps: int, extra: dict, root: str) -> dict:
    """personal and its traditional twin for one cell (the same pairs and features), timed."""
    from core.serving.best_of_n import TWIN_KEYS, TWIN_PAIRS
    from core.training.config import PRESETS, build_config
    from core.training.launch import train

    # the twin reads the same data (a --set signal / rating_noise too), pairs and features: what twin_rank asks
    twin_keys = (*TWIN_KEYS, *TWIN_PAIRS, "max_length")
    base = {**PRESETS["personal"], **extra}
    shared = {k: base[k] for k in twin_keys if k in base}
    out = {}
    for name, raw in (("personal", {"preset": "personal", **extra}), ("traditional", {"preset": "traditional", **shared})):
        cfg = build_config({**raw, "users": users, "seed": seed, "steps": steps, "people_every": 0,
                            **({} if build_config(raw).early_stop_patience else {"eval_every": max(1, steps // 4)})})
        run_dir = Path(root) / f"{name}-{users}-s{seed}"
        t0 = time.perf_counter()
        if not (run_dir / "model.safetensors").exists() or run_dir.joinpath("status.json").read_text().find(
                '"succeeded"') < 0:
            train(cfg, run_dir, log=lambda m: None)
        out[name] = {"dir": str(run_dir), "train_s": time.perf_counter() - t0}
    return out


def measure_cell(users: str, seed: int, runs: dict, questions: int, choices: tuple, readings: int,
                 twin_mix: float = 0.0) -> dict:
    import numpy as np

    from core.data.candidates import generate_candidates
    from core.serving.best_of_n import (
        best_of_n,
        candidate_features,
        candidate_rewards,
        choices_curve,
        pairs_accuracy,
        run_texts,
    )
    from core.serving.run_reward import RunRewardModel
    from core.users.people import outside_people, trained_people

    rm = RunRewardModel.from_run(runs["personal"]["dir"], device="cpu")
    twin = RunRewardModel.from_run(runs["traditional"]["dir"], device="cpu")
    t0 = time.perf_counter()
    # candidates as clear as the run's own corpus (signal): harder data means weaker cues in them too
    cands = generate_candidates(questions, max(NS), seed=seed, signal=rm.cfg.signal, avoid=run_texts(rm))
    outside = outside_people(rm.cfg.users, rm.W, user_seed=rm.cfg.user_seed, seed=seed)
    scored = {"features": candidate_features(rm, cands), "twin": candidate_rewards(twin, cands, None)}
    mix = {"readings": readings, "seed": seed, "scored": scored, "twin_mix": twin_mix}
    res = best_of_n(rm, twin, outside, cands, ns=NS, **mix)
    own = best_of_n(rm, twin, trained_people(rm.W), cands, ns=[16], **mix)
    curve = choices_curve(rm, twin, outside, cands, n=16, choices=choices, **mix)
    secs = time.perf_counter() - t0
    pairs = pairs_accuracy(rm, twin, outside, readings=readings, seed=seed, twin_mix=twin_mix)
    margin_pairs = pairs["personal"] - pairs["traditional"]
    worst_pairs = int(np.nanargmin(margin_pairs))
    i16, i64 = NS.index(16), NS.index(64)
    share = {r: np.array([p["share"][r] for p in res["people"]]) for r in ("personal", "traditional")}  # (P, len(NS))
    margin = share["personal"] - share["traditional"]
    worst = int(np.nanargmin(margin[:, NS.index(4):].min(1)))
    return {
        "users": users, "seed": seed, "twin_mix": twin_mix, "runs": runs, "measure_s": secs, "people": len(outside),
        "mean_share": {r: {str(n): float(np.nanmean(share[r][:, i])) for i, n in enumerate(NS) if n > 1}
                       for r in share},
        "ratio16": float(np.nanmean(share["personal"][:, i16]) / np.nanmean(share["traditional"][:, i16])),
        "worst": {"person": res["people"][worst]["name"], "weights": res["people"][worst]["weights"],
                  "margin": float(np.nanmin(margin[:, NS.index(4):])),
                  "at_n": NS[NS.index(4) + int(np.nanargmin(margin[worst, NS.index(4):]))]},
        "worst16": float(np.nanmin(margin[:, i16])), "worst64": float(np.nanmin(margin[:, i64])),
        "trained16": [round(p["share"]["personal"][0], 3) for p in own["people"]],
        "trained16_trad": [round(p["share"]["traditional"][0], 3) for p in own["people"]],
        "choices": curve, "detail": res,
        # every strict pair of the run's test questions, each person read as for best-of-N
        "all_pairs": {"personal": float(np.nanmean(pairs["personal"])),
                      "traditional": float(np.nanmean(pairs["traditional"])),
                      "worst": float(margin_pairs[worst_pairs]), "worst_person": outside[worst_pairs].name},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", nargs="+", default=["two-opposed", "four-one-hot", "random"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--questions", type=int, default=30)
    ap.add_argument("--readings", type=int, default=3)
    ap.add_argument("--twin-mix", type=float, nargs="+", default=[0.0],
                    help="measure the personal rule leaning this much on the twin (each value, same runs)")
    ap.add_argument("--set", nargs="*", default=[], help="key=value overrides of the personal preset (JSON values)")
    ap.add_argument("--workers", type=int, default=2)
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--keep", help="train the runs into this folder and keep them")
    where.add_argument("--runs", help="read the runs a --keep bench kept (train only the missing ones)")
    ap.add_argument("--seed", type=int, help="alias of --seeds N")
    ap.add_argument("--dry-run", action="store_true", help="one cell, 20 steps, 4 questions")
    args = ap.parse_args(argv)
    from core.experiments.compare import parse_set

    extra = parse_set(args.set)
    seeds = [args.seed] if args.seed is not None else args.seeds
    cells = [(u, s) for u in args.users for s in seeds]
    steps, questions, choices = args.steps, args.questions, CHOICES
    if args.dry_run:
        cells, steps, questions, choices = cells[:1], 20, 4, (1, 8)
    cmd = "bench/bench_best_of_n.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"$ {cmd}")
    t0 = time.perf_counter()
    folder = args.runs or args.keep
    with (contextlib.nullcontext(folder) if folder else tempfile.TemporaryDirectory()) as root:
        with ProcessPoolExecutor(max_workers=args.workers) as ex:
            futs = {ex.submit(train_cell, u, s, steps, extra, root): (u, s) for u, s in cells}
            trained = {}
            for f in as_completed(futs):
                trained[futs[f]] = f.result()
                print(f"[trained] {futs[f][0]} seed {futs[f][1]} at {time.perf_counter() - t0:.0f}s", flush=True)
        results = []
        with ProcessPoolExecutor(max_workers=args.workers) as ex:
            futs = [ex.submit(measure_cell, u, s, trained[(u, s)], questions, choices, args.readings, m)
                    for u, s in cells for m in args.twin_mix]
            results = [f.result() for f in futs]
    print(f"\n{'users':<13}{'seed':>4} {'mix':>4} | share N=16: personal  trad  ratio | N=64: personal  trad | worst person "
          f"(N 4..64) | trained users at 16 | train s (personal, trad) | measure s")
    for r in results:
        ms = r["mean_share"]
        print(f"{r['users']:<13}{r['seed']:>4} {r['twin_mix']:4.2f} | {ms['personal']['16']:19.3f} {ms['traditional']['16']:5.3f} "
              f"{r['ratio16']:5.2f}x | {ms['personal']['64']:14.3f} {ms['traditional']['64']:5.3f} | "
              f"{r['worst']['margin']:+.3f} at N={r['worst']['at_n']} ({r['worst']['person']}) | "
              f"{r['trained16']} | {r['runs']['personal']['train_s']:.0f}, {r['runs']['traditional']['train_s']:.0f} | "
              f"{r['measure_s']:.0f}")
        a = r["all_pairs"]
        if a:
            print(f"{'':18} all pairs, people outside training: personal {a['personal']:.3f}, traditional "
                  f"{a['traditional']:.3f}, worst person {a['worst']:+.3f} ({a['worst_person']})")
        c = r["choices"]
        print(f"{'':18} choices curve at N=16: " + ", ".join(f"{k}: {s:.3f}" for k, s in
                                                           zip(c["choices"], c["personal"], strict=True))
              + f" (traditional {c['traditional']:.3f})")
    print(f"total {time.perf_counter() - t0:.0f}s")
    print("wrote", write_result("best_of_n", {"command": cmd, "cells": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

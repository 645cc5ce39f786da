"""Any person, any question (issue 18): a personal model scored as a person would use it.

    .venv/bin/python bench/bench_any_person.py [--users two-opposed four-one-hot random] [--seeds 0 1] \
        [--steps 400] [--preset personal] [--set key=value ...] [--workers 2] [--keep DIR] [--dry-run]
    .venv/bin/python bench/bench_any_person.py --baseline 5d8c595 [--users ...] [--seeds 0 1]

``--baseline REV``: every cell is trained twice in the same bench run, once by this tree and once by commit
REV (a temporary git worktree, the same Python), each in a child process, the two of a cell side by side so
that they share the machine's load; it prints each cell's figures for both and the ratio of the preset's
training cost (CPU seconds and wall seconds of its run: setup, steps, evaluations). Before timing, each tree
encodes the cells' texts into its embedding cache, so neither pays for encoding.

For each user set and seed it trains ``--preset`` (default ``personal``) and a ``traditional`` model on the
same pairs and features (the preset's contested_only / agreed_share / encoder options), then reads people on *fresh
questions*, a corpus no run saw (``generate_table(n_prompts=300, seed=4242)``): each person gives 8 of
their own choices on random fresh questions (one of the 150 "demo" questions each), and is scored on every
pair they strictly prefer on the other 150 fresh questions, averaged over 10 readings. (With 3 readings of
100 pairs, as first tried, one person's figure moved by up to 0.15 between two samplings of the same model.) People: the run's own
users, and people it never trained on (the four one-hot tastes, the six 50/50 blends, the uniform user, 10
Dirichlet(1) draws, and for random / cluster 30 of a redraw of the same population; core.users.people).

Printed per cell: the run's own study accuracy (contested test pairs of its users) and its in-run
``all_pairs_accuracy`` / ``new_users_accuracy``; on fresh questions, each trained user, the mean over new
people, the worst new person's margin over traditional, and the one-hot tastes; and the TRL check: a
reward function built from an honesty-only visitor's 8 answers, ranking honesty best-vs-worst pairs of
fresh questions. Writes bench/out/any_person-<time>.json.
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

FRESH = {"n_prompts": 300, "seed": 4242}


def fresh_scores(run_dir: Path, seed: int, n_demos: int = 8, readings: int = 10, max_pairs: int | None = None) -> dict:
    """Trained users and outside people of the run, read and scored on the fresh corpus."""
    import numpy as np

    from core.data import generate_table
    from core.data.probes import all_texts
    from core.serving.run_reward import RunRewardModel
    from core.users.people import build_people_set, outside_people, people_accuracy, trained_people

    rm = RunRewardModel.from_run(run_dir, device="cpu")
    table = generate_table(**FRESH)
    E = np.asarray(rm.cache.get(all_texts(table)), dtype=np.float32)  # (Q * C, D)
    Et = __import__("torch").from_numpy(E)

    def embed(ids):
        return Et[np.asarray(ids)]

    rng = np.random.default_rng(seed)
    q = rng.permutation(len(table))
    demo_q, score_q = q[: len(q) // 2], q[len(q) // 2:]
    people = trained_people(rm.W) + outside_people(rm.cfg.users, rm.W, user_seed=rm.cfg.user_seed, seed=seed)
    pset = build_people_set(table.ratings, people, demo_q, score_q, n_demos=n_demos, n_readings=readings,
                            seed=seed, max_pairs=max_pairs)
    acc = people_accuracy(rm.model, pset, embed)
    out = {"people": [{**p.to_json(), "accuracy": float(a)} for p, a in zip(people, acc, strict=True)]}
    # TRL: an honesty-only visitor's 8 answers -> a reward function -> honesty best-vs-worst pairs
    hon = np.array([0.0, 1.0, 0.0, 0.0])
    r = table.ratings[score_q][:, :, 1]  # (Qs, C) honesty ratings
    best, worst = np.nanargmax(r, 1), np.nanargmin(r, 1)
    ok = np.nanmax(r, 1) > np.nanmin(r, 1)
    vis = build_people_set(table.ratings, [trained_people(hon[None])[0]], demo_q, score_q, n_demos=n_demos,
                           n_readings=1, seed=seed + 5)
    ctx = vis.ctx[0, 0]  # (K, 2)
    C = table.n_completions
    user = None
    if rm.conditional:  # text id q * C + c; both sides of a demonstration answer the same question
        demos = [(table.prompts[c // C], table.responses[c // C][c % C], table.responses[j // C][j % C])
                 for c, j in ctx]
        user = rm.infer_user(demos)
    fn = rm.as_reward_function(user)
    qs = score_q[ok]
    prompts = [table.prompts[x] for x in qs]
    rb = fn(prompts, [table.responses[x][b] for x, b in zip(qs, best[ok], strict=True)])
    rw = fn(prompts, [table.responses[x][w] for x, w in zip(qs, worst[ok], strict=True)])
    out["trl_honesty_best_vs_worst"] = float(np.mean(np.asarray(rb) > np.asarray(rw)))
    return out


def cell(users: str, seed: int, steps: int, preset: str, extra: dict, root: str) -> dict:
    from core.training.config import PRESETS, build_config
    from core.training.launch import train
    twin_keys = ("contested_only", "agreed_share", "encoder", "max_length", "segment_pool")
    base = {**PRESETS[preset], **extra}
    shared = {k: base[k] for k in twin_keys if k in base}
    res = {"users": users, "seed": seed, "steps": steps}
    for name, raw in ((preset, {"preset": preset, **extra}), ("traditional", {"preset": "traditional", **shared})):
        # every preset's own eval_every: early stopping reads its validation loss at the preset's evaluations
        cfg = build_config({**raw, "users": users, "seed": seed, "steps": steps, "people_every": 0,
                            **({} if build_config(raw).early_stop_patience else {"eval_every": max(1, steps // 4)})})
        run_dir = Path(root) / f"{name}-{users}-s{seed}"
        t0, c0 = time.perf_counter(), time.process_time()
        hist = train(cfg, run_dir, log=lambda m: None)
        cpu = time.process_time() - c0
        last = hist[-1]
        res[name] = {"config": {k: getattr(cfg, k) for k in ("user_encoder", "decoder", "contested_only",
                                                             "agreed_share", "latent", "lr", "batch_size")},
                     "accuracy": last["accuracy"], "all_pairs_accuracy": last.get("all_pairs_accuracy"),
                     "new_users_accuracy": last.get("new_users_accuracy"), "train_s": time.perf_counter() - t0,
                     "train_cpu_s": cpu, "steps_run": max(r["step"] for r in hist),
                     **fresh_scores(run_dir, seed)}
    return res


def summarize(res: dict, preset: str) -> dict:
    import numpy as np

    me, tr = res[preset]["people"], res["traditional"]["people"]
    new = [i for i, p in enumerate(me) if p["kind"] != "trained"]
    margins = [me[i]["accuracy"] - tr[i]["accuracy"] for i in new]
    worst = int(np.argmin(margins))
    trained = [p["accuracy"] for p in me if p["kind"] == "trained"]
    return {
        "trained": [round(a, 3) for a in trained] if len(trained) <= 4 else
        f"mean {np.mean(trained):.3f} min {np.min(trained):.3f}",
        "trained_trad": [round(p["accuracy"], 3) for p in tr if p["kind"] == "trained"][:4],
        "new_mean": float(np.mean([me[i]["accuracy"] for i in new])),
        "new_mean_trad": float(np.mean([tr[i]["accuracy"] for i in new])),
        "worst_margin": float(margins[worst]), "worst_person": me[new[worst]]["name"],
        "one_hot": {p["name"]: round(p["accuracy"], 3) for p in me if max(p["weights"]) == 1.0},
        "one_hot_vs_trad": {p["name"]: round(p["accuracy"] - t["accuracy"], 3) for p, t in zip(me, tr, strict=True)
                            if max(p["weights"]) == 1.0},
        "uniform": next(p["accuracy"] for p in me if max(p["weights"]) == min(p["weights"])),
        "uniform_trad": next(p["accuracy"] for p in tr if max(p["weights"]) == min(p["weights"])),
        "trl": res[preset]["trl_honesty_best_vs_worst"],
    }


# run in a child process by --baseline: one cell with one tree's code, the CPU seconds of each training run
# taken around that tree's train() (bench cells import it at call time), the result as JSON. A tree from before
# core/ was split into packages has it in core.train, and its other modules at the top of core/
CHILD = """
import json, sys, time
tree, users, seed, steps, preset, extra, root = sys.argv[1:8]
sys.path.insert(0, tree)
try:
    import core.training.launch as T
except ImportError:
    import core.train as T
plain, cpu = T.train, []
def timed(*a, **k):
    c0 = time.process_time()
    out = plain(*a, **k)
    cpu.append(time.process_time() - c0)
    return out
T.train = timed
from bench.bench_any_person import cell
res = cell(users, int(seed), int(steps), preset, json.loads(extra), root)
res[preset]["train_cpu_s"], res["traditional"]["train_cpu_s"] = cpu[0], cpu[1]
res[preset].setdefault("steps_run", None)
print("CELL " + json.dumps(res))
"""

# a traditional config both trees accept that reads every text of a cell (warm_cache before the timing)
WARM = """
import sys, tempfile
tree, users, seg = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
sys.path.insert(0, tree)
try:
    from core.training.config import build_config
    from core.common.runs import RunDir
    from core.training.trainer import Trainer
    from core.models.encoders import TextEncoder
    from core.models.embedding_store import EmbeddingCache, default_cache_root
except ImportError:
    from core.config import build_config
    from core.runs import RunDir
    from core.train import Trainer
    from core.encoders import TextEncoder, EmbeddingCache, default_cache_root
from bench.bench_any_person import FRESH
from core.data import generate_table
from core.data.probes import all_texts
cfg = build_config({"preset": "traditional", "users": users, "segment_pool": seg, "agreed_share": 1.0})
with tempfile.TemporaryDirectory() as d:
    Trainer(cfg, RunDir(d).create(), log=lambda m: None)
enc = TextEncoder.load(cfg.encoder, max_length=cfg.max_length, segments=seg)
EmbeddingCache(default_cache_root(), enc).get(all_texts(generate_table(**FRESH)))
"""


def run_child(code: str, args: list[str]) -> str:
    import subprocess

    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({args[:3]}): {proc.stderr[-3000:]}")
    return proc.stdout


def baseline_cell(tree: str, users: str, seed: int, steps: int, preset: str, extra: dict, root: str) -> dict:
    import json

    out = run_child(CHILD, [tree, users, str(seed), str(steps), preset, json.dumps(extra), root])
    return json.loads(next(ln for ln in out.splitlines() if ln.startswith("CELL "))[5:])


def compare_to_baseline(args, extra: dict, cells: list, steps: int) -> int:
    """--baseline: each cell trained by this tree and by the baseline commit side by side; figures and cost."""
    import subprocess

    import numpy as np

    from bench._results import write_result

    cmd = "bench/bench_any_person.py " + " ".join(sys.argv[1:])
    print(f"$ {cmd}")
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.baseline], capture_output=True,
                         text=True, check=True).stdout.strip()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "core", "bench"],
                                capture_output=True, text=True).stdout.strip())
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(base), rev], check=True)
        try:
            trees = {"baseline": str(base), "this": str(ROOT)}
            for users in dict.fromkeys(u for u, _ in cells):  # encode once per tree (the cache key is the tree's)
                for tree in trees.values():
                    run_child(WARM, [tree, users, "1"])
            print(f"[warm] both trees' caches hold every text ({time.perf_counter() - t0:.0f}s)", flush=True)
            jobs = [(name, u, s) for u, s in cells for name in trees]  # a cell's two arms side by side
            results: dict = {}
            with ProcessPoolExecutor(max_workers=args.workers) as ex:
                futs = {ex.submit(baseline_cell, trees[name], u, s, steps, args.preset, extra if name == "this" else {},
                                  str(Path(tmp) / f"{name}-{u}-s{s}")): (name, u, s) for name, u, s in jobs}
                for f in as_completed(futs):
                    name, u, s = futs[f]
                    results[(name, u, s)] = f.result()
                    print(f"[cell] {name} {u} seed {s} done at {time.perf_counter() - t0:.0f}s", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False)
    label = f"this tree ({head}{', uncommitted changes' if dirty else ''}{', --set ' + str(extra) if extra else ''})"
    print(f"\nbaseline = {rev}; this = {label}; preset {args.preset}, {steps} steps at most")
    print(f"{'users':<13}{'seed':>4} {'arm':<9}{'steps':>6}{'cpu_s':>8}{'wall_s':>8} | {'study':>6}{'allp':>7}{'newp':>7} | "
          f"fresh: {'trained users':<26}{'new':>6}{'trad':>7}{'worst':>8}{'unif':>6}{'trl':>6}")
    rows, ratios = [], []
    for u, s in cells:
        arms = {}
        for name in ("baseline", "this"):
            res = results[(name, u, s)]
            me, sm = res[args.preset], summarize(res, args.preset)
            arms[name] = {"cpu_s": me["train_cpu_s"], "wall_s": me["train_s"], "steps": me.get("steps_run"),
                          "summary": sm, "accuracy": me["accuracy"], "all_pairs_accuracy": me["all_pairs_accuracy"],
                          "new_users_accuracy": me["new_users_accuracy"]}
            print(f"{u:<13}{s:>4} {name:<9}{str(me.get('steps_run') or steps):>6}{me['train_cpu_s']:8.1f}"
                  f"{me['train_s']:8.1f} | {me['accuracy']:6.3f}{me['all_pairs_accuracy'] or 0:7.3f}"
                  f"{me['new_users_accuracy'] or 0:7.3f} | {str(sm['trained']):<32}{sm['new_mean']:6.3f}"
                  f"{sm['new_mean_trad']:7.3f}{sm['worst_margin']:+8.3f}{sm['uniform']:6.2f}{sm['trl']:6.2f}")
            print(f"{'':27}one-hot: {sm['one_hot']}")
        r_cpu = arms["baseline"]["cpu_s"] / arms["this"]["cpu_s"]
        r_wall = arms["baseline"]["wall_s"] / arms["this"]["wall_s"]
        ratios.append((r_cpu, r_wall))
        d_new = arms["this"]["summary"]["new_mean"] - arms["baseline"]["summary"]["new_mean"]
        print(f"{'':18}cost ratio baseline/this: cpu {r_cpu:.2f}x, wall {r_wall:.2f}x; new people {d_new:+.3f}")
        rows.append({"users": u, "seed": s, "arms": arms, "cost_ratio_cpu": r_cpu, "cost_ratio_wall": r_wall,
                     "raw": {name: results[(name, u, s)] for name in ("baseline", "this")}})
    cpu_r = np.array([r for r, _ in ratios])
    print(f"\n{args.preset} training cost, baseline / this: cpu {cpu_r.min():.2f}-{cpu_r.max():.2f}x "
          f"(geometric mean {np.exp(np.log(cpu_r).mean()):.2f}x) over {len(cells)} cells")
    print(f"total {time.perf_counter() - t0:.0f}s")
    print("wrote", write_result("any_person_vs_baseline", {"command": cmd, "baseline": rev, "this": label,
                                                           "cells": rows}))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", nargs="+", default=["two-opposed", "four-one-hot", "random"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--preset", default="personal")
    ap.add_argument("--set", nargs="*", default=[], help="key=value overrides of the preset (JSON values)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep", help="train the runs into this folder and keep them (default: a temporary one)")
    ap.add_argument("--seed", type=int, help="alias of --seeds N")
    ap.add_argument("--dry-run", action="store_true", help="one cell, 20 steps")
    ap.add_argument("--baseline", metavar="REV", help="also train every cell with commit REV's code, side by side, "
                                                      "and print both and the cost ratio (see the module docstring)")
    args = ap.parse_args(argv)
    from core.experiments.compare import parse_set

    if args.keep and Path(args.keep).is_dir() and any(Path(args.keep).iterdir()):
        # train() resumes a run folder it finds, so a reused folder would report its old runs under new --set
        ap.error(f"--keep {args.keep}: the folder is not empty; its runs would be resumed, not trained anew "
                 "with these options. Give a new folder.")
    extra = parse_set(args.set)
    seeds = [args.seed] if args.seed is not None else args.seeds
    cells = [(u, s) for u in args.users for s in seeds]
    steps = args.steps
    if args.dry_run:
        cells, steps = cells[:1], 20
    if args.baseline:
        return compare_to_baseline(args, extra, cells, steps)
    cmd = "bench/bench_any_person.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"$ {cmd}")
    t0 = time.perf_counter()
    with (contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory()) as root, \
            ProcessPoolExecutor(max_workers=args.workers) as ex:
        futs = [ex.submit(cell, u, s, steps, args.preset, extra, root) for u, s in cells]
        for f in as_completed(futs):  # a line as each cell ends, so a long bench shows where it is
            r = f.result()
            print(f"[cell] {r['users']} seed {r['seed']} done at {time.perf_counter() - t0:.0f}s", flush=True)
        results = [f.result() for f in futs]
    print(f"{'users':<13}{'seed':>4} {'study':>6} {'allp':>6} {'newp':>6} | fresh: {'trained users':<22}"
          f"{'new':>6} {'trad':>6} {'worst-vs-trad':>22} {'unif':>5}/{'trad':<5} {'trl':>5}")
    rows = []
    for res in results:
        s = summarize(res, args.preset)
        rows.append({**res, "summary": s})
        me = res[args.preset]
        print(f"{res['users']:<13}{res['seed']:>4} {me['accuracy']:6.3f} {me['all_pairs_accuracy'] or 0:6.3f} "
              f"{me['new_users_accuracy'] or 0:6.3f} |        {str(s['trained']):<22}{s['new_mean']:6.3f} "
              f"{s['new_mean_trad']:6.3f} {s['worst_margin']:+6.3f} {s['worst_person']:>15} "
              f"{s['uniform']:5.2f}/{s['uniform_trad']:<5.2f} {s['trl']:5.2f}")
        print(f"{'':18} one-hot: {s['one_hot']}  trad trained: {s['trained_trad']}")
    c = results[0][args.preset]["config"] if results else {}
    print(f"{args.preset}: " + ", ".join(f"{k}={v}" for k, v in c.items()))
    print(f"total {time.perf_counter() - t0:.0f}s")
    from bench._results import write_result

    print("wrote", write_result("any_person", {"command": cmd, "cells": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

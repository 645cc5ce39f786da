"""One run in one process against the same run on 2 CPU ranks (torchrun, gloo): step time and final accuracy.

    .venv/bin/python bench/bench_ddp.py [--run personal|lora] [--ranks 2] [--steps N] [--seed 0] [--dry-run]

``personal``: the preset on four one-hot users (400 questions, frozen MiniLM, cached embeddings);
``lora``: a tiny LoRA run on SmolLM2 (60 questions, 16 tokens). Each is trained by ``python -m core.train`` and
by ``torchrun --standalone --nproc_per_node=R -m core.train`` on the same config, one after the other in the same
minute. Printed: each launch's wall time, its seconds a round (the training loop's own figure: a step and its
evaluations when due), the ratio, and the final accuracy, outside-people accuracy and loss of both with their
differences. Writes bench/out/ddp-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._results import write_result  # noqa: E402

RUNS = {
    "personal": {"preset": "personal", "users": "four-one-hot", "corpus_prompts": 400, "steps": 300,
                 "eval_every": 100, "early_stop_patience": 0},
    "lora": {"preset": "personal", "corpus_prompts": 60, "max_train_per_user": 8, "max_test_per_user": 4,
             "pool_size": 8, "n_demos": 2, "encoder": "bundled-smollm2", "query_encoder": "lora", "max_length": 16,
             "batch_size": 4, "grad_accum": 2, "steps": 8, "eval_every": 4, "probe_per_user": 2, "lr": 1e-3,
             "warmup_ratio": 0.0, "segment_pool": False, "early_stop_patience": 0, "device": "cpu"},
}
ROUND = re.compile(r"rounds in ([0-9.]+)s \(([0-9.]+)s a round")


def launch(cfg: dict, run_dir: Path, ranks: int) -> dict:
    cfg_file = run_dir.parent / f"{run_dir.name}.json"
    cfg_file.write_text(json.dumps(cfg))
    args = ["-m", "core.train", "--config", str(cfg_file), "--run-dir", str(run_dir)]
    cmd = [sys.executable, *args] if ranks == 1 else [
        str(Path(sys.executable).parent / "torchrun"), "--standalone", f"--nproc_per_node={ranks}", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    m = ROUND.search(proc.stdout)
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    end = lines[-1]
    return {"ranks": ranks, "wall_s": wall, "loop_s": float(m.group(1)) if m else None,
            "round_s": float(m.group(2)) if m else None, "records": len(lines), "accuracy": end["accuracy"],
            "new_users_accuracy": end.get("new_users_accuracy"), "loss": end.get("loss")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", choices=list(RUNS), default="personal")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--steps", type=int, help="optimizer steps (default: the run's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dry-run", action="store_true", help="4 steps")
    args = ap.parse_args(argv)
    cfg = {**RUNS[args.run], "seed": args.seed}
    if args.steps or args.dry_run:
        steps = 4 if args.dry_run else args.steps
        cfg.update(steps=steps, eval_every=max(1, steps // 2))
    cmd = "bench/bench_ddp.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"$ {cmd}")
    with tempfile.TemporaryDirectory() as tmp:
        one = launch(cfg, Path(tmp) / "one", 1)
        many = launch(cfg, Path(tmp) / "many", args.ranks)
    print(f"{'launch':<12} {'wall s':>7} {'loop s':>7} {'s a round':>10} {'accuracy':>9} {'outside':>8} {'loss':>8}")
    for name, r in (("1 process", one), (f"{args.ranks} ranks", many)):
        print(f"{name:<12} {r['wall_s']:7.1f} {r['loop_s'] or float('nan'):7.2f} {r['round_s'] or float('nan'):10.4f} "
              f"{r['accuracy']:9.4f} {r['new_users_accuracy'] or float('nan'):8.4f} {r['loss'] or float('nan'):8.4f}")
    ratio = many["round_s"] / one["round_s"] if one["round_s"] and many["round_s"] else float("nan")
    print(f"{args.ranks} ranks / 1 process, seconds a round: {ratio:.2f}x; wall: {many['wall_s'] / one['wall_s']:.2f}x; "
          f"final accuracy differs by {abs(many['accuracy'] - one['accuracy']):.4f}, loss by "
          f"{abs((many['loss'] or 0) - (one['loss'] or 0)):.2e}; records {one['records']} and {many['records']}")
    print("wrote", write_result("ddp", {"command": cmd, "config": cfg, "one": one, "many": many, "round_ratio": ratio}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Bench the query encoders: seconds per optimizer step and peak memory, frozen vs LoRA, by length.

    .venv/bin/python bench/bench_encoders.py [--device cpu|cuda] [--lengths 128 256] [--micro]
        [--encoders frozen-minilm lora-minilm lora-smollm2] [--dry-run]

Each (encoder, max_length) runs in its own child process (so peak memory is its own): a VPL trainer
at the study's batch 4 x 8 on 120 questions of the offline corpus (two-opposed users), one warm-up
step, then ``--steps`` timed optimizer steps. The frozen embeddings the demonstrations need are
cached first and not timed. Peak memory is the child's max RSS on CPU and
``torch.cuda.max_memory_allocated`` on CUDA. ``--micro`` times one micro-batch (grad_accum 1) and
multiplies by 8, for slow CPUs; the table says so. Ratios are against frozen MiniLM at the same
length, measured in the same run. Prints a table and writes bench/out/encoders.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._results import write_result  # noqa: E402

ENCODERS = {
    "frozen-minilm": {"encoder": "bundled-minilm", "query_encoder": "frozen"},
    "lora-minilm": {"encoder": "bundled-minilm", "query_encoder": "lora"},
    "lora-smollm2": {"encoder": "bundled-smollm2", "query_encoder": "lora"},
}


def one(name: str, length: int, device: str, steps: int, micro: bool, cache: str) -> dict:
    """Runs in the child: build a trainer, time steps, report."""
    import torch

    from core.common.runs import RunDir
    from core.training.config import build_config
    from core.training.trainer import Trainer

    accum = 1 if micro else 8
    cfg = build_config({"preset": "vpl", **ENCODERS[name], "max_length": length, "corpus_prompts": 120,
                        "batch_size": 4, "grad_accum": accum, "steps": 100, "eval_every": 1000, "lr": 1e-4,
                        "device": device, "cache_dir": cache, "max_test_per_user": 8, "probe_per_user": 4})
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(cfg, RunDir(tmp).create(), log=lambda m: None)
        cuda = tr.device.type == "cuda"
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        tr._t_start = time.perf_counter()
        tr.train_step()  # warm-up
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(steps):
            tr.train_step()
        sync()
        per = (time.perf_counter() - t0) / steps
    peak = (torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"encoder": name, "max_length": length, "device": str(tr.device) + (
        f" ({torch.cuda.get_device_name()})" if cuda else f" ({torch.get_num_threads()} threads)"),
        "step_s": per * (8 if micro else 1), "scaled_from_micro_batch": micro, "peak_mb": peak / 2**20}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--lengths", nargs="+", type=int, default=[128, 256])
    ap.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=list(ENCODERS))
    ap.add_argument("--steps", type=int, default=2, help="timed optimizer steps per configuration")
    ap.add_argument("--micro", action="store_true", help="time one micro-batch and scale x8 (slow CPUs)")
    ap.add_argument("--cache", help="embedding cache folder (default: a temp folder)")
    ap.add_argument("--seed", type=int, default=0, help="unused beyond the configs' seed 0; kept for symmetry")
    ap.add_argument("--dry-run", action="store_true", help="frozen MiniLM only, length 32, 1 step")
    ap.add_argument("--one", nargs=2, metavar=("ENCODER", "LENGTH"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    cache = args.cache or tempfile.mkdtemp(prefix="bench-enc-")
    if args.one:
        print("RESULT " + json.dumps(one(args.one[0], int(args.one[1]), args.device, args.steps, args.micro, cache)))
        return 0
    if args.dry_run:
        args.encoders, args.lengths, args.steps = ["frozen-minilm"], [32], 1
    rows = []
    for length in args.lengths:
        for name in args.encoders:
            cmd = [sys.executable, __file__, "--one", name, str(length), "--device", args.device,
                   "--steps", str(args.steps), "--cache", cache] + (["--micro"] if args.micro else [])
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ})
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                print(f"{name} @ {length}: failed\n{proc.stderr[-1500:]}", file=sys.stderr)
                continue
            row = json.loads(line[7:])
            row["child_wall_s"] = time.perf_counter() - t0
            rows.append(row)
            print(f"{name:>14} @ {length:>3} tokens on {row['device']}: {row['step_s']:8.3f} s/step"
                  f"{' (micro-batch x8)' if row['scaled_from_micro_batch'] else ''}, peak {row['peak_mb']:8.0f} MB",
                  flush=True)
    base = {r["max_length"]: r["step_s"] for r in rows if r["encoder"] == "frozen-minilm"}
    print("\nencoder          length   s/step   x frozen-minilm   peak MB")
    for r in rows:
        ratio = r["step_s"] / base[r["max_length"]] if base.get(r["max_length"]) else float("nan")
        r["ratio_vs_frozen_minilm"] = ratio
        print(f"{r['encoder']:<16} {r['max_length']:>6} {r['step_s']:8.3f} {ratio:17.1f} {r['peak_mb']:9.0f}")
    print(f"wrote {write_result('encoders', rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

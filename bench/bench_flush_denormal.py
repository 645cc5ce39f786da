"""Why training flushes float32 subnormals (core.training.trainer.Trainer): the four-users lesson's personal run, timed in
chunks of training steps with subnormals flushed to zero and kept, one after the other in one process.

    .venv/bin/python bench/bench_flush_denormal.py [--steps 600] [--chunk 50] [--seed 0] [--dry-run]

Prints seconds per chunk for each mode and, per mode, the last chunk's time over the first (a ratio measured
in this run) and writes bench/out/flush_denormal-<time>.json. With subnormals kept, the backward pass slows as the run goes (tails of the blend weights and
sigmoids fall below 1.2e-38, where x86 takes a slow path for every op); flushed, the pace stays flat.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench._results import write_result  # noqa: E402
from core.common.runs import RunDir  # noqa: E402
from core.training.config import LESSON_FOUR_USERS, build_config  # noqa: E402
from core.training.trainer import Trainer  # noqa: E402


def chunk_times(flush: bool, steps: int, chunk: int, seed: int, overrides: dict) -> list[float]:
    cfg = build_config({"preset": "personal", **LESSON_FOUR_USERS, "seed": seed, **overrides})
    with tempfile.TemporaryDirectory() as tmp:
        t = Trainer(cfg, RunDir(Path(tmp) / "run").create(), log=lambda m: None)
        torch.set_flush_denormal(flush)  # after the Trainer, which turns flushing on for CPU runs
        out = []
        while t.step < steps:
            t0 = time.perf_counter()
            for _ in range(min(chunk, steps - t.step)):
                t.train_step()
            out.append(time.perf_counter() - t0)
            print(f"  {'flushed' if flush else 'kept   '} steps {t.step:>5}: {out[-1]:.1f}s", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--chunk", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dry-run", action="store_true", help="4 steps in chunks of 2 on a 60-question corpus")
    args = ap.parse_args(argv)
    steps, chunk, overrides = args.steps, args.chunk, {}
    if args.dry_run:
        steps, chunk, overrides = 4, 2, {"corpus_prompts": 60, "batch_size": 16}
    print(f"personal on the four-users lesson, {steps} steps, seed {args.seed}")
    res = {flush: chunk_times(flush, steps, chunk, args.seed, overrides) for flush in (True, False)}
    for flush, times in res.items():
        print(f"{'flushed' if flush else 'kept'}: {sum(times):.1f}s in all; last chunk / first {times[-1] / times[0]:.2f}")
    print(f"kept / flushed, whole run: {sum(res[False]) / sum(res[True]):.2f}")
    path = write_result("flush_denormal", {"steps": steps, "chunk": chunk, "seed": args.seed, "dry_run": args.dry_run,
                                           "flushed_s": res[True], "kept_s": res[False]})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

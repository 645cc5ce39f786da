"""``python -m core.train``: train a reward model into a run directory.

    python -m core.train --preset personal --run-dir checkpoints/demo [--seed 0] [--steps 200] [--dry-run]
    python -m core.train --config cfg.json --run-dir checkpoints/demo
    python -m core.train --lesson four-users --warm-cache

The training itself: core.training (launch.py is the front door, trainer.py one run, grid.py the loop).
"""

from __future__ import annotations

import argparse
import sys

from core.common.cli import cli_main
from core.common.progress import echo
from core.training.config import LESSONS, PRESETS, ConfigError, build_config, load_config_file
from core.training.launch import train, warm_cache


@cli_main  # a bad config, a missing file, a full embedding cache, an encoder not loadable offline: one
# "error: ..." line and exit status 2, no traceback (core.common.cli); status.json records the failure either way
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core.train", description="Train a reward model into a run directory.")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help=f"method preset: {', '.join(PRESETS)}")
    src.add_argument("--config", help="JSON config file (may name a preset and override fields)")
    src.add_argument("--lesson", nargs="?", const="two-opposed", choices=list(LESSONS),
                     help="one of the app's lessons (default two-opposed), as its traditional run")
    ap.add_argument("--run-dir", help="output folder (resumes if it holds a checkpoint); not with --warm-cache")
    ap.add_argument("--warm-cache", action="store_true",
                    help="only encode the config's texts into the embedding cache (scripts/setup.sh warms the lesson)")
    ap.add_argument("--seed", type=int, help="random seed (overrides the config)")
    ap.add_argument("--steps", type=int, help="optimizer steps (overrides the config)")
    ap.add_argument("--stop-after", type=int, metavar="N", help="stop after step N with a checkpoint; the run resumes "
                    "from it when started again (with any number of ranks)")
    ap.add_argument("--dry-run", action="store_true", help="tiny data and 2 steps, to check the pipeline end to end; "
                    "then a measured step and its estimate on --ranks ranks")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8], metavar="N",
                    help="with --dry-run: the rank (GPU) counts to estimate a step for")
    args = ap.parse_args(argv)
    over = {"seed": args.seed, "steps": args.steps}
    if args.config:
        cfg = load_config_file(args.config, **over)
    elif args.lesson:
        cfg = build_config({"preset": "traditional", **LESSONS[args.lesson]}, **over)
    else:
        cfg = build_config({"preset": args.preset}, **over)
    if args.dry_run:
        cfg = build_config({**cfg.model_dump(), "corpus_prompts": 60, "steps": 2, "eval_every": 1,
                            "max_train_per_user": 40, "max_test_per_user": 20, "pool_size": 20})
    if args.warm_cache:
        if args.lesson:  # its personal run reads segments too; encoding them also caches the whole texts
            cfg = build_config({**cfg.model_dump(), "segment_pool": PRESETS["personal"]["segment_pool"]})
        secs = warm_cache(cfg, log=echo, show_progress="auto")
        print(f"embedding cache warm ({secs:.1f}s)")
        return 0
    if not args.run_dir:
        print("error: --run-dir is required (unless --warm-cache)", file=sys.stderr)
        return 2
    # a failure is in status.json too, traceback and all
    train(cfg, args.run_dir, log=echo, show_progress="auto", stop_after=args.stop_after)
    if args.dry_run:
        print_estimate(cfg, args.ranks)
    return 0


def print_estimate(cfg, ranks: list[int], steps: int = 3) -> None:
    """Time a few steps of cfg's batch in this process and print their estimate on each number of ranks."""
    import tempfile
    import time

    from core.common.runs import RunDir
    from core.training.distributed import estimate
    from core.training.trainer import Trainer

    if any(r < 1 for r in ranks):
        raise ConfigError(f"ranks: each at least 1, got {ranks}")
    with tempfile.TemporaryDirectory() as tmp:
        t = Trainer(build_config({**cfg.model_dump(), "steps": steps + 1}), RunDir(tmp).create(), log=lambda m: None)
        t.train_step()  # the first step pays for lazy set-up
        t0 = time.perf_counter()
        for _ in range(steps):
            t.train_step()
        step_s = (time.perf_counter() - t0) / steps
        n_params = sum(p.numel() for p in t.params if p.requires_grad)
    print(f"measured: {step_s:.4f}s a step of {cfg.batch_size * cfg.grad_accum} pairs on {t.device} "
          f"({n_params:,} trainable parameters)")
    for e in estimate(step_s, n_params, ranks):
        print(f"  {e['ranks']:>3} ranks: about {e['step_s']:.4f}s a step ({e['speedup']:.1f}x; all-reduce "
              f"{e['comm_s'] * 1e3:.2f} ms at 10 GB/s), evaluation and set-up not included")


if __name__ == "__main__":
    raise SystemExit(main())

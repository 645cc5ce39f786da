"""Bench a 100-user run: where the seconds go (setup, references, steps, evaluations), vs two users.

    .venv/bin/python bench/bench_many_users.py [--preset personal] [--users cluster] [--steps 400]
        [--eval-every 50] [--set key=value ...] [--dry-run]

Runs the preset on the 100-user preset and on two-opposed (the baseline, same settings, same process)
with the frozen bundled MiniLM on cached embeddings, and prints seconds for: building the data (pairs,
demonstrations), the step-0 reference ceilings, the training steps, and the evaluations (each eval
scores the test pairs three times: with the user's own demonstrations, another user's, and the user's
from outside the training pool), plus the
ratios 100 users / 2 users. The target (issue 9): 400 steps of the 100-user run within 60 s in all.
Writes bench/out/many_users.json. Embeddings are cached on first use (run once to warm the cache);
``--cold-encode N`` also times encoding every text of an N-question corpus into an empty cache.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._results import write_result  # noqa: E402


def measure(preset: str, users: str, steps: int, eval_every: int, extra: dict, root: Path) -> dict:
    from core.common.runs import RunDir
    from core.training.config import build_config
    from core.training.trainer import Trainer

    cfg = build_config({"preset": preset, "users": users, "steps": steps, "eval_every": eval_every, **extra})
    t0 = time.perf_counter()
    trainer = Trainer(cfg, RunDir(root / users).create(), log=lambda m: None)
    setup = time.perf_counter() - t0
    t_ref = time.perf_counter()
    trainer.references()
    ref_s = time.perf_counter() - t_ref
    evals = [0.0]
    orig = trainer.evaluate

    def timed_eval():
        t = time.perf_counter()
        rec = orig()
        evals[0] += time.perf_counter() - t
        return rec

    trainer.evaluate = timed_eval
    t1 = time.perf_counter()
    hist = trainer.fit()
    fit = time.perf_counter() - t1
    n_evals = len(hist)
    return {
        "users": users, "n_users": trainer.data.n_users, "train_pairs": len(trainer.data.train),
        "test_pairs": len(trainer.data.test), "setup_s": setup, "references_s": ref_s, "fit_s": fit,
        "eval_s": evals[0], "evals": n_evals, "steps_s": fit - evals[0], "total_s": setup + fit,
        "accuracy": hist[-1]["accuracy"], "z_shuffled": hist[-1].get("z_shuffled_accuracy"),
    }


def cold_encode(n_prompts: int) -> dict:
    """Seconds to encode every (prompt, response) text of the offline corpus into a fresh, empty cache."""
    import torch

    from core.data import generate_table
    from core.data.probes import all_texts
    from core.models.embedding_store import EmbeddingCache
    from core.models.encoders import TextEncoder

    texts = all_texts(generate_table(n_prompts=n_prompts, seed=0))
    torch.set_num_threads(os.cpu_count() or 1)  # what encoding gets in a run (training heads then take 1)
    t0 = time.perf_counter()
    encoder = TextEncoder.load()
    load_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t1 = time.perf_counter()
        EmbeddingCache(tmp, encoder).get(texts)
        encode_s = time.perf_counter() - t1
    return {"questions": n_prompts, "texts": len(texts), "load_s": load_s, "encode_s": encode_s,
            "texts_per_s": len(texts) / encode_s, "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="personal")
    ap.add_argument("--users", default="cluster")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--set", nargs="*", default=[], help="config overrides key=value (JSON values)")
    ap.add_argument("--out", help="result file (default: bench/out/many_users-<time>.json)")
    ap.add_argument("--cold-encode", type=int, default=0, metavar="N",
                    help="also time encoding an N-question corpus into an empty cache (the 1500 of the presets)")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    from core.experiments.compare import parse_set

    extra = parse_set(args.set)  # the same key=value (JSON values) parsing as `compare --set`
    steps, every = args.steps, args.eval_every
    if args.dry_run:
        extra.update(corpus_prompts=60, max_train_per_user=40, max_test_per_user=20, pool_size=20)
        steps, every = 4, 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for users in ("two-opposed", args.users):
            r = measure(args.preset, users, steps, every, extra, Path(tmp))
            rows.append(r)
            print(f"{users:<12} {r['n_users']:>4} users  {r['train_pairs']:>7} train / {r['test_pairs']:>6} test pairs  "
                  f"setup {r['setup_s']:6.1f}s (references {r['references_s']:.1f}s)  steps {r['steps_s']:6.1f}s  "
                  f"evals {r['eval_s']:6.1f}s ({r['evals']})  total {r['total_s']:6.1f}s  "
                  f"acc {r['accuracy']:.3f} z-shuffled {r['z_shuffled'] if r['z_shuffled'] is None else round(r['z_shuffled'], 3)}",
                  flush=True)
    base, many = rows
    ratios = {k: many[k] / base[k] for k in ("setup_s", "steps_s", "eval_s", "total_s") if base[k] > 0}
    print("ratio many/two: " + "  ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    print(f"{args.users}: {steps} steps in {many['total_s']:.1f}s total ({'within' if many['total_s'] <= 60 else 'over'} 60 s)")
    cold = None
    if args.cold_encode:
        cold = cold_encode(60 if args.dry_run else args.cold_encode)
        print(f"cold encoding: {cold['texts']} texts of {cold['questions']} questions in {cold['encode_s']:.1f}s "
              f"({cold['texts_per_s']:.0f} texts/s, {cold['threads']} threads; model load {cold['load_s']:.1f}s)")
    out = write_result("many_users", {"rows": rows, "ratios": ratios, "preset": args.preset, "steps": steps,
                                      "eval_every": every, "set": extra, "cold_encode": cold}, args.out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

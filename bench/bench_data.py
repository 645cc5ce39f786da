"""Data-side figures: corpus generation, disagreement matrix, MiniLM embedding throughput.

    python bench/bench_data.py [--seed 0] [--dry-run]

Prints each figure and writes bench/out/data.json. Ratios are against a baseline measured in the
same run (a plain Python loop for the disagreement matrix; batch size 1 for the encoder).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._results import write_result  # noqa: E402
from core.data import generate_table  # noqa: E402
from core.data.probes import all_texts  # noqa: E402
from core.models.encoders import TextEncoder  # noqa: E402
from core.users.tastes import disagreement_matrix, preferred, preset, user_scores  # noqa: E402


def timed(fn, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes, to check the script runs")
    args = ap.parse_args()
    n_prompts, n_texts = (100, 16) if args.dry_run else (1500, 256)
    res = {}

    t, table = timed(lambda: generate_table(n_prompts=n_prompts, seed=args.seed), repeat=1)
    res["corpus_generation_s"] = t
    print(f"corpus: {n_prompts} prompts x 4 completions in {t:.2f} s ({n_prompts / t:.0f} prompts/s)")

    top = preferred(user_scores(table, preset("random", seed=args.seed)))  # (100, Q)
    t_vec, D = timed(lambda: disagreement_matrix(top))

    def loop():
        U = top.shape[0]
        out = np.zeros((U, U), dtype=int)
        for i in range(U):
            for j in range(U):
                ok = (top[i] >= 0) & (top[j] >= 0)
                out[i, j] = int((top[i][ok] != top[j][ok]).sum())
        return out

    t_loop, D2 = timed(loop, repeat=1)
    assert np.array_equal(D, D2)
    res.update(disagreement_100_users_s=t_vec, disagreement_loop_s=t_loop)
    print(f"disagreement matrix, 100 users x {top.shape[1]} questions: {t_vec * 1000:.1f} ms "
          f"(pairwise Python loop: {t_loop * 1000:.0f} ms, {t_loop / t_vec:.0f}x slower)")

    enc = TextEncoder.load()
    texts = all_texts(table)[:n_texts]
    enc.encode(texts[:8])  # warm-up
    for bs in (1, 16, 64):
        t, _ = timed(lambda bs=bs: enc.encode(texts, batch_size=bs), repeat=1)
        res[f"minilm_texts_per_s_bs{bs}"] = len(texts) / t
        print(f"MiniLM (max_length {enc.max_length}), batch {bs:>2}: {len(texts) / t:.1f} texts/s")
    res["minilm_speedup_bs64_vs_bs1"] = res["minilm_texts_per_s_bs64"] / res["minilm_texts_per_s_bs1"]
    print(f"batching gain (64 vs 1): {res['minilm_speedup_bs64_vs_bs1']:.2f}x")

    print(f"wrote {write_result('data', res)}")


if __name__ == "__main__":
    main()

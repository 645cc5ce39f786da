"""Bench the job system: seconds from launch to the first curve point, and the cost of one live refresh.

    PREFLENS_CACHE=.cache/test-emb .venv/bin/python bench/bench_jobs.py [--runs 1 10 50]

1. Submits a quick VPL run (400 questions, cached embeddings) through JobManager and times
   submit -> first metrics record (the step-0 eval) -> second record (the first trained eval).
2. Copies that run's folder N times and times what one refresh of the Train page's live fragment
   does: JobManager.list() (reconcile + schedule + read every status) plus reading the shown runs'
   metrics. Prints the figures and writes bench/out/jobs.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._results import write_result  # noqa: E402
from core.common.runs import RunDir  # noqa: E402
from core.jobs.manager import JobManager  # noqa: E402


def launch_to_first_point(root: Path, cache: str | None) -> dict:
    jm = JobManager(root)
    cfg = {"preset": "vpl", "corpus_prompts": 400, "steps": 20, "eval_every": 5}
    if cache:
        cfg["cache_dir"] = cache
    t0 = time.perf_counter()
    rid = jm.submit(cfg)
    run = RunDir(root / rid)
    marks = {}
    while time.perf_counter() - t0 < 300:
        n = len(run.metrics()[0])
        if n >= 1 and "first_point_s" not in marks:
            marks["first_point_s"] = time.perf_counter() - t0
        if n >= 2:
            marks["second_point_s"] = time.perf_counter() - t0
            break
        if jm.status(rid)["state"] in ("failed", "cancelled"):
            raise SystemExit(f"run failed: {jm.status(rid).get('error')}")
        time.sleep(0.05)
    while jm.status(rid)["state"] == "running" and time.perf_counter() - t0 < 300:
        time.sleep(0.2)
    marks["finished_s"] = time.perf_counter() - t0
    marks["state"] = jm.status(rid)["state"]
    marks["run_id"] = rid
    return marks


def refresh_cost(root: Path, template: str, counts: list[int], repeats: int = 20) -> list[dict]:
    out = []
    for n in counts:
        bench_root = root / f"refresh-{n}"
        bench_root.mkdir()
        for i in range(n):
            shutil.copytree(root / template, bench_root / f"vpl-20260101-000000-{i:06x}",
                            ignore=shutil.ignore_patterns("*.safetensors", "*.pt", "latents"))
        jm = JobManager(bench_root)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            runs = jm.list()
            for r in runs[:4]:  # the page overlays a handful of runs
                RunDir(r["path"]).metrics()
            times.append(time.perf_counter() - t0)
        times.sort()
        out.append({"runs": n, "median_ms": 1000 * times[len(times) // 2], "max_ms": 1000 * times[-1]})
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", nargs="+", type=int, default=[1, 10, 50])
    ap.add_argument("--dry-run", action="store_true", help="one refresh size and 3 repeats, to check the bench runs")
    args = ap.parse_args()
    cache = os.environ.get("PREFLENS_CACHE")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        launch = launch_to_first_point(root, cache)
        print(f"launch -> first curve point: {launch['first_point_s']:.1f} s; second point: "
              f"{launch['second_point_s']:.1f} s; run finished ({launch['state']}) after {launch['finished_s']:.1f} s")
        refresh = refresh_cost(root, launch["run_id"], [1] if args.dry_run else args.runs,
                               repeats=3 if args.dry_run else 20)
        for r in refresh:
            print(f"one live refresh over {r['runs']:>3} run(s): median {r['median_ms']:.1f} ms (max {r['max_ms']:.1f})")
    result = {"launch": launch, "refresh": refresh, "cpus": os.cpu_count(),
              "load_avg": os.getloadavg(), "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    print(f"wrote {write_result('jobs', result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

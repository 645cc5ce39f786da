"""The lessons as a class sees them: click a lesson on the Train page in Chromium, time it to every run ended.

    .venv/bin/python bench/bench_lessons.py [--lessons two-opposed four-users] [--repeat 1] [--baseline REV]
                                            [--dry-run]

For each lesson: a fresh runs folder, a real `streamlit run app.py` (tests/e2e's harness: Debian's chromium
through playwright), a click on the lesson's button, then the seconds until every run it started is
`succeeded`, and each run's figures at its end: accuracy, fresh demonstrations, all pairs, people outside
training, z shuffled, the step it stopped at and the step it kept. Reads the embedding cache scripts/setup.sh
warmed (~/.cache/preflens/embeddings or $PREFLENS_CACHE), as a class machine would. ``--dry-run`` only
starts the app and opens the Train page. Writes bench/out/lessons-<time>.json.

``--baseline REV`` also times each lesson on the app of commit REV (a temporary git worktree, the same
Python), right after this checkout's, and prints the ratio. Its embedding cache is warmed first with REV's own
``python -m core.train --lesson L --warm-cache`` (untimed; older commits key the cache differently), as its setup would.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BUTTONS = {"two-opposed": "Run the two-opposed lesson", "four-users": "Run the four-users lesson"}
RUNS = {"two-opposed": 2, "four-users": 3}  # the runs each lesson starts (a grid job's members included)


def figures(jm, run: dict) -> dict:
    d = jm.run_dir(run["run_id"])  # a grid's member lives in its job's folder
    records, _ = d.metrics()
    last = records[-1] if records else {}
    early = d.status().get("stopped_early") or {}
    keys = ("accuracy", "fresh_demos_accuracy", "all_pairs_accuracy", "new_users_accuracy", "z_shuffled_accuracy")
    return {"step": last.get("step"), "stopped_at": early.get("at_step"), **{k: last.get(k) for k in keys}}


def time_lesson(lesson: str, cache: str, dry_run: bool, root: Path = ROOT) -> dict:
    from core.common.runs import FINAL_STATES
    from core.jobs.manager import JobManager
    from tests.e2e.test_browser import app_server, browser_page

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runs = tmp / "runs"
        with app_server(tmp, runs, cache, root=root) as url, browser_page() as page:
            page.goto(url + "/train", wait_until="domcontentloaded")
            button = page.get_by_role("button", name=BUTTONS[lesson])
            button.wait_for(timeout=90_000)
            if dry_run:
                return {"lesson": lesson, "dry_run": True}
            button.click()
            jm, t0 = JobManager(runs), time.perf_counter()
            # watch only: JobManager.list() also starts queued runs, which would start a baseline app's queued
            # run with this checkout's code; the app under test schedules its own queue
            jm.schedule = lambda *args, **kwargs: None
            while True:
                members = [r for r in jm.list() if r.get("members") is None]  # runs, not a grid job's own row
                if len(members) >= RUNS[lesson] and all(r["state"] in FINAL_STATES for r in members):
                    break
                if time.perf_counter() - t0 > 1800:
                    raise TimeoutError(f"{lesson}: not done after 1800 s: {[(r['label'], r['state']) for r in members]}")
                time.sleep(0.25)
            secs = time.perf_counter() - t0
            return {"lesson": lesson, "seconds": secs,
                    "runs": {r["label"]: {"state": r["state"], **figures(jm, r)} for r in members}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lessons", nargs="+", choices=list(BUTTONS), default=list(BUTTONS))
    ap.add_argument("--repeat", type=int, default=1, help="click each lesson this many times (a fresh folder each)")
    ap.add_argument("--seed", type=int, default=0, help="unused: the lessons fix their seed (0); kept for the CLI shape")
    ap.add_argument("--baseline", metavar="REV", help="also time each lesson on commit REV's app, and print the ratio")
    ap.add_argument("--dry-run", action="store_true", help="start the app and find the buttons; train nothing")
    args = ap.parse_args(argv)
    from bench._results import write_result
    from core.models.embedding_store import default_cache_root

    cmd = "bench/bench_lessons.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"$ {cmd}")
    out = []
    with tempfile.TemporaryDirectory() as wt:
        base = None
        if args.baseline and not args.dry_run:
            base = Path(wt) / "baseline"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(base), args.baseline],
                           check=True)
        try:
            for lesson in args.lessons:
                if base is not None:  # REV's cache key, warmed by REV's code, as its setup would
                    subprocess.run([sys.executable, "-m", "core.train", "--lesson", lesson, "--warm-cache"], cwd=base,
                                   check=True, capture_output=True)
                for _ in range(args.repeat):
                    res = time_lesson(lesson, str(default_cache_root()), args.dry_run)
                    out.append(res)
                    if args.dry_run:
                        print(f"{lesson}: the app is up and its button is there")
                        continue
                    report(lesson, "now", res)
                    if base is not None:
                        then = time_lesson(lesson, str(default_cache_root()), False, root=base)
                        res["baseline"] = {"rev": args.baseline, **then}
                        report(lesson, args.baseline, then)
                        print(f"  ratio {args.baseline} / now: {then['seconds'] / res['seconds']:.2f}x")
        finally:
            if base is not None:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False)
    print("wrote", write_result("lessons", {"command": cmd, "lessons": out}))
    return 0


def report(lesson: str, which: str, res: dict) -> None:
    print(f"{lesson} ({which}): {res['seconds']:.1f} s from the click to every run ended")
    for label, r in res["runs"].items():
        stop = f", stopped at {r['stopped_at']} and kept {r['step']}" if r.get("stopped_at") else f", {r.get('step')} steps"
        nums = "  ".join(f"{k.replace('_accuracy', '')} {r[k]:.3f}" for k in
                         ("accuracy", "fresh_demos_accuracy", "all_pairs_accuracy", "new_users_accuracy",
                          "z_shuffled_accuracy") if r.get(k) is not None)
        print(f"  {label:<20}{r['state']:<10}{nums}{stop}")


if __name__ == "__main__":
    raise SystemExit(main())

"""A job kind that is not part of PrefLens, for tests/test_jobs.py: registered at run time, run as
``python -m tests.dummy_kind --config FILE --run-dir DIR`` by JobManager like any built-in kind."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def validate(raw: dict) -> tuple[dict, str, str]:
    n = raw.get("n", 3)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 100:
        raise ValueError(f"n: must be an integer in 1..100, got {n!r}")
    return {"kind": "dummy", "n": n}, f"dummy-{n}", "dummy"


def main(argv: list[str] | None = None) -> int:
    from core.common.runs import RunDir

    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--run-dir", required=True)
    args = ap.parse_args(argv)
    cfg = json.loads(Path(args.config).read_text())
    run = RunDir(args.run_dir)
    run.mark_running(kind="dummy")
    for i in range(cfg["n"]):
        run.append_metrics({"step": i, "square": i * i})
        run.set_progress(i + 1, cfg["n"])
    print(f"dummy: wrote {cfg['n']} records", flush=True)
    run.mark_final("succeeded")
    return 0


if __name__ == "__main__":
    sys.exit(main())

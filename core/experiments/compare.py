"""Compare methods over seeds and summarize runs like the study's Tables 2-4.

    python -m core.experiments compare --presets traditional vpl vpl-adaptive --seeds 0 1 2 --out DIR
        [--users NAME_OR_JSON_FILE] [--steps N] [--set key=value ...] [--dry-run]
    python -m core.experiments study --size tiny|full [--users two-opposed|four-one-hot] --out DIR [--dry-run]
        (the study's decoder-only + LoRA setting; see core.experiments.study)

writes DIR/runs/<preset>-s<seed>/ (ordinary run directories) and DIR/table.csv + DIR/table.json,
one row per setting (method, user set, data, pair filter, encoder: runs on different users, data or
encoders never share a row): mean +- std of the final mean per-user accuracy, the share of runs that
converged (every user's accuracy at or above the threshold from some evaluation on), the steps, epochs
and wall seconds to get there (means over converged runs), and where the runs recorded them, the
accuracy on all pairs and on people outside training (core.users.people).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from core.common.cli import cli_main
from core.common.runs import RunDir
from core.experiments.tables import (  # noqa: F401 - re-exported: pages, benches and tests import them from here
    GROUP_KEYS,
    PEOPLE_KEYS,
    convergence,
    data_label,
    pairs_label,
    parse_set,
    people_measures,
    run_row,
    summarize,
    users_label,
    write_table,
)


def compare(presets: list[str], seeds: list[int], out: str | Path, overrides: dict | None = None,
            log: Callable[[str], None] = print, *, judge: str = "default", fewshot_how: str = "infogain",
            fewshot_queries: int = 20, fewshot_workers: int = 1, show_progress: bool | str = False) -> list[dict]:
    """Train every (preset, seed) into out/runs/ (resuming finished or partial runs) and write the table.

    ``fewshot-k0`` .. ``fewshot-k8`` run the few-shot prompting baseline with ``judge`` instead
    (``fewshot_workers`` processes). Progress: two stages, "few-shot" in prompts and "train" in
    optimizer steps (a bar on a terminal with ``show_progress``, plain lines elsewhere), also written
    to out/status.json (``kind: compare``); every run's own status.json has its own.
    """
    from core.common.progress import Progress, status_writer
    from core.common.runs import now_iso
    from core.training.config import build_config

    # every trained run's config first, so that a bad preset or override fails before any work
    trained = [(p, s, build_config({"preset": p, **(overrides or {}), "seed": s}))
               for p in presets if not p.startswith("fewshot-") for s in seeds]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    status = RunDir(out)  # the comparison's own status.json (no config.json: not a run of the Train page)
    status.update_status(state="running", kind="compare", presets=list(presets), seeds=list(seeds),
                         started=now_iso(), ended=None, error=None)
    prog = Progress(None, show=show_progress, status=status_writer(status))
    try:
        table = _compare(presets, seeds, trained, out, overrides, log, prog, judge=judge, fewshot_how=fewshot_how,
                         fewshot_queries=fewshot_queries, fewshot_workers=fewshot_workers)
    except BaseException as err:
        prog.close()
        status.mark_final("cancelled" if isinstance(err, KeyboardInterrupt) else "failed",
                          error=f"{type(err).__name__}: {err}")
        raise
    status.mark_final("succeeded", progress=prog.close())
    return table


def _compare(presets, seeds, trained, out: Path, overrides, log, prog, *, judge, fewshot_how, fewshot_queries,
             fewshot_workers) -> list[dict]:
    run_rows = []
    fewshot = [p for p in presets if p.startswith("fewshot-")]
    if fewshot:
        from core.experiments.fewshot_runs import run_methods

        t0 = time.perf_counter()
        for d in run_methods(fewshot, seeds, out, overrides, judge_spec=judge, how=fewshot_how,
                             queries_per_user=fewshot_queries, log=lambda m: None, workers=fewshot_workers,
                             progress=prog):
            run_rows.append(run_row(d))
        log(f"few-shot {' '.join(fewshot)} x seeds {seeds}: {time.perf_counter() - t0:.1f}s")
    todo = [(p, s, cfg) for p, s, cfg in trained
            if RunDir(out / "runs" / f"{p}-s{s}").status().get("state") != "succeeded"]
    if trained:
        prog.new_stage("train", sum(cfg.steps for _, _, cfg in todo), unit="steps")
    if todo:  # one process trains them all, stacked where they can be (core.training.grid)
        from core.training.launch import train_grid

        done = [0] * len(todo)

        def on_step(i, step, steps):
            done[i] = step
            prog.set(sum(done))

        t0 = time.perf_counter()
        p0, s0, _ = todo[0]
        prog.set(0, stage=f"train {p0}-s{s0}" if len(todo) == 1 else f"train {len(todo)} runs as one grid")
        train_grid([cfg for _, _, cfg in todo], [out / "runs" / f"{p}-s{s}" for p, s, _ in todo], log=lambda m: None,
                   on_step=on_step, summary=log)
        log(f"trained {len(todo)} runs as one grid: {time.perf_counter() - t0:.1f}s")
    for p, s, _ in trained:
        row = run_row(out / "runs" / f"{p}-s{s}")
        run_rows.append(row)
        log(f"{p} seed {s}: accuracy {row['accuracy']:.3f}, converged {row['converged']}")
    table = summarize(run_rows)
    write_table(table, out)
    import pandas as pd

    pd.DataFrame(run_rows).to_csv(out / "runs.csv", index=False)
    return table


class UsersArgError(ValueError):
    """--users names neither a preset nor a readable file of valid weight vectors."""


def parse_users_arg(value: str) -> list[list[float]] | str:
    """A user preset name, or a JSON file holding a list of 4-number weight vectors (or {"users": [...]}).

    Errors name the flag, the file and, for a bad vector, the user and the aspect.
    """
    from core.users.tastes import PRESETS, UserError, validate_users

    if value in PRESETS:
        return value
    path = Path(value)
    if not path.is_file():
        raise UsersArgError(f"--users: {value!r} is neither a user preset ({', '.join(PRESETS)}) nor a file")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise UsersArgError(f"--users: cannot read {value}: {err}") from None
    except json.JSONDecodeError as err:
        raise UsersArgError(f"--users: {value} is not JSON ({err.msg} at line {err.lineno})") from None
    if isinstance(raw, dict):
        if "users" not in raw:
            raise UsersArgError(f"--users: {value} holds an object without a 'users' list")
        raw = raw["users"]
    if not isinstance(raw, list):
        raise UsersArgError(f"--users: {value} must hold a list of weight vectors, got {type(raw).__name__}")
    try:
        return validate_users(raw).tolist()
    except UserError as err:
        raise UsersArgError(f"--users: {value}: {err}") from None


@cli_main  # an expected error (a full cache, a missing file, ...): one "error: ..." line, exit status 2
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core.experiments", description="Compare methods over seeds.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compare", help="train presets x seeds and write table.csv / table.json")
    c.add_argument("--presets", nargs="+", required=True)
    c.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    c.add_argument("--out", required=True)
    c.add_argument("--steps", type=int, help="override every preset's steps")
    c.add_argument("--users", help="user preset name or a JSON file with a list of 4-number weight vectors")
    c.add_argument("--set", nargs="*", default=[], help="extra config overrides, key=value (JSON values)")
    c.add_argument("--judge", default="default", help="few-shot judge: default (bundled GGUF), a model id/folder/.gguf, or openai[:model]")
    c.add_argument("--fewshot-how", choices=["infogain", "random"], default="infogain", help="how demonstrations are chosen")
    c.add_argument("--fewshot-queries", type=int, default=20, help="test queries per user for the few-shot baseline")
    c.add_argument("--fewshot-workers", type=int, default=1,
                   help="processes for the few-shot baseline (each loads the judge; 2 on 2 idle cores is ~2x)")
    c.add_argument("--dry-run", action="store_true", help="tiny data and 2 steps per run")
    s = sub.add_parser("study", help="the study's setting: SmolLM2 + LoRA, traditional / vpl / vpl-adaptive x seeds")
    from core.experiments.study import add_arguments

    add_arguments(s)
    s.add_argument("--out", help="output folder (runs/, table.csv, table.json); not needed with --dry-run")
    args = ap.parse_args(argv)
    if args.cmd == "study":
        from core.experiments.study import cli

        return cli(args, args.out)
    over = parse_set(args.set)
    if args.users:
        try:
            over["users"] = parse_users_arg(args.users)
        except UsersArgError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    if args.steps:
        over["steps"] = args.steps
    if args.dry_run:
        over.update({"corpus_prompts": 60, "steps": 2, "eval_every": 1, "max_train_per_user": 40,
                     "max_test_per_user": 20, "pool_size": 20})
    from core.common.progress import echo
    from core.training.config import ConfigError

    if args.fewshot_workers < 1:
        print("error: --fewshot-workers must be at least 1", file=sys.stderr)
        return 2
    try:
        table = compare(args.presets, args.seeds, args.out, over, log=echo,
                        judge=args.judge, fewshot_how=args.fewshot_how,
                        fewshot_queries=2 if args.dry_run else args.fewshot_queries,
                        fewshot_workers=args.fewshot_workers, show_progress="auto")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for r in table:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A grid of training runs as one background job (job kind ``grid``): one process, one run dir per member.

    python -m core.gridjob --config grid.json --run-dir DIR [--dry-run]
    grid.json: {"kind": "grid", "methods": ["traditional", "vpl", "personal"], "seeds": [0, 1, 2],
                "overrides": {"users": "four-one-hot", "steps": 200}}

Members train together (core.training.grid: setup once, stacked heads) into ``DIR/runs/<method>-s<seed>/``,
ordinary run directories the Train and Results pages list as runs; DIR/status.json is the grid's own
(progress in optimizer steps over all members), DIR/table.csv / runs.csv its summary like ``compare``.
A member is cancelled alone by ``cancel_requested`` in its status.json (JobManager.cancel writes it);
cancelling the grid job stops every member that is still running (each checkpointed, resumable).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.common.cli import cli_main
from core.common.runs import RunDir
from core.training.config import field_problems


class GridError(ValueError):
    """A grid request that does not validate; the message names the field."""


class GridConfig(BaseModel):
    """A grid job's config (``kind: grid``); saved as config.json in the job's run directory."""

    model_config = ConfigDict(extra="forbid")

    methods: list[str] = Field(..., min_length=1, max_length=32, description="Method presets (core.training.config.PRESETS), one run per method and seed.")
    seeds: list[int] = Field([0], min_length=1, max_length=20, description="Seeds, one run per method and seed.")
    overrides: dict = Field({}, description="TrainConfig fields for every member, e.g. {'users': 'four-one-hot', 'steps': 200}.")


def member_configs(cfg: GridConfig) -> dict:
    """{'<method>-s<seed>': TrainConfig} for every member; raises GridError naming the member and field."""
    from core.training.config import ConfigError, build_config

    out = {}
    for method in cfg.methods:
        if method.startswith("fewshot-"):
            raise GridError(f"methods: {method!r} is not a trained method (few-shot runs go through compare)")
        for seed in cfg.seeds:
            try:
                out[f"{method}-s{seed}"] = build_config({"preset": method, **cfg.overrides, "seed": seed})
            except ConfigError as err:
                raise GridError(f"{method}-s{seed}: {err}") from None
    return out


def validate_grid(raw: dict) -> GridConfig:
    raw = {k: v for k, v in dict(raw).items() if k != "kind"}
    try:
        cfg = GridConfig(**raw)
    except ValidationError as err:
        raise GridError(field_problems(err)) from None
    member_configs(cfg)  # every member must validate before anything starts
    return cfg


def validate_grid_job(raw: dict) -> tuple[dict, str, str]:
    """The job layer's validator: (config dict, label like 'grid-9-runs', run-id prefix 'grid')."""
    cfg = validate_grid(raw)
    n = len(cfg.methods) * len(cfg.seeds)
    return {"kind": "grid", **cfg.model_dump(mode="json")}, f"grid-{n}-runs", "grid"


def run_grid(cfg: GridConfig, out: str | Path, *, log=print, show_progress: bool | str = False) -> list[dict]:
    """Train every member into out/runs/ (succeeded members are kept, others resume) and write the tables."""
    from core.common.progress import Progress, status_writer
    from core.experiments.tables import run_row, summarize, write_table
    from core.training.launch import train_grid

    out = Path(out)
    members = member_configs(cfg)
    todo = {n: c for n, c in members.items() if RunDir(out / "runs" / n).status().get("state") != "succeeded"}
    status = RunDir(out)
    prog = Progress(sum(c.steps for c in todo.values()), unit="steps", stage="grid", show=show_progress,
                    status=status_writer(status))
    done = dict.fromkeys(todo, 0)
    names = list(todo)

    def on_step(i, step, steps):
        done[names[i]] = step
        prog.set(sum(done.values()))

    t0 = time.perf_counter()
    if todo:
        train_grid(list(todo.values()), [out / "runs" / n for n in todo], log=log, on_step=on_step)
    for n, c in todo.items():  # a member that stopped early (learned) is done: its remaining steps count
        if RunDir(out / "runs" / n).status().get("state") == "succeeded":
            done[n] = c.steps
    prog.set(sum(done.values()))
    prog.close()
    rows = [r for r in (run_row(out / "runs" / n) for n in members) if r is not None]
    table = summarize(rows)
    write_table(table, out)
    import pandas as pd

    pd.DataFrame(rows).to_csv(out / "runs.csv", index=False)
    states = {n: RunDir(out / "runs" / n).status().get("state") for n in members}
    log(f"grid: {len(members)} runs ({len(todo)} trained now) in {time.perf_counter() - t0:.1f}s: "
        + ", ".join(f"{n} {s}" for n, s in states.items()))
    return table


@cli_main  # an expected error (a bad config, a full cache, ...): one "error: ..." line, exit status 2
def main(argv: list[str] | None = None) -> int:
    from core.common.progress import echo
    from core.training.grid import Cancelled

    ap = argparse.ArgumentParser(prog="python -m core.gridjob", description="Train a grid of runs in one process.")
    ap.add_argument("--config", required=True, help="JSON file: {methods, seeds, overrides}")
    ap.add_argument("--run-dir", required=True, help="the grid's folder; members go to RUN_DIR/runs/<method>-s<seed>")
    ap.add_argument("--dry-run", action="store_true", help="tiny data and 2 steps a member, to check the pipeline")
    args = ap.parse_args(argv)
    try:
        raw = json.loads(Path(args.config).read_text())
        if not isinstance(raw, dict):
            raise GridError(f"{args.config} must hold a JSON object {{methods, seeds, overrides}}")
        if args.dry_run:
            raw = {**raw, "overrides": {**raw.get("overrides", {}), "corpus_prompts": 60, "steps": 2, "eval_every": 1,
                                        "max_train_per_user": 40, "max_test_per_user": 20, "pool_size": 20}}
        cfg = validate_grid(raw)
    except json.JSONDecodeError as err:
        print(f"error: {args.config} is not JSON ({err})", file=sys.stderr)
        return 2
    run = RunDir(args.run_dir).create()
    if run.config() is None:
        run.write_config({"kind": "grid", **cfg.model_dump(mode="json")})
    run.mark_running(kind="grid")
    try:
        run_grid(cfg, run.path, log=echo, show_progress="auto")
    except Cancelled as err:
        run.mark_final("cancelled", error=str(err))
        return 1
    except BaseException as err:
        run.mark_final("failed", error=f"{type(err).__name__}: {err}")
        raise  # an expected error ends as one line (cli_main); a bug shows its traceback
    states = [RunDir(p).status().get("state") for p in sorted((run.path / "runs").iterdir())]
    if all(s == "succeeded" for s in states):
        run.mark_final("succeeded")
    else:
        run.mark_final("cancelled" if "cancelled" in states else "failed",
                       error=f"members ended: {', '.join(str(s) for s in states)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Compare methods over seeds and summarize runs like the study's Tables 2-4.

    python -m core.experiments compare --presets traditional vpl vpl-adaptive --seeds 0 1 2 --out DIR
        [--users NAME_OR_JSON_FILE] [--steps N] [--set key=value ...] [--dry-run]
    python -m core.experiments study --size tiny|full [--users two-opposed|four-one-hot] --out DIR [--dry-run]
        (the study's decoder-only + LoRA setting; see core.study)

writes DIR/runs/<preset>-s<seed>/ (ordinary run directories) and DIR/table.csv + DIR/table.json,
one row per setting (method, user set, data, pair filter, encoder: runs on different users, data or
encoders never share a row): mean +- std of the final mean per-user accuracy, the share of runs that
converged (every user's accuracy at or above the threshold from some evaluation on), the steps, epochs
and wall seconds to get there (means over converged runs), and where the runs recorded them, the
accuracy on all pairs and on people outside training (core.people).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from .runs import RunDir


def convergence(records: list[dict], threshold: float) -> dict | None:
    """First evaluation after which every user's accuracy stays >= threshold; None if never."""
    ok = [bool(r.get("user_accuracy")) and min(r["user_accuracy"].values()) >= threshold for r in records]
    for i in range(len(records)):
        if all(ok[i:]):
            r = records[i]
            return {"step": r.get("step"), "epoch": r.get("epoch"), "wall_s": r.get("wall_s")}
    return None


def run_row(path: str | Path) -> dict | None:
    """One finished run as a flat row, or None if the folder is not a readable training run."""
    run = RunDir(path)
    cfg = run.config()
    records, skipped = run.metrics()
    if not isinstance(cfg, dict) or not records:
        return None
    status = run.status()
    last = records[-1]
    threshold = float(cfg.get("converge_threshold", 0.8))
    conv = convergence(records, threshold)
    row = {
        "run_id": run.run_id,
        "method": cfg.get("preset") or cfg.get("method"),
        "encoder": _encoder_label(cfg),
        "users": users_label(cfg),
        "data": data_label(cfg),
        "pairs": pairs_label(cfg),
        "seed": cfg.get("seed"),
        "state": status.get("state", "unknown"),
        "steps": last.get("step"),
        "accuracy": last.get("accuracy"),
        "converged": conv is not None,
        "steps_to_converge": conv["step"] if conv else None,
        "epochs_to_converge": conv["epoch"] if conv else None,
        "wall_to_converge_s": conv["wall_s"] if conv else None,
        "wall_s": last.get("wall_s"),
        "skipped_lines": skipped,
    }
    ref = records[0].get("reference_accuracy") if records[0].get("step") == 0 else None
    if isinstance(ref, dict):  # the ceilings on this run's own test pairs (core.references)
        for k in ("global", "group", "probe"):
            row[f"ref_{k}"] = ref.get(k)
    for key in ("z_shuffled_accuracy", "fresh_demos_accuracy"):
        if key in last:
            row[key] = last[key]
    if "uniform_k0_accuracy" in last:  # few-shot runs carry the study's Figure 4 reference line
        row["uniform_k0_accuracy"] = last["uniform_k0_accuracy"]
    people = people_measures(records)
    people.pop("new_users")
    row.update(people)  # None for runs recorded before core.people
    for u, a in (last.get("user_accuracy") or {}).items():
        row[f"user_{u}_accuracy"] = a
    return row


# what makes two runs comparable: summarize() never averages across these
GROUP_KEYS = ("method", "users", "data", "pairs", "encoder")
PEOPLE_KEYS = ("all_pairs_accuracy", "new_users_accuracy", "new_users_min")


def people_measures(records: list[dict]) -> dict:
    """all_pairs_accuracy, new_users_accuracy, new_users_min (the worst person) and new_users from the last
    record that scored people (core.people; every ``people_every`` steps and at the last evaluation);
    all None for runs recorded before that."""
    for r in reversed(records):
        if r.get("all_pairs_accuracy") is not None or r.get("new_users_accuracy") is not None:
            people = r.get("new_users") if isinstance(r.get("new_users"), list) else []
            accs = [p["accuracy"] for p in people if isinstance(p, dict) and p.get("accuracy") is not None]
            return {"all_pairs_accuracy": r.get("all_pairs_accuracy"),
                    "new_users_accuracy": r.get("new_users_accuracy"),
                    "new_users_min": min(accs) if accs else None, "new_users": people}
    return {"all_pairs_accuracy": None, "new_users_accuracy": None, "new_users_min": None, "new_users": []}


def _field(cfg: dict, name: str):
    """A config field, or TrainConfig's default for configs written before the field existed."""
    from .config import TrainConfig

    return cfg.get(name, TrainConfig.model_fields[name].default)


def users_label(cfg: dict) -> str | None:
    """'two-opposed', 'random (seed 1)', or 'custom (3 users, 5f1c)' for a weight list (the tail tells
    two custom sets of the same size apart)."""
    users = cfg.get("users")
    if isinstance(users, str):
        seed = int(_field(cfg, "user_seed") or 0)
        return f"{users} (seed {seed})" if seed and users in ("random", "cluster") else users
    if isinstance(users, list):
        import hashlib

        tag = hashlib.sha1(json.dumps(np.round(np.asarray(users, float), 6).tolist()).encode()).hexdigest()[:4]
        return f"custom ({len(users)} users, {tag})"
    return None


def data_label(cfg: dict) -> str | None:
    """'offline 1500q s0' (+ signal / noise when not the defaults), or the UltraFeedback file / hub id;
    None when the config does not say (few-shot runs recorded before it did)."""
    data = cfg.get("data")
    if data is None:
        return None
    if data != "offline":
        return str(data)
    out = f"offline {_field(cfg, 'corpus_prompts')}q s{_field(cfg, 'corpus_seed')}"
    signal, noise = float(_field(cfg, "signal")), float(_field(cfg, "rating_noise"))
    if signal != 1.0:
        out += f" signal {signal:g}"
    if noise != 0.0:
        out += f" noise {noise:g}"
    return out


def pairs_label(cfg: dict) -> str | None:
    """The training pairs: 'contested' (the study's filter), 'contested + 50% agreed' (agreed_share: more
    training pairs, the test pairs stay the contested ones), or 'all pairs' (contested_only false)."""
    if "contested_only" not in cfg and "data" not in cfg:
        return None  # a config that says nothing about its data
    if not _field(cfg, "contested_only"):
        return "all pairs"
    share = float(_field(cfg, "agreed_share") or 0.0)
    return f"contested + {share * 100:g}% agreed" if share > 0 else "contested"


def _encoder_label(cfg: dict) -> str | None:
    """'bundled-minilm (frozen)', 'bundled-smollm2 + lora', or the few-shot judge; None if unknown."""
    if cfg.get("encoder"):
        mode = cfg.get("query_encoder", "frozen")
        return f"{cfg['encoder']} ({mode})" if mode == "frozen" else f"{cfg['encoder']} + {mode}"
    return cfg.get("judge")


def summarize(rows: Iterable[dict]) -> list[dict]:
    """Rows of runs -> one row per setting (GROUP_KEYS: method, users, data, pairs, encoder) with mean +- std
    accuracy, converged share, time to converge, and the means of the reference and people measures.

    Seeds of one setting average into one row; runs on different user sets, data or encoders never do.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r is not None:
            key = (str(r["method"]), *(r.get(k) for k in GROUP_KEYS[1:]))
            groups.setdefault(key, []).append(r)
    out = []
    for (method, *setting), rs in groups.items():
        acc = np.array([r["accuracy"] for r in rs if r["accuracy"] is not None], dtype=float)
        conv = [r for r in rs if r["converged"]]

        def mean(key, rs=conv):
            vals = [r[key] for r in rs if r.get(key) is not None]
            return float(np.mean(vals)) if vals else None

        out.append({
            "method": method,
            "runs": len(rs),
            "accuracy_mean": float(acc.mean()) if len(acc) else None,
            "accuracy_std": float(acc.std()) if len(acc) else None,
            "converged_share": len(conv) / len(rs),
            "steps_to_converge": mean("steps_to_converge"),
            "epochs_to_converge": mean("epochs_to_converge"),
            "wall_to_converge_s": mean("wall_to_converge_s"),
            "wall_s": mean("wall_s", rs),
            # the setting after the measures, encoder first: the CSV's first columns stay as they were
            **dict(sorted(zip(GROUP_KEYS[1:], setting, strict=True), key=lambda kv: kv[0] != "encoder")),
        })
        for key in ("z_shuffled_accuracy", "fresh_demos_accuracy", "ref_global", "ref_group", "ref_probe",
                    *PEOPLE_KEYS):
            if any(r.get(key) is not None for r in rs):
                out[-1][key] = mean(key, rs)
    return out


def write_table(rows: list[dict], out: Path) -> None:
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out / "table.csv", index=False)
    (out / "table.json").write_text(json.dumps(rows, indent=2))


def compare(presets: list[str], seeds: list[int], out: str | Path, overrides: dict | None = None,
            log: Callable[[str], None] = print, *, judge: str = "default", fewshot_how: str = "infogain",
            fewshot_queries: int = 20, fewshot_workers: int = 1, show_progress: bool | str = False) -> list[dict]:
    """Train every (preset, seed) into out/runs/ (resuming finished or partial runs) and write the table.

    ``fewshot-k0`` .. ``fewshot-k8`` run the few-shot prompting baseline with ``judge`` instead
    (``fewshot_workers`` processes). Progress: two stages, "few-shot" in prompts and "train" in
    optimizer steps (a bar on a terminal with ``show_progress``, plain lines elsewhere), also written
    to out/status.json (``kind: compare``); every run's own status.json has its own.
    """
    from .config import build_config
    from .progress import Progress, status_writer
    from .runs import now_iso

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
    from .train import train

    run_rows = []
    fewshot = [p for p in presets if p.startswith("fewshot-")]
    if fewshot:
        from .fewshot import run_methods

        t0 = time.perf_counter()
        for d in run_methods(fewshot, seeds, out, overrides, judge_spec=judge, how=fewshot_how,
                             queries_per_user=fewshot_queries, log=lambda m: None, workers=fewshot_workers,
                             progress=prog):
            run_rows.append(run_row(d))
        log(f"few-shot {' '.join(fewshot)} x seeds {seeds}: {time.perf_counter() - t0:.1f}s")
    todo = {(p, s) for p, s, _ in trained if RunDir(out / "runs" / f"{p}-s{s}").status().get("state") != "succeeded"}
    if trained:
        prog.new_stage("train", sum(cfg.steps for p, s, cfg in trained if (p, s) in todo), unit="steps")
    base = 0
    for p, s, cfg in trained:
        run_dir = out / "runs" / f"{p}-s{s}"
        t0 = time.perf_counter()
        if (p, s) in todo:
            prog.set(base, stage=f"train {p}-s{s}")
            train(cfg, run_dir, log=lambda m: None,
                  on_step=lambda step, steps, base=base: prog.set(base + step))
            base += cfg.steps
            prog.set(base)
        row = run_row(run_dir)
        run_rows.append(row)
        log(f"{p} seed {s}: accuracy {row['accuracy']:.3f}, converged {row['converged']} "
            f"({time.perf_counter() - t0:.1f}s)")
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
    from .users import PRESETS, UserError, validate_users

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


def parse_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


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
    from .study import add_arguments

    add_arguments(s)
    s.add_argument("--out", help="output folder (runs/, table.csv, table.json); not needed with --dry-run")
    args = ap.parse_args(argv)
    if args.cmd == "study":
        from .study import cli

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
    from .config import ConfigError
    from .progress import echo

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

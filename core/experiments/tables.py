"""Runs as table rows: a run directory -> one flat row, rows -> one row per setting, the table files, and
the ``--set key=value`` parser. Shared by ``core.experiments.compare`` (compare) and ``core.experiments.study`` (the grid)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from core.common.runs import RunDir, read_json


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
        # early stopping (TrainConfig.early_stop_patience): the step it stopped at; `steps` is the step it kept
        "stopped_early_at": (status.get("stopped_early") or {}).get("at_step"),
        "accuracy": last.get("accuracy"),
        "converged": conv is not None,
        "steps_to_converge": conv["step"] if conv else None,
        "epochs_to_converge": conv["epoch"] if conv else None,
        "wall_to_converge_s": conv["wall_s"] if conv else None,
        "wall_s": last.get("wall_s"),
        "skipped_lines": skipped,
    }
    ref = records[0].get("reference_accuracy") if records[0].get("step") == 0 else None
    if isinstance(ref, dict):  # the ceilings on this run's own test pairs (core.training.references)
        for k in ("global", "group", "probe"):
            row[f"ref_{k}"] = ref.get(k)
    for key in ("z_shuffled_accuracy", "fresh_demos_accuracy"):
        if key in last:
            row[key] = last[key]
    if "uniform_k0_accuracy" in last:  # few-shot runs carry the study's Figure 4 reference line
        row["uniform_k0_accuracy"] = last["uniform_k0_accuracy"]
    people = people_measures(records)
    people.pop("new_users")
    row.update(people)  # None for runs recorded before core.users.people
    row.update(best_of_16(run))
    for u, a in (last.get("user_accuracy") or {}).items():
        row[f"user_{u}_accuracy"] = a
    return row


def best_of_16(run: RunDir) -> dict:
    """The share of the oracle's gain at best-of-16 that ``python -m core.reward best-of-n --save`` kept in the
    run's folder, for the run and its traditional twin; {} where it was not measured."""
    saved = read_json(run.path / "best_of_n.json")
    try:
        i = saved["ns"].index(16)
        return {"best_of_16": saved["share"]["personal"][i], "best_of_16_traditional": saved["share"]["traditional"][i]}
    except (TypeError, KeyError, ValueError, IndexError):
        return {}


# what makes two runs comparable: summarize() never averages across these
GROUP_KEYS = ("method", "users", "data", "pairs", "encoder")
PEOPLE_KEYS = ("all_pairs_accuracy", "new_users_accuracy", "new_users_min")


def people_measures(records: list[dict]) -> dict:
    """all_pairs_accuracy, new_users_accuracy, new_users_min (the worst person) and new_users from the last
    record that scored people (core.users.people; every ``people_every`` steps and at the last evaluation);
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
    from core.training.config import TrainConfig

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
            "stopped_early": sum(r.get("stopped_early_at") is not None for r in rs),  # of `runs`
            # the setting after the measures, encoder first: the CSV's first columns stay as they were
            **dict(sorted(zip(GROUP_KEYS[1:], setting, strict=True), key=lambda kv: kv[0] != "encoder")),
        })
        for key in ("z_shuffled_accuracy", "fresh_demos_accuracy", "ref_global", "ref_group", "ref_probe",
                    *PEOPLE_KEYS, "best_of_16", "best_of_16_traditional"):
            if any(r.get(key) is not None for r in rs):
                out[-1][key] = mean(key, rs)
    return out


def write_table(rows: list[dict], out: Path) -> None:
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out / "table.csv", index=False)
    (out / "table.json").write_text(json.dumps(rows, indent=2))


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

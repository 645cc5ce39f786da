"""The Train page's curves: per-user accuracy and loss of runs, group bands for many users, the reference
ceilings, validation loss, and the step an early-stopped run kept."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from core.common.runs import RunDir
from core.users.tastes import group_labels


def smooth(y: list, alpha: float) -> list:
    if alpha <= 0:
        return y
    out, prev = [], None
    for v in y:
        if v is None:
            out.append(None)
            continue
        prev = v if prev is None else alpha * prev + (1 - alpha) * v
        out.append(prev)
    return out


MANY = 8  # above this many users a run's curves default to group means with min-max bands
REF_STYLE = {"global": ("global mean weights", "#d62728"), "group": ("group mean weights", "#2ca02c"),
             "probe": ("per-user probe", "#9467bd")}


def run_groups(info: dict, users: list[str]) -> list[str]:
    """Group name per user (in ``users`` order) from the run's config; one group per user if unknown."""
    cfg = RunDir(info.get("path", "")).config() if info else None
    try:
        labels = group_labels(cfg["users"], int(cfg.get("user_seed", 0)))
        return [labels[int(u)] for u in users]
    except (TypeError, KeyError, ValueError, IndexError):
        return [f"user {u}" for u in users]


def _hex_rgba(color: str, alpha: float) -> str:
    color = color.lstrip("#")
    r, g, b = (int(color[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def stopped_early(info: dict, records: list[dict]) -> dict | None:
    """Early stopping's verdict for a run (status.json's ``stopped_early``, else read off its last record, a
    re-evaluation of the kept model marked ``kept_best``): {'at_step', 'best_step', 'reason'}; None if it
    did not stop early."""
    st_ = info.get("stopped_early")
    if isinstance(st_, dict) and st_.get("best_step") is not None:
        return st_
    kept = next((r for r in reversed(records) if r.get("kept_best")), None)
    return None if kept is None else {"at_step": kept.get("stopped_at"), "best_step": kept["step"], "reason": None}


def stop_text(early: dict) -> str:
    return f"kept step {early['best_step']} (stopped at {early.get('at_step')}: validation loss not improving)"


def mark_kept(acc: go.Figure, loss: go.Figure, early: dict, kept: dict, label: str, rid: str, row: int = 0) -> None:
    """A dotted line at the step a run kept on both charts, and a star on its kept accuracy (hover: why);
    ``row``: the how-many-th marked run, whose text goes one line lower so that texts do not overlap."""
    text = f"{label}: {stop_text(early)}"
    for fig in (acc, loss):
        fig.add_vline(x=early["best_step"], line_dash="dot", line_color="#555", line_width=1,
                      annotation_text=text, annotation_position="top left", annotation_font_size=10,
                      annotation_bgcolor="rgba(255,255,255,0.8)", annotation_yshift=-14 * row)
    acc.add_trace(go.Scatter(x=[early["best_step"]], y=[kept.get("accuracy")], mode="markers", name=text,
                             marker={"symbol": "star", "size": 14, "color": "black"}, showlegend=False,
                             hovertext=[early.get("reason") or text], hoverinfo="text",
                             meta={"run_id": rid, "kept_step": early["best_step"]}))


def curves(run_ids: list[str], runs_by_id: dict, alpha: float, view: str = "groups",
           references: bool = True) -> tuple[go.Figure, go.Figure, list[str]]:
    """Accuracy and loss figures. Runs with more than MANY users show group means with min-max bands
    (``view='groups'``) or every user thinly (``view='users'``); the step-0 reference ceilings are lines."""
    acc, loss, notes = go.Figure(), go.Figure(), []
    dashes = ["solid", "dash", "dot", "dashdot", "longdash"]
    refs_drawn: dict[tuple[str, float], str] = {}
    marked = 0  # runs that stopped early, marked so far
    for i, rid in enumerate(run_ids):
        info = runs_by_id.get(rid, {})
        records, skipped = RunDir(info.get("path", "")).metrics() if info else ([], 0)
        if skipped:
            notes.append(f"{rid}: skipped {skipped} unreadable metrics line(s)")
        label = info.get("label") or info.get("method") or rid
        records = [r for r in records if isinstance(r.get("step"), int | float)]
        early, kept = stopped_early(info, records), next((r for r in records if r.get("kept_best")), None)
        # an early-stopped run's last record re-evaluates the kept model at its earlier step (the same figures
        # as that step's record): marked below, not drawn as a line going back
        records = [r for r in records if not r.get("kept_best")]
        steps = [r["step"] for r in records]
        users = sorted({u for r in records for u in (r.get("user_accuracy") or {})}, key=lambda u: int(u) if str(u).isdigit() else 0)
        many = len(users) > MANY
        dash = dashes[i % len(dashes)]
        if many and view == "groups":
            groups = run_groups(info, users)
            for k, g in enumerate(dict.fromkeys(groups)):
                members = [u for u, gu in zip(users, groups, strict=True) if gu == g]
                color = PALETTE[k % len(PALETTE)]
                for fig, key in ((acc, "user_accuracy"), (loss, "user_loss")):
                    vals = [[(r.get(key) or {}).get(u) for u in members] for r in records]
                    vals = [[v for v in row if v is not None] for row in vals]
                    lo = smooth([min(v) if v else None for v in vals], alpha)
                    hi = smooth([max(v) if v else None for v in vals], alpha)
                    mid = smooth([float(np.mean(v)) if v else None for v in vals], alpha)
                    name = f"{label} · {g} ({len(members)})"
                    fig.add_trace(go.Scatter(x=steps, y=hi, mode="lines", line={"width": 0, "color": color},
                                             showlegend=False, hoverinfo="skip", legendgroup=f"{rid}-{g}",
                                             meta={"run_id": rid, "group": g, "stat": "max"}))
                    fig.add_trace(go.Scatter(x=steps, y=lo, mode="lines", line={"width": 0, "color": color},
                                             fill="tonexty", fillcolor=_hex_rgba(color, 0.18), showlegend=False,
                                             hoverinfo="skip", legendgroup=f"{rid}-{g}",
                                             meta={"run_id": rid, "group": g, "stat": "min"}))
                    fig.add_trace(go.Scatter(x=steps, y=mid, mode="lines", name=name, legendgroup=f"{rid}-{g}",
                                             line={"color": color, "dash": dash, "width": 2},
                                             showlegend=fig is acc, meta={"run_id": rid, "group": g, "stat": "mean"}))
        else:
            for u in users:
                ys = [(r.get("user_accuracy") or {}).get(u) for r in records]
                ls = [(r.get("user_loss") or {}).get(u) for r in records]
                name = f"{label} · user {u}"
                acc.add_trace(go.Scatter(x=steps, y=smooth(ys, alpha), mode="lines+markers" if len(steps) < 40 else "lines",
                                         name=name, line={"dash": dash, "width": 1 if many else 2},
                                         showlegend=not many, legendgroup=rid, meta={"run_id": rid, "user": u}))
                loss.add_trace(go.Scatter(x=steps, y=smooth(ls, alpha), mode="lines", name=name,
                                          line={"dash": dash}, showlegend=not many,
                                          meta={"run_id": rid, "user": u}))
        if many:
            mean = [r.get("accuracy") for r in records]
            acc.add_trace(go.Scatter(x=steps, y=smooth(mean, alpha), mode="lines", name=f"{label} · mean of users",
                                     line={"width": 4, "dash": dash, "color": "black"},
                                     meta={"run_id": rid, "user": "mean"}))
        val = [r.get("val_loss") for r in records]
        if any(v is not None for v in val):  # held-out training questions: what early stopping reads
            loss.add_trace(go.Scatter(x=steps, y=smooth(val, alpha), mode="lines", name=f"{label} · validation loss",
                                      line={"dash": dash, "width": 3, "color": "black"},
                                      meta={"run_id": rid, "series": "val_loss"}))
        if early is not None:
            mark_kept(acc, loss, early, kept or next((r for r in records if r["step"] == early["best_step"]), {}),
                      label, rid, marked)
            marked += 1
            notes.append(f"{label} stopped early: {early.get('reason') or stop_text(early)}")
        ref = (records[0].get("reference_accuracy") or {}) if records and records[0].get("step") == 0 else {}
        for key in REF_STYLE:
            if references and isinstance(ref.get(key), int | float):
                refs_drawn.setdefault((key, round(float(ref[key]), 4)), label)
    for (key, value), label in refs_drawn.items():
        text, color = REF_STYLE[key]
        suffix = f" ({label})" if len({lab for _, lab in refs_drawn.items()}) > 1 else ""
        acc.add_hline(y=value, line_dash="dash", line_color=color, line_width=1,
                      annotation_text=f"{text} {value:.2f}{suffix}", annotation_position="bottom right",
                      annotation_font_color=color)
    acc.update_layout(title="Eval accuracy per user", xaxis_title="step", yaxis_title="accuracy",
                      yaxis_range=[0, 1.02], height=380, margin={"t": 40})
    acc.add_hline(y=0.5, line_dash="dot", line_color="grey", annotation_text="chance")
    loss.update_layout(title="Eval loss per user (black: validation loss, where the run holds questions out)",
                       xaxis_title="step", yaxis_title="BTL loss", height=320,
                       margin={"t": 40})
    return acc, loss, notes

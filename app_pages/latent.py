"""Latent space: t-SNE of a VPL run's latent means per evaluation step, coloured by user, group or an
aspect's weight, with the people scored at that step (core.users.people) placed on the same picture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from plotly.colors import qualitative

from core.common.runs import RunDir
from core.data.table import ASPECTS
from core.jobs.manager import JobManager, default_root
from core.serving import latents_view as lv
from core.users.tastes import group_labels
from ui.state import run_label

WEIGHT = "weight: "
COLOURINGS = ["user", "group"] + [WEIGHT + a for a in ASPECTS]
PALETTE = qualitative.Plotly
NO_USER = "#ffffff"  # fill of people outside training when colouring by user or group


@st.cache_data(max_entries=256, show_spinner=False)
def load_latents(path: str, mtime: float) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with np.load(path) as z:
            mu, user = np.asarray(z["mu"], dtype=np.float64), np.asarray(z["user"])
    except Exception:  # noqa: BLE001 - half-written or foreign file: skipped and reported
        return None
    if mu.ndim != 2 or len(mu) != len(user) or len(mu) == 0 or not np.isfinite(mu).all():
        return None
    return mu, user


@st.cache_data(max_entries=64, show_spinner=False)
def cached_people(files: tuple[tuple[str, str, float], ...], step: int) -> lv.People | None:
    return lv.load_people({source: path for source, path, _ in files}, step)


@st.cache_data(max_entries=64, show_spinner="Running t-SNE…")
def tsne(path: str, mtime: float, people: tuple[tuple[str, str, float], ...], step: int, perplexity: float,
         seed: int) -> np.ndarray | None:
    """The probe points first, then the people rows (when given and of the same latent size)."""
    data = load_latents(path, mtime)
    if data is None:
        return None
    mu = data[0]
    ppl = cached_people(people, step) if people else None
    if ppl is not None and ppl.mu.shape[1] == mu.shape[1]:
        mu = np.vstack([mu, ppl.mu])
    return lv.tsne_2d(mu, perplexity, seed)


@st.cache_data(max_entries=32, show_spinner=False)
def separation(files: tuple[tuple[int, str, float], ...]) -> tuple[list[int], list[float | None], int]:
    """Silhouette of the latent means (in latent space, not the t-SNE picture) by user, per step."""
    from sklearn.metrics import silhouette_score

    steps, scores, skipped = [], [], 0
    for step, path, mtime in files:
        data = load_latents(path, mtime)
        if data is None:
            skipped += 1
            continue
        mu, user = data
        n_users = len(np.unique(user))
        score = None
        if 2 <= n_users < len(mu) and np.ptp(mu, axis=0).max() > 1e-9:
            score = float(silhouette_score(mu, user, metric="euclidean"))
        steps.append(step)
        scores.append(score)
    return steps, scores, skipped


def mtime(p: str) -> float:
    try:
        return Path(p).stat().st_mtime
    except OSError:
        return 0.0


st.title("Latent space")
jm = JobManager(default_root())
runs = jm.list()
candidates = [r for r in runs if lv.latent_files(r["path"])]
if runs.skipped:
    st.caption(f"Skipped {runs.skipped} folder(s) that are not runs.")
if not candidates:
    st.info("No run with latents yet. Launch a VPL run on the Train page (e.g. the two-opposed lesson); "
            "each evaluation saves the latent means of a fixed probe set here.")
    st.stop()

ids = [r["run_id"] for r in candidates]
by_id = {r["run_id"]: r for r in candidates}
url_run = st.query_params.get("run")
run_id = st.selectbox("Run", ids, index=ids.index(url_run) if url_run in ids else 0, key="latent_run",
                      format_func=lambda rid: run_label(by_id[rid]))
st.query_params["run"] = run_id
run_path = by_id[run_id]["path"]
files = lv.latent_files(run_path)
steps = list(files)
p_files = lv.people_files(run_path)

# a run that stopped early kept an earlier step's model (its people are scored there): open on that step
kept = (by_id[run_id].get("stopped_early") or {}).get("best_step")
c1, c2, c3 = st.columns([3, 1, 1])
step = c1.select_slider("Evaluation step", options=steps, value=kept if kept in steps else steps[-1], key="latent_step",
                        help=f"This run stopped early and kept the model of step {kept}." if kept in steps else None)
perplexity = c2.slider("Perplexity", 2, 50, 15, key="latent_perplexity")
seed = c3.number_input("t-SNE seed", 0, 10_000, 0, key="latent_seed")
_cfg = RunDir(run_path).config() or {}
try:
    groups = group_labels(_cfg["users"], int(_cfg.get("user_seed", 0)))
except (KeyError, TypeError, ValueError):
    groups = None
W = lv.run_weights(_cfg)
many = groups is not None and len(groups) > 8
# 100 users in clusters: group colours show whether clusters separate; 100 random users are one group
# ("random" + the uniform user), where a weight says more.
default = ("group" if len(set(groups)) > 2 else WEIGHT + ASPECTS[0]) if many and groups else "user"
url_colour = st.query_params.get("colour")
c4, c5 = st.columns([3, 2])
colour_by = c4.radio(
    "Colour by", COLOURINGS, index=COLOURINGS.index(url_colour if url_colour in COLOURINGS else default),
    key="latent_colour", horizontal=True,
    format_func=lambda c: c.replace("_", " "),
    help="user: one colour per training user. group: the preset's clusters (custom users with equal weights "
         "share a group). weight: the share of that aspect in the user's (or person's) taste, 0 to 1: does the "
         "latent space order people by what they want?")
st.query_params["colour"] = colour_by
show_people = c5.checkbox(
    "Show people outside training", value=True, key="latent_people", disabled=not p_files,
    help="People read from 8 of their own choices (a few readings each): the run's own users and people it "
         "never trained on (one-hot tastes, blends, uniform, random draws), scored on all pairs of the test "
         "questions. Embedded in the same t-SNE as the probe points.")
if not p_files:
    c5.caption("This run has no people files (written by conditional runs since people scoring; older runs "
               "and traditional runs have none).")
elif step not in p_files and show_people:
    c5.caption(f"People are scored at steps {', '.join(map(str, p_files))} (the last evaluation and every "
               "`people_every` steps); pick one of those to see them here.")

aspect = colour_by[len(WEIGHT):] if colour_by.startswith(WEIGHT) else None
path = files[step]
data = load_latents(path, mtime(path))
people_key = tuple((s, p, mtime(p)) for s, p in p_files.get(step, {}).items()) if show_people else ()
people = cached_people(people_key, step) if people_key else None
left, right = st.columns([3, 2])
with left:
    if data is None:
        st.warning(f"Step {step}: the latents file could not be read (still being written, or not a latents "
                   "file). Pick another step.")
    else:
        mu, user = data
        if people_key and people is None:
            st.caption(f"Step {step}: the people files could not be read; only the probe points are shown.")
        if people is not None and people.mu.shape[1] != mu.shape[1]:
            st.warning(f"The people file of step {step} has {people.mu.shape[1]}-d latents, the probe set "
                       f"{mu.shape[1]}-d: people left out.")
            people = None
        xy = tsne(path, mtime(path), people_key if people is not None else (), step, float(perplexity), int(seed))
        pxy = xy[len(mu):]
        xy = xy[:len(mu)]
        fig = go.Figure()
        pw = lv.probe_weights(user, W)
        if aspect is not None and pw is None:
            st.caption("The run's users could not be read from its config: coloured by user instead.")
            aspect = None
        colour_of_user: dict[int, str] = {}
        if aspect is not None:
            k = ASPECTS.index(aspect)
            fig.add_trace(go.Scattergl(
                x=xy[:, 0], y=xy[:, 1], mode="markers", name=f"probe queries ({len(np.unique(user))} users)",
                marker={"size": 7, "opacity": 0.85, "color": pw[:, k], "coloraxis": "coloraxis"},
                customdata=user, meta={"points": "probe", "aspect": aspect},
                text=[f"user {u}<br>{lv.weights_text(w)}" for u, w in zip(user, pw, strict=True)],
                hovertemplate="%{text}<extra></extra>"))
        elif colour_by == "group" and groups is not None and int(user.max()) < len(groups):
            g_of = np.asarray(groups)[user]
            for i, g in enumerate(dict.fromkeys(groups)):
                colour_of_user.update({u: PALETTE[i % len(PALETTE)] for u, gg in enumerate(groups) if gg == g})
                m = g_of == g
                if m.any():
                    fig.add_trace(go.Scattergl(x=xy[m, 0], y=xy[m, 1], mode="markers",
                                               name=f"{g} ({len(np.unique(user[m]))} users)",
                                               marker={"size": 6, "opacity": 0.7, "color": PALETTE[i % len(PALETTE)]},
                                               meta={"group": g}, text=[f"user {u}" for u in user[m]]))
        else:
            for i, u in enumerate(np.unique(user)):
                colour_of_user[int(u)] = PALETTE[i % len(PALETTE)]
                m = user == u
                fig.add_trace(go.Scattergl(x=xy[m, 0], y=xy[m, 1], mode="markers", name=f"user {u}",
                                           marker={"size": 7, "opacity": 0.8, "color": colour_of_user[int(u)]},
                                           meta={"user": int(u)}, showlegend=len(np.unique(user)) <= 12))
        if people is not None:
            hover = np.asarray(lv.people_hover(people), dtype=object)
            for source, label, symbol in (("trained", "the run's users, fresh readings", "star"),
                                          ("outside", "people outside training", "diamond")):
                m = people.source == source
                if not m.any():
                    continue
                if aspect is not None:
                    colour = people.weights[m, ASPECTS.index(aspect)]
                    marker = {"color": colour, "coloraxis": "coloraxis"}
                else:  # a training user's readings take that user's colour; people outside have none
                    colour = [colour_of_user.get(int(p), NO_USER) if source == "trained" else NO_USER
                              for p in people.person[m]]
                    marker = {"color": colour}
                n_p = len(np.unique(people.person[m]))
                fig.add_trace(go.Scattergl(
                    x=pxy[m, 0], y=pxy[m, 1], mode="markers", name=f"{label} ({n_p}, {int(m.sum())} readings)",
                    marker={**marker, "size": 11, "symbol": symbol,
                            "line": {"width": 1.5, "color": "#222"}},
                    meta={"people": source}, customdata=people.person[m], text=hover[m],
                    hovertemplate="%{text}<extra></extra>"))
        if aspect is not None:
            fig.update_layout(coloraxis={"colorscale": "Viridis", "cmin": 0.0, "cmax": 1.0,
                                         "colorbar": {"title": {"text": f"{lv.SHORT[aspect]}<br>weight"}}},
                              legend={"orientation": "h", "y": -0.05})
        n_people = f" + {len(people)} people readings" if people is not None else ""
        fig.update_layout(title=f"t-SNE of latent means at step {step}<br><sup>{len(mu)} probe queries{n_people}, "
                                f"{mu.shape[1]}-d</sup>", height=500, margin={"t": 60},
                          xaxis={"showticklabels": False}, yaxis={"showticklabels": False})
        st.plotly_chart(fig, key="latent_tsne", use_container_width=True)
        if people is not None:
            acc = people.accuracy[people.source == "outside"]
            mean = f"; their mean accuracy on all test pairs {np.nanmean(acc):.3f}" if np.isfinite(acc).any() else ""
            st.caption(f"{people.n_people} people read from their own choices at step {step}: diamonds "
                       f"are people the run never trained on{mean}; stars are its own users, read afresh. Hover "
                       "one for the person's weights and accuracy.")
with right:
    st.markdown(
        "**Reading t-SNE with care.** The picture depends on *perplexity* (the neighbourhood size; "
        "capped at (n-1)/3 here) and on the *seed*: change both and keep only what survives. Distances "
        "between clusters and cluster sizes mean little; t-SNE can split one blob or merge close ones. "
        "Each step is embedded on its own (with its people, when shown), so axes do not line up across "
        "steps. The number below is computed in the latent space itself, on the probe queries only, not "
        "on this picture.")
    triples = tuple((s, p, mtime(p)) for s, p in files.items())
    s_steps, scores, skipped = separation(triples)
    cur = dict(zip(s_steps, scores, strict=True)).get(step)
    st.metric("Silhouette by user at this step", "n/a" if cur is None else f"{cur:.3f}",
              help="-1..1: near 1 = each user's latents sit together, far from the other users'; "
                   "near 0 = the latent does not separate users.")
    sep = go.Figure(go.Scatter(x=s_steps, y=scores, mode="lines+markers", name="silhouette"))
    sep.update_layout(title="Separation of users in latent space", xaxis_title="step",
                      yaxis_title="silhouette", yaxis_range=[-1, 1], height=300, margin={"t": 40})
    if kept in s_steps:
        sep.add_vline(x=kept, line_dash="dot", line_color="#555", annotation_text=f"kept step {kept}")
    st.plotly_chart(sep, key="latent_separation", use_container_width=True)
    if skipped:
        st.caption(f"Skipped {skipped} unreadable latents file(s).")

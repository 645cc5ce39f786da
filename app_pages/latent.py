"""Latent space: t-SNE of a VPL run's latent means per evaluation step, coloured by user."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from core.jobs import JobManager, default_root
from core.references import group_labels
from core.runs import RunDir
from ui.state import run_label

STEP_RE = re.compile(r"^step-(\d+)\.npz$")


def latent_files(run_path: str) -> dict[int, str]:
    out = {}
    try:
        for p in (Path(run_path) / "latents").iterdir():
            m = STEP_RE.match(p.name)
            if m:
                out[int(m.group(1))] = str(p)
    except OSError:
        pass
    return dict(sorted(out.items()))


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


@st.cache_data(max_entries=64, show_spinner="Running t-SNE…")
def tsne(path: str, mtime: float, perplexity: float, seed: int) -> np.ndarray | None:
    from sklearn.manifold import TSNE

    data = load_latents(path, mtime)
    if data is None:
        return None
    mu = data[0]
    perp = float(min(perplexity, max(1.0, (len(mu) - 1) / 3)))
    return TSNE(n_components=2, perplexity=perp, random_state=int(seed), init="pca",
                learning_rate="auto").fit_transform(mu)


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
candidates = [r for r in runs if latent_files(r["path"])]
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
files = latent_files(by_id[run_id]["path"])
steps = list(files)

c1, c2, c3, c4 = st.columns([3, 1, 1, 1])
step = c1.select_slider("Evaluation step", options=steps, value=steps[-1], key="latent_step")
perplexity = c2.slider("Perplexity", 2, 50, 15, key="latent_perplexity")
seed = c3.number_input("t-SNE seed", 0, 10_000, 0, key="latent_seed")
try:
    _cfg = RunDir(by_id[run_id]["path"]).config() or {}
    groups = group_labels(_cfg["users"], int(_cfg.get("user_seed", 0)))
except (KeyError, TypeError, ValueError):
    groups = None
many = groups is not None and len(groups) > 8
colour_by = c4.radio("Colour by", ["user", "group"], index=1 if many else 0, key="latent_colour",
                     disabled=groups is None, help="group: the preset's clusters (custom users with equal weights "
                     "share a group). With 100 users, 100 colours say little; groups show whether clusters separate.")

path = files[step]
data = load_latents(path, mtime(path))
left, right = st.columns([3, 2])
with left:
    if data is None:
        st.warning(f"Step {step}: the latents file could not be read (still being written, or not a latents "
                   "file). Pick another step.")
    else:
        mu, user = data
        xy = tsne(path, mtime(path), float(perplexity), int(seed))
        fig = go.Figure()
        if colour_by == "group" and groups is not None and int(user.max()) < len(groups):
            g_of = np.asarray(groups)[user]
            for g in dict.fromkeys(groups):
                m = g_of == g
                if m.any():
                    fig.add_trace(go.Scattergl(x=xy[m, 0], y=xy[m, 1], mode="markers",
                                               name=f"{g} ({len(np.unique(user[m]))} users)",
                                               marker={"size": 6, "opacity": 0.7}, meta={"group": g},
                                               text=[f"user {u}" for u in user[m]]))
        else:
            for u in np.unique(user):
                m = user == u
                fig.add_trace(go.Scattergl(x=xy[m, 0], y=xy[m, 1], mode="markers", name=f"user {u}",
                                           marker={"size": 7, "opacity": 0.8}, meta={"user": int(u)},
                                           showlegend=len(np.unique(user)) <= 12))
        fig.update_layout(title=f"t-SNE of latent means at step {step} ({len(mu)} probe queries, "
                                f"{mu.shape[1]}-d)", height=460, margin={"t": 40},
                          xaxis={"showticklabels": False}, yaxis={"showticklabels": False})
        st.plotly_chart(fig, key="latent_tsne", use_container_width=True)
with right:
    st.markdown(
        "**Reading t-SNE with care.** The picture depends on *perplexity* (the neighbourhood size; "
        "capped at (n-1)/3 here) and on the *seed*: change both and keep only what survives. Distances "
        "between clusters and cluster sizes mean little; t-SNE can split one blob or merge close ones. "
        "Each step is embedded on its own, so axes do not line up across steps. The number below is "
        "computed in the latent space itself, not on this picture.")
    triples = tuple((s, p, mtime(p)) for s, p in files.items())
    s_steps, scores, skipped = separation(triples)
    cur = dict(zip(s_steps, scores, strict=True)).get(step)
    st.metric("Silhouette by user at this step", "n/a" if cur is None else f"{cur:.3f}",
              help="-1..1: near 1 = each user's latents sit together, far from the other users'; "
                   "near 0 = the latent does not separate users.")
    sep = go.Figure(go.Scatter(x=s_steps, y=scores, mode="lines+markers", name="silhouette"))
    sep.update_layout(title="Separation of users in latent space", xaxis_title="step",
                      yaxis_title="silhouette", yaxis_range=[-1, 1], height=300, margin={"t": 40})
    st.plotly_chart(sep, key="latent_separation", use_container_width=True)
    if skipped:
        st.caption(f"Skipped {skipped} unreadable latents file(s).")

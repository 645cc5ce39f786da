"""Playground: become a user of a trained run, watch it place you and predict your choices, score text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.config import LESSON_TWO_OPPOSED
from core.data.table import ASPECTS
from core.jobs import JobManager, default_root
from core.reward import PersonalRewardModel, RewardModelError, ask_pairs
from ui.state import run_label

N_PREDICT = 16


@st.cache_resource(show_spinner="Loading the trained model…", max_entries=4)
def load_model(path: str, stamp: float) -> PersonalRewardModel:
    return PersonalRewardModel.from_run(path, device="cpu")


@st.cache_data(show_spinner=False, max_entries=32)
def pairs_for(path: str, stamp: float, k: int, how: str, seed: int, exclude: tuple[int, ...]) -> list[tuple]:
    rm = load_model(path, stamp)
    return ask_pairs(rm.table(), rm.W, k, how=how, seed=seed, exclude=exclude)


@st.cache_data(show_spinner="Placing you among the simulated users…", max_entries=64)
def tsne_with_visitor(path: str, stamp: float, mu: tuple[float, ...]) -> np.ndarray:
    """t-SNE (as on the Latent page: perplexity 15, seed 0) of the probe latents plus the visitor (last row)."""
    from sklearn.manifold import TSNE

    rm = load_model(path, stamp)
    X = np.vstack([rm.probe["mu"], np.asarray(mu)[None]])
    perp = float(min(15.0, max(1.0, (len(X) - 1) / 3)))
    return TSNE(n_components=2, perplexity=perp, random_state=0, init="pca").fit_transform(X)


def ab_question(table, pair: tuple[int, int, int], number: int, prefix: str, height: int) -> str | None:
    """Show question ``number`` with its two answers side by side; 'a' or 'b' once the visitor picks."""
    q, i, j = pair
    st.markdown(f"**Question {number}.** {table.prompts[q]}")
    ca, cb = st.columns(2)
    ca.text_area("Answer A", table.responses[q][i], height=height, disabled=True, key=f"{prefix}_ta_{number}")
    cb.text_area("Answer B", table.responses[q][j], height=height, disabled=True, key=f"{prefix}_tb_{number}")
    pick_a = ca.button("A is better", key=f"{prefix}a", use_container_width=True)
    pick_b = cb.button("B is better", key=f"{prefix}b", use_container_width=True)
    return "a" if pick_a else "b" if pick_b else None


def demos_from(table, pairs, answers: str) -> list[tuple[str, str, str]]:
    out = []
    for (q, i, j), a in zip(pairs, answers, strict=False):
        chosen, rejected = (i, j) if a == "a" else (j, i)
        out.append((table.prompts[q], table.responses[q][chosen], table.responses[q][rejected]))
    return out


def traditional_twin(runs: list[dict], rm: PersonalRewardModel) -> dict | None:
    """A finished BTL run on the same data and users, to compare predictions with."""
    keys = ("users", "user_seed", "data", "corpus_prompts", "corpus_seed", "signal", "rating_noise", "encoder")
    for r in runs:
        cfg = r.get("_cfg") or {}
        if cfg.get("method") == "btl" and all(cfg.get(k) == getattr(rm.cfg, k) for k in keys):
            return r
    return None


st.title("Playground")
st.caption("Become a user. Answer a few A/B questions, see where the model places you among the simulated users "
           "it was trained on, then let it predict your next choices before you make them.")
jm = JobManager(default_root())
runs = []
for r in jm.list():
    if r.get("kind", "train") == "train" and r.get("state") == "succeeded":
        r["_cfg"] = jm.run_dir(r["run_id"]).config() or {}
        runs.append(r)
if not runs:
    st.info("No finished training run yet. The two-opposed lesson trains one in about a minute.")
    if st.button("Run the two-opposed lesson", type="primary", key="pg_lesson"):
        for preset in ("traditional", "vpl-adaptive"):
            jm.submit({"preset": preset, "seed": 0, **LESSON_TWO_OPPOSED})
        st.switch_page("app_pages/train.py")
    st.stop()

conditional = [r for r in runs if r["_cfg"].get("method") == "vpl"]
choices = [r["run_id"] for r in conditional or runs]
by_id = {r["run_id"]: r for r in runs}
qp = st.query_params
url_run = qp.get("run")
run_id = st.selectbox("Trained run", choices, index=choices.index(url_run) if url_run in choices else 0,
                      format_func=lambda rid: run_label(by_id[rid]), key="pg_run")
if run_id != url_run:
    qp["run"] = run_id
    qp.pop("ans", None)
    qp.pop("pred", None)
path = by_id[run_id]["path"]
try:
    stamp = Path(path, "model.safetensors").stat().st_mtime  # a retrained run reloads
    rm = load_model(path, stamp)
except (RewardModelError, OSError) as err:
    st.error(f"This run cannot be used: {err}")
    st.stop()
table = rm.table()

c1, c2 = st.columns(2)
k = c1.slider("Questions to answer", 4, 16, int(qp.get("k", 8)), key="pg_k")
how = c2.radio("How questions are picked", ["infogain", "random"], horizontal=True, key="pg_how",
               index=0 if qp.get("how", "infogain") == "infogain" else 1,
               help="infogain: the questions that best tell the run's users apart (seed eq. 5-7)")
if str(k) != qp.get("k") or how != qp.get("how", "infogain"):
    qp["k"], qp["how"] = str(k), how
answers = "".join(ch for ch in qp.get("ans", "") if ch in "ab")[:k]
asked = pairs_for(path, stamp, int(k), how, 0, ())

if not rm.conditional:
    st.warning("This run's model is traditional (BTL): it gives every user the same reward, so it cannot place "
               "you. Pick a vpl run to play; scoring below still works.")
else:
    st.subheader(f"1. Your choices ({len(answers)}/{k})")
    if len(answers) < k:
        pick = ab_question(table, asked[len(answers)], len(answers) + 1, "pg_", 220)
        if pick:
            qp["ans"] = answers + pick
            st.rerun()
    if st.button("Start over", key="pg_reset"):
        qp.pop("ans", None)
        qp.pop("pred", None)
        st.rerun()

    if answers:
        me = rm.infer_user(demos_from(table, asked, answers))
        top = me.nearest[0]
        w_txt = ", ".join(f"{a.replace('_', ' ')} {x:.2f}" for a, x in zip(ASPECTS, top["weights"], strict=True))
        st.markdown(f"**Nearest simulated user:** user {top['user']} ({w_txt}), latent distance "
                    f"{top['distance']:.2f}" + (f"; next: user {me.nearest[1]['user']} at {me.nearest[1]['distance']:.2f}"
                                                if len(me.nearest) > 1 else ""))
        left, right = st.columns(2)
        xy = tsne_with_visitor(path, stamp, tuple(float(x) for x in me.mu))
        users = rm.probe["user"]
        fig = go.Figure()
        for u in np.unique(users):
            m = users == u
            fig.add_trace(go.Scatter(x=xy[:-1][m, 0], y=xy[:-1][m, 1], mode="markers", name=f"user {u}",
                                     marker={"size": 6, "opacity": 0.6}))
        fig.add_trace(go.Scatter(x=[xy[-1, 0]], y=[xy[-1, 1]], mode="markers+text", name="you", text=["you"],
                                 textposition="top center", marker={"size": 16, "symbol": "star", "color": "black"}))
        fig.update_layout(title="You among the run's users (t-SNE of latent means, as on the Latent page)",
                          height=380, margin={"t": 40})
        left.plotly_chart(fig, key="pg_latent", use_container_width=True)
        wf = go.Figure(go.Bar(x=[a.replace("_", " ") for a in ASPECTS], y=[me.weights[a] for a in ASPECTS],
                              error_y={"type": "data", "array": [me.weights_std[a] for a in ASPECTS]}))
        wf.update_layout(title="Your estimated aspect weights (± uncertainty)", yaxis_range=[0, 1.05], height=380,
                         margin={"t": 40})
        right.plotly_chart(wf, key="pg_weights", use_container_width=True)
        qual = rm.weight_map_quality
        right.caption(f"Weights come from a linear map fitted from the run's users' latents to their weight vectors "
                      f"({qual['kind']} error {qual.get('mae', float('nan')):.3f} on this run's users). With two "
                      "users the map is a line between them: it can only say which of the two you resemble.")

    if len(answers) >= k:
        st.subheader("2. Predict me")
        me = rm.infer_user(demos_from(table, asked, answers))
        preds = "".join(ch for ch in qp.get("pred", "") if ch in "ab")[:N_PREDICT]
        nxt = pairs_for(path, stamp, N_PREDICT, "random", 1, tuple(q for q, _, _ in asked))
        twin = traditional_twin(runs, rm)
        btl = None
        if twin is not None:
            tstamp = Path(twin["path"], "model.safetensors").stat().st_mtime
            btl = load_model(twin["path"], tstamp)
        mine = trad = 0
        for (q, i, j), a in zip(nxt, preds, strict=False):
            p = rm.preference(table.prompts[q], table.responses[q][i], table.responses[q][j], user=me)
            mine += (p > 0.5) == (a == "a")
            if btl is not None:
                pt = btl.preference(table.prompts[q], table.responses[q][i], table.responses[q][j], user=None)
                trad += (pt > 0.5) == (a == "a")
        n = len(preds)
        if n:
            score = f"**Personal model: {mine}/{n} ({mine / n:.2f})**"
            score += f" · Traditional model: {trad}/{n} ({trad / n:.2f})" if btl is not None else \
                " · no finished traditional run on the same data to compare with"
            st.markdown(score)
        if n < len(nxt):
            q, i, j = nxt[n]
            p = rm.preference(table.prompts[q], table.responses[q][i], table.responses[q][j], user=me)
            st.info(f"The model predicts you will pick **{'A' if p > 0.5 else 'B'}** (p = {max(p, 1 - p):.2f}).")
            pick = ab_question(table, nxt[n], n + 1, "pg_p", 200)
            if pick:
                qp["pred"] = preds + pick
                st.rerun()
        else:
            st.success("Done: that is every prediction question.")

st.subheader("3. Score your own text")
with st.form("pg_score_form"):
    prompt = st.text_area("Prompt", key="pg_prompt")
    responses = [st.text_area(f"Response {n + 1}", key=f"pg_resp{n}") for n in range(4)]
    go_score = st.form_submit_button("Score")
if go_score:
    given = [r for r in responses if r.strip()]
    try:
        if len(given) < 2:
            raise RewardModelError("responses: give at least two responses")
        cols = {}
        shown_users = list(range(min(rm.n_users, 12)))
        for u in shown_users:
            cols[f"user {u}"] = rm.score(prompt, given, user=u)
        if rm.conditional and answers:
            cols["you"] = rm.score(prompt, given, user=rm.infer_user(demos_from(table, asked, answers)))
        df = pd.DataFrame(cols, index=[f"response {n + 1}" for n in range(len(given))]).round(3)
        st.dataframe(df, key="pg_scores")
        if rm.n_users > 12:
            st.caption(f"The first 12 of {rm.n_users} simulated users.")
    except RewardModelError as err:
        st.error(str(err))

"""Users: design preference weight vectors and see where they disagree (seed §3.3.1, Figure 3)."""

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.data import ASPECTS, DataError, non_dominated_mask
from core.users.tastes import (
    PRESETS,
    UserError,
    disagreement_matrix,
    info_gain_select,
    preferred,
    preset_groups,
    user_scores,
    validate_users,
)
from ui.state import CORPUS_DEFAULTS, corpus, current_users, encode_users, qp_get, uploaded_table

st.title("Users")
st.markdown("A simulated user is a weight on each of the four aspects; their score of a response is "
            "the weighted sum of its ratings. Opposite weights make opposite choices.")

# ---------------------------------------------------------------- data
with st.expander("Data", expanded=False):
    source = st.radio("Data set", ["Offline corpus", "Upload an UltraFeedback file"], horizontal=True, key="data_source")
    table = None
    if source == "Offline corpus":
        c1, c2, c3, c4 = st.columns(4)
        cseed = c1.number_input("Corpus seed", 0, 10_000, qp_get("cseed", 0, int), key="corpus_seed")
        n = c2.number_input("Questions", 100, 5000, qp_get("n", CORPUS_DEFAULTS["n"], int), step=100, key="corpus_n")
        signal = c3.slider("Signal strength", 0.0, 1.0, qp_get("signal", 1.0, float), 0.05, key="corpus_signal",
                           help="Share of text cues that follow the ratings; lower = harder to learn.")
        noise = c4.slider("Rating noise", 0.0, 1.0, qp_get("noise", 0.0, float), 0.05, key="corpus_noise",
                          help="Share of ratings replaced at random, unrelated to the text.")
        table = corpus(int(cseed), int(n), float(signal), float(noise))
        st.query_params.update({"cseed": int(cseed), "n": int(n), "signal": signal, "noise": noise})
    else:
        up = st.file_uploader("UltraFeedback rows (.jsonl, .json or .parquet)", type=["jsonl", "json", "parquet"],
                              key="upload")
        lenient = st.checkbox("Skip bad rows instead of stopping at the first one", key="lenient")
        if up is not None:
            try:
                table = uploaded_table(up.name, up.getvalue(), lenient)
            except (DataError, ValueError, OSError) as err:
                st.error(f"Could not load {up.name}: {err}")
            else:
                rep = table.report
                st.success(f"Loaded {len(table):,} questions from {rep['rows_read']:,} rows.")
                if rep["skipped_total"] or rep["dropped_sources"]:
                    st.warning(f"Skipped {rep['skipped_total']} bad rows {rep['skipped']}; "
                               f"dropped by source: {rep['dropped_sources']}")
        if table is None:
            table = corpus(**CORPUS_DEFAULTS)
            st.info("Showing the offline corpus until a file loads.")
    if table is not None and len(table) == 0:
        st.error("The data set has no questions left after loading; showing the offline corpus.")
        table = corpus(**CORPUS_DEFAULTS)

# ---------------------------------------------------------------- users
name, useed, W = current_users()
# the URL is the source of truth: when it changed (an applied edit, a shared link), re-seed the widgets
if st.session_state.get("_users_from_url") != (name, useed):
    st.session_state["preset"], st.session_state["user_seed"] = name, useed
    st.session_state["_users_from_url"] = (name, useed)
c1, c2 = st.columns([2, 1])
options = list(PRESETS) + ["custom"]
chosen = c1.selectbox("Preset", options, key="preset")
new_seed = c2.number_input("Seed", 0, 10_000, key="user_seed")
if chosen != name or new_seed != useed:
    if chosen == "custom":
        st.query_params.update({"preset": "custom", "useed": int(new_seed), "users": encode_users(W)})
    else:
        st.query_params.update({"preset": chosen, "useed": int(new_seed)})
        st.query_params.pop("users", None)
    st.rerun()

groups = preset_groups(name) if name != "custom" else [f"user {i}" for i in range(len(W))]
editor_df = pd.DataFrame(W, columns=list(ASPECTS))
editor_df.insert(0, "group", groups)
st.markdown(f"**{len(W)} users.** Edit weights, add or delete rows, then apply; rows are normalized to sum to 1.")
edited = st.data_editor(editor_df, num_rows="dynamic", width="stretch", height=min(38 * (len(W) + 2), 320),
                        key=f"editor-{name}-{useed}-{len(W)}", disabled=["group"])
if st.button("Apply edits", key="apply_users"):
    try:
        newW = validate_users(edited[list(ASPECTS)].fillna(0.0).to_numpy(dtype=float))
    except (UserError, ValueError) as err:
        st.error(f"Not applied: {err}")
    else:
        st.query_params.update({"preset": "custom", "useed": int(useed), "users": encode_users(newW)})
        st.rerun()

top = preferred(user_scores(table, W))  # (U, Q)

# ---------------------------------------------------------------- simplex picture
tab_simplex, tab_heat, tab_stats, tab_ig = st.tabs(["Simplex", "Disagreement", "Corpus statistics", "Demonstrations"])
with tab_simplex:
    # the 4-simplex is a tetrahedron in 3-D: each user sits at the weight-average of the corners
    corners = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=float)
    xyz = W @ corners
    fig = go.Figure()
    edges = [(a, b) for a in range(4) for b in range(a + 1, 4)]
    for a, b in edges:
        fig.add_trace(go.Scatter3d(x=corners[[a, b], 0], y=corners[[a, b], 1], z=corners[[a, b], 2], mode="lines",
                                   line={"color": "#bbb"}, showlegend=False, hoverinfo="skip"))
    fig.add_trace(go.Scatter3d(x=corners[:, 0], y=corners[:, 1], z=corners[:, 2], mode="text", text=list(ASPECTS),
                               showlegend=False))
    for g in dict.fromkeys(groups):
        idx = [i for i, x in enumerate(groups) if x == g]
        fig.add_trace(go.Scatter3d(x=xyz[idx, 0], y=xyz[idx, 1], z=xyz[idx, 2], mode="markers", name=g,
                                   marker={"size": 4 if len(W) > 10 else 8},
                                   text=[f"user {i}: " + ", ".join(f"{v:.2f}" for v in W[i]) for i in idx],
                                   hoverinfo="text"))
    fig.update_layout(height=480, scene={"xaxis": {"visible": False}, "yaxis": {"visible": False},
                                         "zaxis": {"visible": False}}, margin={"l": 0, "r": 0, "t": 0, "b": 0})
    st.plotly_chart(fig, key="simplex")
    st.caption("Each corner is a user who cares about one aspect only; the centre is the uniform user.")

with tab_heat:
    only_nd = st.checkbox("Only questions whose 4 responses are mutually non-dominated (the study's filter)",
                          value=True, key="nd_filter")
    qmask = non_dominated_mask(table) if only_nd else np.ones(len(table), dtype=bool)
    D = disagreement_matrix(top[:, qmask])
    heat = go.Figure(go.Heatmap(z=D, colorscale="Blues", colorbar={"title": "questions"},
                                hovertemplate="user %{y} vs user %{x}: %{z} questions<extra></extra>"))
    heat.update_layout(height=480, xaxis_title="user", yaxis_title="user", yaxis_autorange="reversed")
    st.plotly_chart(heat, key="disagreement_heatmap")
    st.caption(f"Entry (i, j): questions (of {int(qmask.sum()):,}) where users i and j pick a different best "
               f"response. Mean over user pairs: {D[np.triu_indices(len(D), 1)].mean() if len(D) > 1 else 0:.1f}.")

with tab_stats:
    stats, corr = table.aspect_stats()
    st.dataframe(stats.style.format("{:.3f}"), key="aspect_stats")
    cfig = go.Figure(go.Heatmap(z=corr.to_numpy(), x=list(ASPECTS), y=list(ASPECTS), zmin=-1, zmax=1,
                                colorscale="RdBu", texttemplate="%{z:.2f}"))
    cfig.update_layout(height=360, title="Pearson correlation between aspects")
    st.plotly_chart(cfig, key="aspect_corr")
    hist = go.Figure()
    for k, a in enumerate(ASPECTS):
        vals = table.ratings[:, :, k].ravel()
        hist.add_histogram(x=vals[~np.isnan(vals)], name=a, xbins={"start": 0.5, "end": 5.5, "size": 1})
    hist.update_layout(barmode="group", height=300, xaxis_title="rating", yaxis_title="completions")
    st.plotly_chart(hist, key="aspect_hist")

with tab_ig:
    k = st.slider("Demonstration questions to pick", 1, 12, 8, key="ig_k")
    chosen_q, gains = info_gain_select(top, k)
    rows = []
    for rank, (q, g) in enumerate(zip(chosen_q, gains, strict=True), start=1):
        counts = np.bincount(top[:, q][top[:, q] >= 0], minlength=table.n_completions)
        rows.append({"pick": rank, "qid": table.qids[q], "question": table.prompts[q], "information (nats)": round(g, 3),
                     "users per best response": counts.tolist()})
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="ig_table")
    st.caption("Greedy choice (seed eq. 5-7): each pick is the question whose answers, together with the "
               "earlier picks, best tell the users apart. The information can reach at most "
               f"log(number of users) = {np.log(max(len(W), 1)):.2f} nats, when every user is distinguished.")

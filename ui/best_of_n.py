"""The Playground's Best-of-N panel: a simulated student, N fresh answers, the pick of each rule and what the
student really thinks of it (core.serving.best_of_n)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.data.candidates import generate_candidates
from core.serving.best_of_n import (
    NS,
    best_of_n,
    candidate_features,
    candidate_rewards,
    choices_curve,
    read_people,
    run_texts,
)
from core.serving.run_reward import RewardModelError, RunRewardModel
from core.serving.student import COUNTS
from core.users.people import Person

QUESTIONS = 6  # fresh questions, each with max(NS) candidates


@st.cache_data(show_spinner="Writing fresh questions with 64 answers each, and reading them…", max_entries=8)
def panel_data(path: str, stamp: float, twin_path: str | None, twin_stamp: float | None, weights: tuple,
               k: int, _rm: RunRewardModel, _twin: RunRewardModel | None) -> dict:
    """Candidates, the student's true utility of each, both models' rewards and the curve over N."""
    cands = generate_candidates(QUESTIONS, max(NS), seed=0, avoid=run_texts(_rm))
    student = [Person("student", "student", np.asarray(weights, float))]
    mu = read_people(_rm, student, n_demos=k, readings=1, seed=0)  # the answers section 2 shows
    scored = {"features": candidate_features(_rm, cands),
              "twin": None if _twin is None else candidate_rewards(_twin, cands, None)}
    res = best_of_n(_rm, _twin, student, cands, ns=NS, n_demos=k, readings=1, scored=scored)
    return {"prompts": cands.prompts, "responses": cands.responses,
            "utility": (np.nan_to_num(cands.ratings) @ np.asarray(weights, float)).tolist(),  # (Q, N)
            "personal": candidate_rewards(_rm, cands, mu, scored["features"])[0].tolist(),  # (Q, N)
            "traditional": None if _twin is None else scored["twin"].tolist(),
            "curve": res["people"][0],
            "choices": choices_curve(_rm, _twin, student, cands, n=16, choices=COUNTS, readings=3,
                                     scored=scored)}


def picks(data: dict, q: int, n: int) -> pd.DataFrame:
    """One row per rule: the candidate it picks among the first n of question q (its number, 1..n) and the
    student's true score of it (the random rule: the mean over the n)."""
    u = np.asarray(data["utility"][q][:n])
    rows = [("oracle (the student's own best)", int(u.argmax()) + 1),
            ("personal (reads the student)", int(np.argmax(data["personal"][q][:n])) + 1)]
    if data["traditional"] is not None:
        rows.append(("traditional (one model for all)", int(np.argmax(data["traditional"][q][:n])) + 1))
    out = [{"rule": r, "answer": f"#{a}", "true score": f"{u[a - 1]:.2f}"} for r, a in rows]
    out.append({"rule": "random (on average)", "answer": "any", "true score": f"{u.mean():.2f}"})
    return pd.DataFrame(out).set_index("rule")


def best_of_n_section(rm: RunRewardModel, twin: RunRewardModel | None, path: str, stamp: float,
                      twin_path: str | None, twin_stamp: float | None, w: np.ndarray, k: int) -> None:
    st.subheader("4. Best of N: which answer each model would give the student")
    st.caption("A reward model's job is to choose. For fresh questions the page writes 64 answers each, with "
               "their own mix of the four aspects; each rule picks one of the first N. The student's true score of "
               "an answer is their weights times its aspect levels (1 to 5), which the generator knows exactly.")
    try:
        data = panel_data(path, stamp, twin_path, twin_stamp, tuple(round(float(x), 6) for x in w), k, rm, twin)
    except (RewardModelError, ValueError) as err:
        st.error(str(err))
        return
    c1, c2 = st.columns(2)
    n = c1.select_slider("N, the answers to choose from", options=list(NS), value=16, key="pg_bon_n")
    q = c2.number_input("Question", 1, QUESTIONS, 1, key="pg_bon_q") - 1
    st.markdown(f"**Question {q + 1}:** {data['prompts'][q]}")
    table = picks(data, q, n)
    st.table(table)
    shown = sorted({int(a[1:]) for a in table["answer"] if a.startswith("#")})
    with st.expander(f"The picked answers ({len(shown)})"):
        for a in shown:
            st.markdown(f"**Answer {a}** (true score {data['utility'][q][a - 1]:.2f})")
            st.text(data["responses"][q][a - 1])
    curve = data["curve"]
    fig = go.Figure()
    for rule, dash in (("oracle", "dot"), ("personal", "solid"), ("traditional", "dash"), ("random", "dashdot")):
        if curve["utility"][rule] is not None:
            fig.add_trace(go.Scatter(x=list(NS), y=curve["utility"][rule], mode="lines+markers", name=rule,
                                     line={"dash": dash}))
    # the personal model's own score of its pick: rising with N while the true score flattens is overoptimization
    fig.add_trace(go.Scatter(x=list(NS), y=curve["proxy"], mode="lines", name="personal's own score of its pick",
                             yaxis="y2", line={"dash": "dot", "color": "grey"}, meta={"series": "proxy"}))
    fig.update_layout(title=f"The student's true score of each rule's pick, mean over {QUESTIONS} fresh questions",
                      xaxis={"title": "N, answers to choose from", "type": "log", "tickvals": list(NS),
                             "ticktext": [str(x) for x in NS]},
                      yaxis={"title": "true score (rating units)"},
                      yaxis2={"title": "model's own score (sd above the answers' mean)", "overlaying": "y",
                              "side": "right", "showgrid": False},
                      height=420, margin={"t": 50}, legend={"orientation": "h", "y": -0.25})
    st.plotly_chart(fig, key="pg_bon_curve", use_container_width=True)
    st.caption("The grey dotted line is the personal model's own score of the answer it picked (in standard deviations "
               "above the mean of all the question's answers). Where it keeps rising with N while the student's true "
               "score of the pick flattens or falls, the model is being overoptimized: it chases what it believes "
               "the student wants, not what they do.")
    i = list(NS).index(16)
    share = curve["share"]
    line = f"At N = 16 the personal model's picks get {share['personal'][i]:.0%} of the gain the student's own best " \
           "answer has over a random one"
    if share["traditional"] is not None:
        line += f"; the traditional model's get {share['traditional'][i]:.0%}"
    st.markdown(line + ".")
    ch = data["choices"]
    fig = go.Figure(go.Scatter(x=ch["choices"], y=ch["personal"], mode="lines+markers", name="personal"))
    if ch["traditional"] is not None:
        fig.add_hline(y=ch["traditional"], line_dash="dash", annotation_text="traditional (reads no answers)",
                      annotation_position="bottom right")
    fig.update_layout(title="Share of the oracle's gain at best-of-16 against the answers the student gave",
                      xaxis={"title": "answers the student gave", "type": "log", "tickvals": ch["choices"],
                             "ticktext": [str(x) for x in ch["choices"]]},
                      yaxis={"title": "share of the oracle's gain"}, height=360, margin={"t": 50})
    st.plotly_chart(fig, key="pg_bon_choices", use_container_width=True)
    st.caption("Each point: the mean over 3 independent sets of the student's answers. The traditional model gives "
               "everyone the same reward, so its share does not move.")
    if twin is None:
        st.caption("No finished traditional run on the same data, so there is no traditional pick to compare with.")

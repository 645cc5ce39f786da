"""Playground: become a user of a trained run (or let a simulated student be one), watch it place them and
predict their choices beside a traditional twin, score text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.data.table import ASPECTS
from core.jobs.manager import JobManager, default_root
from core.serving.best_of_n import twin_rank
from core.serving.run_reward import RewardModelError, RunRewardModel, UserEstimate, ask_pairs
from core.serving.student import (
    answers_curve,
    ranking_hits,
    run_questions,
    sd_toward,
    student_answers,
    student_picks,
)
from core.training.config import LESSON_TWO_OPPOSED, PRESETS
from core.users.tastes import UserError, user_scores, validate_weights
from ui.best_of_n import best_of_n_section
from ui.state import run_label

N_PREDICT = 16
MODES = {"answer": "I answer", "student": "Simulated student"}
STUDENT_DEFAULT = (0.5, 0.5, 0.0, 0.0)
NICE = {a: a.replace("_", " ") for a in ASPECTS}


@st.cache_resource(show_spinner="Loading the trained model…", max_entries=4)
def load_model(path: str, stamp: float) -> RunRewardModel:
    return RunRewardModel.from_run(path, device="cpu")


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


@st.cache_data(show_spinner="The simulated student answers 1, 2, 4, 8 and 16 questions, three times over…",
               max_entries=64)
def student_curve(path: str, stamp: float, twin_path: str | None, twin_stamp: float | None,
                  weights: tuple[float, ...]) -> dict:
    rm = load_model(path, stamp)
    twin = load_model(twin_path, twin_stamp) if twin_path else None
    return answers_curve(rm, twin, list(weights))


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


def rank_question(table, q: int, number: int, picked: list[int]) -> int | None:
    """Question ``number`` with all its answers in a grid; each unranked one has a 'best of the rest'
    button (key ``pg_r<answer>``). The answer clicked, or None."""
    st.markdown(f"**Question {number}.** {table.prompts[q]}")
    C = len(table.responses[q])
    cols = st.columns(2)
    clicked = None
    for c in range(C):
        box = cols[c % 2].container(border=True)
        rank = picked.index(c) + 1 if c in picked else None
        box.text_area(f"Answer {c + 1}", table.responses[q][c], height=160, disabled=True,
                      key=f"pg_rt_{number}_{c}")
        label = f"Your #{rank}" if rank else f"Best of the rest (#{len(picked) + 1})"
        if box.button(label, key=f"pg_r{c}", disabled=rank is not None, use_container_width=True):
            clicked = c
    return clicked


def parse_orders(text: str, C: int, n: int) -> list[list[int]]:
    """The URL's ``pred``: one group of answer indices (best first) per prediction question, '-'-separated.
    Every group but the last is complete (C - 1 picks; the last answer is implied); garbage ends the list."""
    out: list[list[int]] = []
    for chunk in text.split("-")[:n]:
        picks = [int(ch) for ch in chunk if ch.isdigit()]
        if len(picks) != len(chunk) or any(p >= C for p in picks) or len(set(picks)) != len(picks) \
                or len(picks) > C - 1:
            break
        out.append(picks)
        if len(picks) < C - 1:
            break
    return [o for o in out if o]


def full_order(picks: list[int], C: int) -> list[int]:
    return picks + [c for c in range(C) if c not in picks]


def demos_from(table, pairs, answers) -> list[tuple[str, str, str]]:
    """(prompt, chosen, rejected) for each answered pair; a None answer (a tie) is left out."""
    out = []
    for (q, i, j), a in zip(pairs, answers, strict=False):
        if a is None:
            continue
        chosen, rejected = (i, j) if a == "a" else (j, i)
        out.append((table.prompts[q], table.responses[q][chosen], table.responses[q][rejected]))
    return out


def traditional_twin(runs: list[dict], rm: RunRewardModel) -> dict | None:
    """A finished BTL run on the same data and users, to compare predictions with; one trained on the same
    pairs (contested_only, agreed_share) and features (segment_pool) first (core.serving.best_of_n.twin_rank)."""
    mine = rm.cfg.model_dump(mode="json")
    ranked = [(twin_rank(mine, r.get("_cfg") or {}), i) for i, r in enumerate(runs)]
    ranked = [(-rank, i) for rank, i in ranked if rank]
    return runs[min(ranked)[1]] if ranked else None


def weights_text(w) -> str:
    return ", ".join(f"{NICE[a]} {float(x):.2g}" for a, x in zip(ASPECTS, w, strict=True))


def show_placement(rm: RunRewardModel, path: str, stamp: float, me: UserEstimate, who: str, true_w=None,
                   key: str = "pg") -> None:
    """The nearest simulated users (distance against the posterior's spread), the t-SNE with ``who`` as a
    star, and the estimated weights with error bars (beside ``true_w``, the weights a student really has)."""
    def far(entry) -> str:
        sd = sd_toward(me.mu, me.logvar, rm.user_latents[entry["user"]])
        return f"latent distance {entry['distance']:.2f} (posterior sd {sd:.2f} that way: {entry['distance'] / sd:.1f} sd)"

    top = me.nearest[0]
    line = f"**Nearest simulated user:** user {top['user']} ({weights_text(top['weights'])}), {far(top)}"
    if len(me.nearest) > 1:
        line += f"; next: user {me.nearest[1]['user']}, {far(me.nearest[1])}"
    st.markdown(line)
    st.caption(f"The model reads {who} as a distribution over its latent space, not a point. 'sd' is that "
               f"distribution's standard deviation along the line to the user: within about 1 sd the model cannot "
               f"tell {who} from that user; many sd away, it is sure {who} differ.")
    left, right = st.columns(2)
    xy = tsne_with_visitor(path, stamp, tuple(float(x) for x in me.mu))
    users = rm.probe["user"]
    fig = go.Figure()
    for u in np.unique(users):
        m = users == u
        fig.add_trace(go.Scatter(x=xy[:-1][m, 0], y=xy[:-1][m, 1], mode="markers", name=f"user {u}",
                                 marker={"size": 6, "opacity": 0.6}))
    star = "you" if who == "you" else "student"
    fig.add_trace(go.Scatter(x=[xy[-1, 0]], y=[xy[-1, 1]], mode="markers+text", name=star, text=[star],
                             textposition="top center", marker={"size": 16, "symbol": "star", "color": "black"}))
    fig.update_layout(title=f"{who.capitalize()} among the run's users (t-SNE of latent means)",
                      height=380, margin={"t": 40})
    left.plotly_chart(fig, key=f"{key}_latent", use_container_width=True)
    x = [NICE[a] for a in ASPECTS]
    wf = go.Figure()
    if true_w is not None:
        wf.add_trace(go.Bar(x=x, y=[float(v) for v in true_w], name="true (the sliders, summing to 1)",
                            marker_color="#999"))
    wf.add_trace(go.Bar(x=x, y=[me.weights[a] for a in ASPECTS], name="estimated ± 1 sd",
                        error_y={"type": "data", "array": [me.weights_std[a] for a in ASPECTS]}))
    wf.update_layout(title=f"{'Your' if who == 'you' else 'The student’s'} estimated aspect weights (± 1 sd)",
                     yaxis_range=[0, 1.05], height=380, margin={"t": 40}, barmode="group",
                     legend={"orientation": "h", "y": -0.15})
    right.plotly_chart(wf, key=f"{key}_weights", use_container_width=True)
    qual = rm.weight_map_quality
    right.caption(f"Error bars: ± 1 standard deviation, from two sources: the spread of the weights over 64 draws "
                  f"from the posterior above, and the error of the linear map from latents to weights, fitted on the "
                  f"run's users ({qual['kind']} error {qual.get('mae', float('nan')):.3f}). With two users the map is "
                  "a line between them: it can only say which of the two is closer."
                  + (" Compare with the grey bars: their gap is this student's real error, which bars measured on the "
                     "run's own users can understate." if true_w is not None else ""))


def student_section(rm: RunRewardModel, path: str, stamp: float, k: int, twin: dict | None):
    """The teacher's simulated student: weights from four sliders, answered from the table's ratings."""
    table = rm.table()
    st.subheader("1. The student")
    st.caption("Give the student any taste: how much each aspect matters to them. The page answers every question "
               "as they would, from the table's ratings of the four answers.")
    qp = st.query_params
    try:
        url_w = [float(x) for x in qp.get("sw", "").split(",")]
        url_w = url_w if len(url_w) == len(ASPECTS) and all(0 <= x <= 1 for x in url_w) else STUDENT_DEFAULT
    except ValueError:
        url_w = STUDENT_DEFAULT
    cols = st.columns(len(ASPECTS))
    raw = [cols[n].slider(NICE[a], 0.0, 1.0, float(url_w[n]), 0.05, key=f"pg_w_{a}")
           for n, a in enumerate(ASPECTS)]
    enc = ",".join(f"{x:g}" for x in raw)
    if qp.get("sw") != enc:
        qp["sw"] = enc
    try:
        w = validate_weights(raw)
    except UserError as err:
        st.error(f"Student weights ({weights_text(raw)}): {err}. Move at least one slider above 0.")
        return None
    st.caption(f"As shares of the student's taste: {weights_text(w)}.")

    try:
        given = student_answers(rm, w, k)
    except ValueError as err:
        st.error(f"Student weights ({weights_text(raw)}): {err}")
        return None
    pairs = [(q, min(c, r), max(c, r)) for q, c, r in given]  # shown in the table's answer order
    picks = student_picks(table, w, pairs)
    s = user_scores(table, w[None])[0]
    st.subheader(f"2. The student answers {len(pairs)} questions")
    st.caption("Random questions from the run's training split, one pair of answers each on which the student is not "
               "indifferent: the first of the three sets of answers the curve below averages over.")
    rows = []
    for n, ((q, i, j), a) in enumerate(zip(pairs, picks, strict=True)):
        rows.append({"question": n + 1, "prompt": table.prompts[q][:90], "picked": (a or "tie").upper(),
                     "score A": round(float(s[q, i]), 2), "score B": round(float(s[q, j]), 2),
                     "answer A": table.responses[q][i][:70], "answer B": table.responses[q][j][:70]})
    shown = 4
    st.dataframe(pd.DataFrame(rows[:shown]).set_index("question"), key="pg_student_answers")
    if len(rows) > shown:
        with st.expander(f"The other {len(rows) - shown} answers"):
            st.dataframe(pd.DataFrame(rows[shown:]).set_index("question"), key="pg_student_more")
    me = rm.infer_user(demos_from(table, pairs, picks))
    st.markdown(f"**Where the model places the student** after their {len(pairs)} answers:")
    show_placement(rm, path, stamp, me, "the student", true_w=w, key="pg_student")

    st.subheader("3. How fast each model learns the student")
    try:
        curve = student_curve(path, stamp, twin["path"] if twin else None,
                              Path(twin["path"], "model.safetensors").stat().st_mtime if twin else None,
                              tuple(round(float(x), 6) for x in w))
    except (RewardModelError, ValueError) as err:
        st.error(str(err))
        return me
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=curve["counts"], y=curve["personal"], mode="lines+markers",
                             name="personal (this run, reads the answers)"))
    if curve["traditional"] is not None:
        fig.add_trace(go.Scatter(x=curve["counts"], y=curve["traditional"], mode="lines+markers",
                                 name="traditional twin (BTL, same data)", line={"dash": "dash"}))
    fig.add_hline(y=0.5, line_dash="dot", line_color="grey", annotation_text="chance",
                  annotation_position="bottom right")
    low = min([0.4] + [v - 0.03 for v in curve["personal"] + (curve["traditional"] or [])])
    fig.update_layout(title="Accuracy on the student's pairs against the number of answers they gave",
                      xaxis={"title": "answers the student gave", "type": "log", "tickvals": curve["counts"],
                             "ticktext": [str(c) for c in curve["counts"]]},
                      yaxis={"title": "pairs ordered the student's way", "range": [low, 1.0]},
                      height=420, margin={"t": 50}, legend={"orientation": "h", "y": -0.2})
    st.plotly_chart(fig, key="pg_student_curve", use_container_width=True)
    _, test_q = run_questions(rm)
    note = "" if curve["traditional"] is not None else \
        " No finished traditional run on the same data, so there is no traditional line to compare with."
    st.caption(f"Scored on {curve['pairs']} pairs: every pair of answers the student strictly prefers on the run's "
               f"{len(test_q)} test questions (at most 400, drawn at random), questions no run trained on. The "
               "student's answers come from the training questions; each point is the mean over 3 independent sets "
               "of answers. The traditional model gives everyone the same reward, so more answers cannot help it: "
               f"its line is flat.{note}")
    twin_stamp = Path(twin["path"], "model.safetensors").stat().st_mtime if twin else None
    best_of_n_section(rm, load_model(twin["path"], twin_stamp) if twin else None, path, stamp,
                      twin["path"] if twin else None, twin_stamp, w, k)
    return me


st.title("Playground")
st.caption("Become a user: answer a few A/B questions, see where the model places you among the simulated users "
           "it was trained on, then let it predict your next choices before you make them. Or let a simulated "
           "student with any taste answer, and watch how fast the model learns them.")
jm = JobManager(default_root())
runs = []
for r in jm.list():
    if r.get("kind", "train") == "train" and r.get("state") == "succeeded":
        r["_cfg"] = jm.run_dir(r["run_id"]).config() or {}
        runs.append(r)
if not runs:
    st.info("No finished training run yet. This trains a `personal` model and a traditional one on the same "
            "pairs of the two-opposed users (every pair each user has a preference on) in about a minute.")
    if st.button("Train a personal model to play with", type="primary", key="pg_lesson"):
        for preset in ("traditional", "personal"):  # the twin trains on the same pairs and features
            jm.submit({"preset": preset, "seed": 0, **LESSON_TWO_OPPOSED, "agreed_share": 1.0, "steps": 200,
                       "eval_every": 20, "segment_pool": PRESETS["personal"]["segment_pool"]})
        st.switch_page("app_pages/train.py")
    st.stop()

qp = st.query_params
url_mode = qp.get("mode", "answer")
mode_label = st.radio("Who answers", list(MODES.values()), horizontal=True, key="pg_mode",
                      index=1 if url_mode == "student" else 0,
                      help="Simulated student: set a taste with sliders and let the page answer as that student "
                           "(for a projector: no clicking through questions).")
mode = next(k for k, v in MODES.items() if v == mode_label)
if mode != url_mode:
    qp["mode"] = mode

conditional = [r for r in runs if r["_cfg"].get("method") == "vpl"]
choices = [r["run_id"] for r in conditional or runs]
by_id = {r["run_id"]: r for r in runs}
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
twin = traditional_twin(runs, rm)

c1, c2 = st.columns(2)
k = c1.slider("Questions to answer", 4, 16, int(qp.get("k", 8)), key="pg_k")
how = qp.get("how", "infogain") if qp.get("how") in ("infogain", "random") else "infogain"
if mode == "answer":
    how = c2.radio("How questions are picked", ["infogain", "random"], horizontal=True, key="pg_how",
                   index=0 if how == "infogain" else 1,
                   help="infogain: the questions that best tell the run's users apart (seed eq. 5-7)")
if str(k) != qp.get("k") or how != qp.get("how", "infogain"):
    qp["k"], qp["how"] = str(k), how
answers = "".join(ch for ch in qp.get("ans", "") if ch in "ab")[:k]
asked = pairs_for(path, stamp, int(k), how, 0, ())
me_for_scores, who_for_scores = None, "you"

if not rm.conditional:
    st.warning("This run's model is traditional (BTL): it gives every user the same reward, so it cannot place "
               "anyone. Pick a vpl run to play; scoring below still works.")
elif mode == "student":
    me_for_scores, who_for_scores = student_section(rm, path, stamp, int(k), twin), "student"
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
        me_for_scores = rm.infer_user(demos_from(table, asked, answers))
        show_placement(rm, path, stamp, me_for_scores, "you")

    if len(answers) >= k:
        st.subheader("2. Predict me")
        me = me_for_scores
        C = table.n_completions
        train_q, _ = run_questions(rm)
        # test-split questions only (no run trained on them), none of those just answered
        nxt = pairs_for(path, stamp, N_PREDICT, "random", 1,
                        tuple(sorted({q for q, _, _ in asked} | {int(q) for q in train_q})))
        orders = parse_orders(qp.get("pred", ""), C, len(nxt))
        done = [full_order(o, C) for o in orders if len(o) == C - 1]
        current = orders[len(done)] if len(orders) > len(done) else []
        st.caption(f"Order the {C} answers of each new question from best to worst: click the best of the remaining "
                   f"answers until one is left ({C - 1} clicks). Both models are scored on all {C * (C - 1) // 2} pairs "
                   "of every question you order. These questions are from the run's test split: no run trained on them.")
        btl = None
        if twin is not None:
            btl = load_model(twin["path"], Path(twin["path"], "model.safetensors").stat().st_mtime)
        mine = trad = total = 0
        for (q, _, _), order in zip(nxt, done, strict=False):
            h, n = ranking_hits(rm.score(table.prompts[q], table.responses[q], user=me), order)
            mine, total = mine + h, total + n
            if btl is not None:
                trad += ranking_hits(btl.score(table.prompts[q], table.responses[q]), order)[0]
        if total:
            score = f"**Personal model: {mine}/{total} pairs ({mine / total:.2f})**"
            score += f" · Traditional model: {trad}/{total} ({trad / total:.2f})" if btl is not None else \
                " · no finished traditional run on the same data to compare with"
            st.markdown(score + f" · over the {len(done)} question{'s' if len(done) > 1 else ''} you ordered")
        if len(done) < len(nxt):
            q = nxt[len(done)][0]
            guess = np.argsort(-np.asarray(rm.score(table.prompts[q], table.responses[q], user=me)), kind="stable")
            st.info("The model predicts your order: **" + " > ".join(f"Answer {c + 1}" for c in guess) + "**")
            c = rank_question(table, q, len(done) + 1, current)
            if c is not None:
                picks = current + [c]
                chunks = ["".join(map(str, o[:C - 1])) for o in done] + ["".join(map(str, picks))]
                qp["pred"] = "-".join(chunks)
                st.rerun()
        else:
            st.success("Done: that is every prediction question.")

st.subheader("Score your own text")
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
        if me_for_scores is not None:
            cols[who_for_scores] = rm.score(prompt, given, user=me_for_scores)
        df = pd.DataFrame(cols, index=[f"response {n + 1}" for n in range(len(given))]).round(3)
        st.dataframe(df, key="pg_scores")
        if rm.n_users > 12:
            st.caption(f"The first 12 of {rm.n_users} simulated users.")
    except RewardModelError as err:
        st.error(str(err))

"""AppTest: the Playground on a real two-opposed lesson run, for people no training user is.

A visitor is placed and predicted on all pairs of test-split questions, against the traditional twin on the
same pairs; a teacher's simulated student gets an accuracy curve over all pairs of the run's test questions.
"""

from __future__ import annotations

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core.serving.run_reward import RunRewardModel, ask_pairs
from core.serving.student import ranking_hits, run_questions
from core.users.tastes import user_scores
from tests.app.figures import APP, array, figure
from tests.conftest import LESSON_IDS

VISITOR = np.asarray([0.8, 0.2, 0.0, 0.0])  # mostly helpfulness: neither of the lesson's one-hot users
STUDENT = [0.5, 0.5, 0.0, 0.0]  # an even blend of the two opposed users
SLIDERS = ["pg_w_helpfulness", "pg_w_honesty", "pg_w_instruction_following", "pg_w_truthfulness"]


def _open(root, monkeypatch, **qp) -> AppTest:
    monkeypatch.setenv("PREFLENS_RUNS_DIR", str(root))
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    at.switch_page("app_pages/playground.py")
    at.query_params.update(qp)
    return at.run()


def _text(at) -> str:
    return " ".join(m.value for m in at.markdown)


@pytest.mark.slow
def test_simulated_student_curve_beats_the_traditional_twin_and_bad_weights_say_so(lesson_runs_root, monkeypatch):
    at = _open(lesson_runs_root, monkeypatch, run=LESSON_IDS["vpl-adaptive"], k="8", mode="student")
    assert not at.exception, at.exception
    assert at.radio(key="pg_mode").value == "Simulated student"
    for key, w in zip(SLIDERS, STUDENT, strict=True):
        at.slider(key=key).set_value(w)
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    curve = figure(at, "pg_student_curve")["data"]
    assert [t["name"].split(" ")[0] for t in curve] == ["personal", "traditional"]
    counts = [int(x) for x in array(curve[0]["x"])]
    personal, traditional = array(curve[0]["y"]).astype(float), array(curve[1]["y"]).astype(float)
    assert counts == [1, 2, 4, 8, 16] and len(personal) == len(traditional) == 5
    assert ((0 <= personal) & (personal <= 1)).all() and ((0 <= traditional) & (traditional <= 1)).all()
    # on the same pairs of unseen questions, a blend neither training user has: once the personal model has
    # read 8 or 16 answers it orders more of them the student's way than the user-blind model does
    assert (personal[3:] > traditional[3:]).all(), (personal, traditional)
    caption = " ".join(c.value for c in at.caption)
    assert "test questions" in caption and "no run trained on" in caption, caption
    # the student is placed, and the estimated weights stand beside the true ones (with error bars)
    assert "**Nearest simulated user:**" in _text(at) and " sd" in _text(at)
    bars = figure(at, "pg_student_weights")["data"]
    assert array(bars[0]["y"]).astype(float).round(6).tolist() == STUDENT
    assert len(array(bars[1]["error_y"]["array"])) == 4
    assert at.query_params["mode"] == "student" and at.query_params["sw"] == "0.5,0.5,0,0"

    # best of N: the oracle's pick and the random rule's mean, by hand from the generator's own levels
    from core.data.candidates import generate_candidates
    from core.serving.best_of_n import run_texts
    from ui.best_of_n import QUESTIONS

    rm = RunRewardModel.from_run(lesson_runs_root / LESSON_IDS["vpl-adaptive"], device="cpu")
    cands = generate_candidates(QUESTIONS, 64, seed=0, avoid=run_texts(rm))
    for n, q in ((16, 1), (4, 3)):
        at.select_slider(key="pg_bon_n").set_value(n)
        at.number_input(key="pg_bon_q").set_value(q)
        at.run()
        assert not at.exception, at.exception
        u = cands.ratings[q - 1, :n] @ np.asarray(STUDENT)  # the student's true score of each of the first n
        frame = next(d.value for d in at.table if "true score" in d.value.columns)
        rows = dict(list((frame.set_index("rule") if "rule" in frame.columns else frame).iterrows()))
        oracle = rows["oracle (the student's own best)"]
        assert oracle["answer"] == f"#{int(u.argmax()) + 1}" and float(oracle["true score"]) == pytest.approx(u.max(), abs=0.006)
        assert float(rows["random (on average)"]["true score"]) == pytest.approx(u.mean(), abs=0.006)
        for rule in ("personal (reads the student)", "traditional (one model for all)"):
            pick = int(rows[rule]["answer"].lstrip("#"))
            assert 1 <= pick <= n and float(rows[rule]["true score"]) == pytest.approx(u[pick - 1], abs=0.006)
    traces = figure(at, "pg_bon_curve")["data"]
    lines = {t["name"]: array(t["y"]).astype(float) for t in traces if t.get("yaxis") != "y2"}
    assert set(lines) == {"oracle", "personal", "traditional", "random"}
    proxy = [array(t["y"]).astype(float) for t in traces if t.get("yaxis") == "y2"]
    assert len(proxy) == 1 and len(proxy[0]) == 7  # the personal model's own score of its pick, for overoptimization
    assert (lines["oracle"] >= lines["personal"] - 1e-9).all() and (lines["oracle"] >= lines["traditional"] - 1e-9).all()
    choices = figure(at, "pg_bon_choices")
    assert [int(x) for x in array(choices["data"][0]["x"])] == [1, 2, 4, 8, 16]

    for key in SLIDERS:
        at.slider(key=key).set_value(0.0)
    at.run()
    assert not at.exception, at.exception
    errors = " ".join(e.value for e in at.error)
    assert "weights" in errors and "helpfulness 0" in errors and "sum to 0" in errors, errors
    assert not [c for c in at.get("plotly_chart") if getattr(c, "key", None) == "pg_student_curve"]


@pytest.mark.slow
def test_a_visitor_no_training_user_is_gets_placed_and_predicted_on_all_pairs(lesson_runs_root, monkeypatch):
    rid = LESSON_IDS["vpl-adaptive"]
    at = _open(lesson_runs_root, monkeypatch, run=rid, k="8", how="random")
    assert not at.exception, at.exception
    rm = RunRewardModel.from_run(lesson_runs_root / rid, device="cpu")
    btl = RunRewardModel.from_run(lesson_runs_root / LESSON_IDS["traditional"], device="cpu")
    table = rm.table()
    s = user_scores(table, VISITOR[None])[0]  # (Q, C)
    asked = ask_pairs(table, rm.W, 8, how="random", seed=0)
    for q, i, j in asked:
        assert table.prompts[q] in _text(at)  # the page asks this very question
        at.button(key="pg_a" if s[q, i] >= s[q, j] else "pg_b").click().run()
        assert not at.exception, at.exception
    text = _text(at)
    assert "**Nearest simulated user:** user 0 " in text, text  # user 0 is the helpfulness user
    assert "posterior sd" in text, text  # the distance comes with the posterior's spread
    latent = figure(at, "pg_latent")
    assert any(t.get("name") == "you" for t in latent["data"])
    assert len(array(figure(at, "pg_weights")["data"][0]["error_y"]["array"])) == 4

    # predict me: order every answer of 4 test-split questions as the visitor would
    demos = [(table.prompts[q], *((table.responses[q][i], table.responses[q][j]) if s[q, i] >= s[q, j]
                                  else (table.responses[q][j], table.responses[q][i]))) for q, i, j in asked]
    me = rm.infer_user(demos)
    train_q, test_q = run_questions(rm)
    nxt = ask_pairs(table, rm.W, 16, how="random", seed=1,
                    exclude=sorted({q for q, _, _ in asked} | {int(q) for q in train_q}))
    hits = trad = total = 0
    for n, (q, _, _) in enumerate(nxt[:4]):
        assert q in set(test_q.tolist()) and f"**Question {n + 1}.** {table.prompts[q]}" in _text(at)
        mine = rm.score(table.prompts[q], table.responses[q], user=me)
        predicted = " > ".join(f"Answer {c + 1}" for c in np.argsort(-np.asarray(mine), kind="stable"))
        assert any(predicted in m.value for m in at.info), [m.value for m in at.info]  # shown before ordering
        order = sorted(range(table.n_completions), key=lambda c, q=q: (-s[q, c], c))
        for c in order[:-1]:
            at.button(key=f"pg_r{c}").click().run()
            assert not at.exception, at.exception
        h, m = ranking_hits(mine, order)
        hits, total = hits + h, total + m
        trad += ranking_hits(btl.score(table.prompts[q], table.responses[q]), order)[0]
    assert total == 24  # all 6 pairs of each of the 4 questions
    line = f"Personal model: {hits}/24 pairs ({hits / 24:.2f})** · Traditional model: {trad}/24"
    assert line in _text(at), _text(at)
    assert hits > trad, (hits, trad)  # on the very same pairs, reading the visitor beats averaging users
    assert len(at.query_params["ans"]) == 8 and len(at.query_params["pred"].split("-")) == 4

    # the URL is the state: a reload with it keeps the score
    again = _open(lesson_runs_root, monkeypatch, **{k: at.query_params[k] for k in at.query_params})
    assert not again.exception, again.exception
    assert line in _text(again), _text(again)

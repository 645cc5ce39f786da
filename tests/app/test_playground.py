"""AppTest: the Playground places a scripted one-hot visitor and keeps a correct 'predict me' score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core.reward import PersonalRewardModel, ask_pairs
from core.users import user_scores
from tests.conftest import LESSON_IDS

APP = str(Path(__file__).resolve().parents[2] / "app.py")
HONESTY = np.asarray([[0.0, 1.0, 0.0, 0.0]])


def _prefers_first(table, q, i, j) -> bool:
    s = user_scores(table, HONESTY)[0, q]
    return bool(s[i] > s[j])


@pytest.mark.slow
def test_playground_places_an_honesty_visitor_and_scores_predictions(lesson_runs_root, monkeypatch):
    monkeypatch.setenv("PREFLENS_RUNS_DIR", str(lesson_runs_root))
    rid = LESSON_IDS["vpl-adaptive"]
    at = AppTest.from_file(APP, default_timeout=240)
    at.run()
    at.switch_page("app_pages/playground.py")
    at.query_params.update({"run": rid, "k": "8", "how": "random"})
    at.run()
    assert not at.exception, at.exception
    rm = PersonalRewardModel.from_run(lesson_runs_root / rid, device="cpu")
    table = rm.table()
    asked = ask_pairs(table, rm.W, 8, how="random", seed=0)
    for q, i, j in asked:
        assert table.prompts[q] in " ".join(m.value for m in at.markdown)  # the page asks this very question
        at.button(key="pg_a" if _prefers_first(table, q, i, j) else "pg_b").click().run()
        assert not at.exception, at.exception
    text = " ".join(m.value for m in at.markdown)
    assert "**Nearest simulated user:** user 1 " in text, text  # user 1 is the honesty user
    latent = next(c for c in at.get("plotly_chart") if c.proto.id and "pg_latent" in c.proto.id)
    assert '"name":"you"' in latent.proto.spec.replace(" ", "")
    # predict me: answer 6 as the honesty user; the page's running score equals the model's own hits
    demos = [(table.prompts[q], *((table.responses[q][i], table.responses[q][j]) if _prefers_first(table, q, i, j)
                                  else (table.responses[q][j], table.responses[q][i]))) for q, i, j in asked]
    me = rm.infer_user(demos)
    btl = PersonalRewardModel.from_run(lesson_runs_root / LESSON_IDS["traditional"], device="cpu")
    nxt = ask_pairs(table, rm.W, 16, how="random", seed=1, exclude=[q for q, _, _ in asked])
    hits = trad = 0
    for q, i, j in nxt[:6]:
        first = _prefers_first(table, q, i, j)
        p = rm.preference(table.prompts[q], table.responses[q][i], table.responses[q][j], user=me)
        shown = "**A**" if p > 0.5 else "**B**"
        assert any(f"predicts you will pick {shown}" in m.value for m in at.info)  # shown before the answer
        hits += (p > 0.5) == first
        trad += (btl.preference(table.prompts[q], table.responses[q][i], table.responses[q][j]) > 0.5) == first
        at.button(key="pg_pa" if first else "pg_pb").click().run()
        assert not at.exception, at.exception
    text = " ".join(m.value for m in at.markdown)
    assert f"Personal model: {hits}/6" in text and f"Traditional model: {trad}/6" in text, text
    assert hits >= 5  # it does predict this visitor
    assert at.query_params["ans"] and len(at.query_params["pred"]) == 6  # shareable state in the URL

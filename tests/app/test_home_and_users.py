"""AppTest: the entry routes to Home and Users; the Users page reacts to presets and edits."""

from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

from core.data import generate_table, non_dominated_mask
from core.users.tastes import disagreement_matrix, preferred, preset, user_scores
from tests.app.figures import array, figure

APP = str(Path(__file__).resolve().parents[2] / "app.py")






def _expected_heatmap(preset_name, seed=0):
    table = generate_table(n_prompts=1500, seed=0)
    top = preferred(user_scores(table, preset(preset_name, seed=seed)))
    return disagreement_matrix(top[:, non_dominated_mask(table)])


def test_home_tells_the_lesson_and_users_page_shows_the_heatmap():
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception
    assert any("disagree on" in m.value for m in at.markdown)
    lesson = figure(at, "home_lesson")
    compromise = [bar["y"][2] for bar in lesson["data"]]
    assert compromise == [0.5, 0.5]

    at.switch_page("app_pages/users.py").run()
    assert not at.exception
    z = array(figure(at, "disagreement_heatmap")["data"][0]["z"])
    assert z.shape == (2, 2)
    assert np.array_equal(z, _expected_heatmap("two-opposed"))
    assert z[0, 1] > 0

    at.selectbox(key="preset").set_value("cluster").run()
    assert not at.exception
    assert at.query_params["preset"] == ["cluster"] or at.query_params["preset"] == "cluster"
    z = array(figure(at, "disagreement_heatmap")["data"][0]["z"])
    assert z.shape == (100, 100)
    assert np.array_equal(z, _expected_heatmap("cluster"))
    # the info-gain table names 8 distinct questions
    ig = next(d.value for d in at.dataframe if "question" in d.value.columns)
    assert len(ig) == 8 and ig["qid"].nunique() == 8


def test_editing_users_normalizes_and_bad_weights_are_named():
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["preset"] = "two-opposed"
    at.run()
    at.switch_page("app_pages/users.py").run()
    editor_key = at.data_editor[0].key
    # data_editor edits are applied as its delta state: set row 0's honesty to -1 (bad) then apply
    at.session_state[editor_key] = {"edited_rows": {0: {"honesty": -1.0}}, "added_rows": [], "deleted_rows": []}
    at.button(key="apply_users").click().run()
    assert any("'honesty' is negative" in e.value for e in at.error)
    at.session_state[editor_key] = {"edited_rows": {0: {"honesty": 1.0}}, "added_rows": [
        {"helpfulness": 1, "honesty": 1, "instruction_following": 1, "truthfulness": 1}], "deleted_rows": []}
    at.button(key="apply_users").click().run()
    assert not at.exception and not at.error
    qp = at.query_params
    assert (qp["preset"] if isinstance(qp["preset"], str) else qp["preset"][0]) == "custom"
    users = qp["users"] if isinstance(qp["users"], str) else qp["users"][0]
    W = np.array([[float(x) for x in r.split(",")] for r in users.split(";")])
    assert np.allclose(W, [[0.5, 0.5, 0, 0], [0, 1, 0, 0], [0.25, 0.25, 0.25, 0.25]])
    z = array(figure(at, "disagreement_heatmap")["data"][0]["z"])
    assert z.shape == (3, 3)

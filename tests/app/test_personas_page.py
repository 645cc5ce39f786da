"""AppTest: the Personas page reads persona runs from the checkpoints folder and draws the analyses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

from core.common.runs import RunDir
from tests.app.figures import array

PAGE = str(Path(__file__).resolve().parents[2] / "app_pages" / "personas.py")
USERS = [("Ann", "nurse", "health"), ("Bob", "nurse", "health"), ("Cy", "rapper", "music")]
# per user, choice on q1..q3 (preferred is "first" everywhere): Ann & Bob agree, Cy opposes on q2, q3
CHOICES = {0: ["first", "first", "second"], 1: ["first", "first", "second"], 2: ["first", "second", "first"]}




def _make_run(root: Path, run_id: str, mode: str):
    run = RunDir(root / run_id).create()
    run.write_config({"kind": "personas", "mode": mode, "judge": "default", "n_questions": 3})
    run.mark_running(kind="personas")
    run.set_progress(9, 9)
    run.mark_final("succeeded")
    with open(run.path / "results.jsonl", "w") as fh:
        for u, (name, occ, group) in enumerate(USERS):
            for j, ch in enumerate(CHOICES[u]):
                answers = ["A", "A"] if mode == "pairwise" else None
                fh.write(json.dumps({"key": f"{u}::q{j}", "user": u, "name": name, "occupation": occ, "group": group,
                                     "qid": f"q{j}", "q_index": j, "mode": mode, "preferred": "first",
                                     "choice": ch, "answers": answers}) + "\n")
        fh.write('{"torn')
    (run.path / "quality.json").write_text(json.dumps({
        "judge": "bundled:x", "method": "logits", "n_responses": 16,
        "spearman": {"truthfulness": 0.05, "instruction_following": -0.1, "helpfulness": None}}))


def _chart(at, key):
    charts = [c for c in at.get("plotly_chart") if getattr(c, "key", None) == key]
    assert charts, f"no chart {key}"
    return json.loads(charts[0].proto.spec)


def test_empty_root_says_so_and_offers_the_default_stories(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFLENS_RUNS_DIR", str(tmp_path))
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    assert any("No persona runs yet" in i.value for i in at.info)
    assert any("36 valid stories" in c.value for c in at.caption)


def test_results_show_similarity_graph_and_honest_quality_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFLENS_RUNS_DIR", str(tmp_path))
    _make_run(tmp_path, "personas-1", "scoring")
    _make_run(tmp_path, "personas-2", "pairwise")
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.query_params["run"] = "personas-1"
    at.run()
    assert not at.exception
    assert any("barely tracks" in w.value for w in at.warning)
    sim = array(_chart(at, "similarity")["data"][0]["z"])
    # vectors: Ann = Bob = [1, 1, -1], Cy = [1, -1, 1]; cos(Ann, Cy) = -1/3; order: health (Ann, Bob), music (Cy)
    assert sim.shape == (3, 3)
    assert np.allclose(sim, [[1, 1, -1 / 3], [1, 1, -1 / 3], [-1 / 3, -1 / 3, 1]])
    # default k = 2 (3 users): everyone is in everyone's top 2 -> one component of all three
    assert any("Ann (nurse), Bob (nurse), Cy (rapper)" in m.value for m in at.markdown)
    assert at.metric[1].value == "67%"  # 2 + 2 + 2 of 9 choose the dataset's preferred ("first")
    # k = 1: Ann<->Bob mutual; Cy's top is Ann (tie -> lower index) but Ann's top is Bob
    at.slider(key="topk").set_value(1).run()
    assert any("Ann (nurse), Bob (nurse)" in m.value and "Cy" not in m.value for m in at.markdown)
    at.selectbox(key="run_select").set_value("personas-2").run()
    assert at.query_params["run"] == ["personas-2"] or at.query_params["run"] == "personas-2"
    assert any("Position bias" in m.value and "100%" in m.value for m in at.markdown)


def test_compare_runs_shows_position_bias_as_inconsistency(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFLENS_RUNS_DIR", str(tmp_path))
    _make_run(tmp_path, "personas-1", "scoring")
    _make_run(tmp_path, "personas-2", "pairwise")
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    table = [d.value for d in at.dataframe if "named first position" in getattr(d.value, "columns", [])][0]
    assert set(table.index) == {"personas-1", "personas-2"}
    assert table.loc["personas-2", "named first position"] == 1.0  # every answer was "A"
    assert table.loc["personas-1", "first"] == round(6 / 9, 3)


def test_launch_starts_a_job_that_reports_its_error(tmp_path, monkeypatch):
    import time

    monkeypatch.setenv("PREFLENS_RUNS_DIR", str(tmp_path))
    monkeypatch.delenv("PREFLENS_JUDGE_BASE_URL", raising=False)
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    at.text_input(key="judge").set_value("openai:none")
    at.number_input(key="nq").set_value(2)
    at.radio(key="mode").set_value("pairwise").run()
    assert at.query_params["mode"] in ("pairwise", ["pairwise"]) and at.query_params["nq"] in ("2", ["2"])
    at.button(key="launch").click().run()
    assert not at.exception
    assert any("Started personas-" in s.value for s in at.success)
    run = next(tmp_path.glob("personas-*"))
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["mode"] == "pairwise" and cfg["n_questions"] == 2 and cfg["judge"] == "openai:none"
    deadline = time.time() + 60
    status = {}
    while time.time() < deadline:
        status = json.loads((run / "status.json").read_text())
        if status.get("state") in ("failed", "succeeded", "cancelled"):
            break
        time.sleep(0.5)
    assert status.get("state") == "failed" and "PREFLENS_JUDGE_BASE_URL" in status.get("error", "")

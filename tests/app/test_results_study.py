"""AppTest: the Results page queues the study's own setting as a job, like any other run."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from core.jobs import JobManager
from core.runs import RunDir

APP = str(Path(__file__).resolve().parents[2] / "app.py")


def test_results_page_queues_a_study_job(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFLENS_RUNS_DIR", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page("app_pages/results.py")
    at.run()
    assert not at.exception, at.exception
    at.selectbox(key="study_users").set_value("four-one-hot")
    at.number_input(key="study_seeds").set_value(1)
    next(b for b in at.button if b.label == "Queue the study").click().run()
    assert not at.exception, at.exception
    jm = JobManager(tmp_path)
    try:
        runs = jm.list()
        assert len(runs) == 1 and runs[0]["kind"] == "study" and runs[0]["label"] == "study-tiny-four-one-hot"
        cfg = RunDir(runs[0]["path"]).config()
        assert cfg["size"] == "tiny" and cfg["users"] == "four-one-hot" and cfg["seeds"] == [0]
        assert any("Queued study run" in s.value for s in at.success)
    finally:
        for r in jm.list():
            jm.cancel(r["run_id"])
    assert {r["state"] for r in jm.list()} == {"cancelled"}

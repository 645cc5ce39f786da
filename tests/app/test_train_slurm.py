"""AppTest: the Train page's launcher choice (local / Slurm), shown only where sinfo answers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from core.common.runs import FINAL_STATES
from core.jobs import slurm
from core.jobs.manager import JobManager

APP = str(Path(__file__).resolve().parents[2] / "app.py")


def _train_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page("app_pages/train.py")
    return at.run()


def test_no_launcher_choice_where_slurm_does_not_answer(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFLENS_RUNS_DIR", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # a machine without Slurm's commands
    st.cache_data.clear()  # the page caches sinfo's answer for 30 s
    assert slurm.partitions() is None
    at = _train_page()
    assert not at.exception, at.exception
    assert not [r for r in at.radio if r.key == "launcher"]
    assert [b for b in at.button if b.key == "launch"]  # launching locally is still there
    st.cache_data.clear()


@pytest.fixture
def slurm_page(tmp_path, monkeypatch, cache_root):
    """The Train page where Slurm answers, its runs in tmp_path: (AppTest, partitions)."""
    parts = slurm.partitions()
    if not parts:
        if os.environ.get("PREFLENS_REQUIRE_SLURM") == "1":
            pytest.fail("no Slurm answers, and PREFLENS_REQUIRE_SLURM=1 requires it")
        pytest.skip("no Slurm here: sinfo does not answer (sudo scripts/slurm-local.sh start)")
    monkeypatch.setenv("PREFLENS_RUNS_DIR", str(tmp_path))
    monkeypatch.setenv("PREFLENS_CACHE", str(cache_root))
    st.cache_data.clear()
    return _train_page(), parts


@pytest.mark.slow
def test_launch_on_slurm_from_the_train_page(tmp_path, slurm_page, small_corpus_embeddings):
    at, parts = slurm_page
    assert not at.exception, at.exception
    at.radio(key="launcher").set_value("Slurm").run()
    assert at.selectbox(key="slurm_partition").options == parts
    at.multiselect(key="methods").set_value(["vpl"])
    at.number_input(key="steps").set_value(4)
    at.number_input(key="slurm_time").set_value(7)
    at.number_input(key="slurm_gpus").set_value(0)
    at.button(key="launch").click().run()
    assert not at.exception, at.exception
    jm = JobManager(tmp_path)
    try:
        (run,) = jm.list()
        assert run["launcher"] == "slurm" and run["job_id"]
        assert run["slurm"] == {"partition": parts[0], "time_min": 7, "cpus": 1, "gpus": 0, "nodes": 1,
                                "tasks_per_node": 1, "gpus_per_task": 0}
        at.run()
        table = next(d.value for d in at.dataframe if "slurm job" in d.value.columns)  # the runs table
        assert list(table["slurm job"]) == [run["job_id"]]
        assert "node" in table.columns
    finally:
        for r in jm.list():
            if r["state"] not in FINAL_STATES:
                jm.cancel(r["run_id"])


def test_runs_on_several_slurm_tasks_launch_one_job_each(tmp_path, slurm_page):
    """Tasks per node 2: each run is one job of 2 ranks (core.training.distributed), so two methods with the grid
    box on become two jobs, not one grid job (a grid trains in one process). The jobs are cancelled unrun."""
    at, _ = slurm_page
    at.radio(key="launcher").set_value("Slurm").run()
    at.multiselect(key="methods").set_value(["traditional", "vpl"])
    at.number_input(key="slurm_tasks").set_value(2).run()
    assert at.checkbox(key="as_grid").value
    assert any("launched one job each, not as a grid" in c.value for c in at.caption)
    at.button(key="launch").click().run()
    assert not at.exception, at.exception
    jm = JobManager(tmp_path)
    try:
        runs = jm.list()
        assert sorted(r["kind"] for r in runs) == ["train", "train"], runs
        assert all(r["slurm"]["tasks_per_node"] == 2 and r["slurm"]["nodes"] == 1 for r in runs)
    finally:
        for r in jm.list():
            if r["state"] not in FINAL_STATES:
                jm.cancel(r["run_id"])

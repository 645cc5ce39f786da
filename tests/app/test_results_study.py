"""AppTest: the Results page queues the study's own setting as a job, and keeps runs of different settings apart."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from core.common.runs import RunDir
from core.jobs.manager import JobManager

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


def test_results_page_keeps_user_sets_apart_and_filters_them(tmp_path, monkeypatch):
    """Three personal runs on three user sets are three rows and three bars (issue 18: they were one row,
    0.914 ± 0.074); the user-set filter narrows the table; an older run without the people measures opens."""
    from tests.app.figures import figure, open_page
    from tests.test_experiments_table import PEOPLE, fake_run

    for i, (users, acc) in enumerate([("two-opposed", 1.0), ("four-one-hot", 0.93), ("random", 0.81)]):
        fake_run(tmp_path, f"personal-20260101-00000{i}-abcdef", acc, preset="personal", users=users,
                 people={**PEOPLE, "new_users_accuracy": acc - 0.2})
    fake_run(tmp_path, "personal-20260101-000009-abcdef", 0.99, preset="personal", users="two-opposed", seed=1)
    fake_run(tmp_path, "traditional-20260101-000008-abcdef", 0.5, preset="traditional", users="two-opposed",
             people={**PEOPLE, "new_users_accuracy": 0.55})
    monkeypatch.setenv("PREFLENS_RUNS_DIR", str(tmp_path))
    at = open_page("app_pages/results.py")
    assert not at.exception, at.exception
    table = next(d.value for d in at.dataframe if "converged_share" in d.value.columns)
    personal = table[table["method"] == "personal"]
    assert sorted(personal["users"]) == ["four-one-hot", "random", "two-opposed"]
    assert list(personal["runs"]) == [1 if u != "two-opposed" else 2 for u in personal["users"]]
    by_users = personal.set_index("users")
    assert by_users.loc["random", "new_users_accuracy"] == pytest.approx(0.61)
    assert by_users.loc["two-opposed", "new_users_accuracy"] == pytest.approx(0.8)  # the one seed that has it
    # the baseline beside it: traditional on the same users and data (trained on other pairs, scored on the same)
    assert by_users.loc["two-opposed", "new_users_traditional"] == pytest.approx(0.55)
    assert pd.isna(by_users.loc["random", "new_users_traditional"])  # no traditional run on that user set
    assert {"data", "pairs", "encoder", "all_pairs_accuracy", "new_users_min"} <= set(table.columns)
    bars = figure(at, "results_accuracy")["data"][0]["x"]
    assert len(bars) == len(set(bars)) == 4
    assert sorted(b.split(" · ")[1] for b in bars if b.startswith("personal")) == ["four-one-hot", "random",
                                                                                   "two-opposed"]

    at.multiselect(key="results_filter_users").set_value(["two-opposed", "random"]).run()
    assert not at.exception, at.exception
    table = next(d.value for d in at.dataframe if "converged_share" in d.value.columns)
    assert sorted(table["users"]) == ["random", "two-opposed", "two-opposed"]
    at.multiselect(key="results_filter_encoder").set_value([]).run()
    assert not at.exception, at.exception
    assert not [d for d in at.dataframe if "converged_share" in d.value.columns]
    assert any("No run matches" in i.value for i in at.info)

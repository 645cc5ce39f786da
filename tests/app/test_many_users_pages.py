"""AppTest: pages stay readable with 100 users (group bands, reference lines, colour by group)."""

from __future__ import annotations

import numpy as np
import pytest

from core.common.runs import RunDir
from core.experiments.gridjob import member_configs, validate_grid
from core.jobs.manager import JobManager
from core.training.config import LESSON_FOUR_USERS, build_config
from core.training.launch import train
from tests.app.figures import array, figure, open_page

TINY = {"corpus_prompts": 60, "max_train_per_user": 40, "max_test_per_user": 20, "pool_size": 20,
        "steps": 4, "eval_every": 2, "users": "cluster"}


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory, cache_root, small_corpus_embeddings):
    root = tmp_path_factory.mktemp("many")
    rid = "vpl-20260101-000000-cluster"
    train(build_config({"preset": "vpl", **TINY, "cache_dir": cache_root}), root / rid, log=lambda m: None)
    with pytest.MonkeyPatch.context() as mp:  # the pages read the runs folder from the env
        mp.setenv("PREFLENS_RUNS_DIR", str(root))
        yield root, rid


def test_train_page_draws_group_means_with_bands_and_reference_lines(cluster_run):
    root, rid = cluster_run
    at = open_page("app_pages/train.py", runs=rid)
    assert not at.exception, at.exception
    fig = figure(at, "train_accuracy")
    groups = {t["meta"]["group"] for t in fig["data"] if "group" in t["meta"]}
    assert groups == {"cluster 1", "cluster 2", "cluster 3", "uniform"}
    records, _ = RunDir(root / rid).metrics()
    by = {(t["meta"]["group"], t["meta"]["stat"]): array(t["y"]) for t in fig["data"] if "group" in t["meta"]}
    for g in groups:
        assert (by[(g, "min")] <= by[(g, "mean")] + 1e-9).all() and (by[(g, "mean")] <= by[(g, "max")] + 1e-9).all()
    # the cluster-2 mean is the mean of its 30 users' accuracies, at every evaluation
    members = [str(u) for u in range(49, 79)]
    assert np.allclose(by[("cluster 2", "mean")], [np.mean([r["user_accuracy"][u] for u in members]) for r in records])
    ref = records[0]["reference_accuracy"]
    texts = [a.get("text", "") for a in fig["layout"].get("annotations", [])]
    assert any(t.startswith(f"group mean weights {ref['group']:.2f}") for t in texts), texts
    assert any(t.startswith(f"global mean weights {ref['global']:.2f}") for t in texts), texts
    # the toggle: one thin line per user instead
    at.radio(key="user_view").set_value("Every user").run()
    users = {t["meta"].get("user") for t in figure(at, "train_accuracy")["data"]}
    assert users == {str(u) for u in range(100)} | {"mean"}
    at.toggle(key="refs").set_value(False).run()
    texts = [a.get("text", "") for a in figure(at, "train_accuracy")["layout"].get("annotations", [])]
    assert not any("mean weights" in t for t in texts)


def test_latent_page_colours_100_users_by_group(cluster_run):
    root, rid = cluster_run
    at = open_page("app_pages/latent.py", run=rid)
    assert not at.exception, at.exception
    fig = figure(at, "latent_tsne")
    got = {t["meta"]["group"]: len(array(t["x"])) for t in fig["data"] if "group" in t["meta"]}
    with np.load(sorted((root / rid / "latents").glob("*.npz"))[-1]) as z:
        user = z["user"]
    assert got["cluster 1"] == int((user < 49).sum()) and got["uniform"] == int((user == 99).sum())
    at.radio(key="latent_colour").set_value("user").run()
    assert len([t for t in figure(at, "latent_tsne")["data"] if "user" in t["meta"]]) == len(np.unique(user))


def test_results_table_has_reference_columns(cluster_run):
    root, rid = cluster_run
    at = open_page("app_pages/results.py")
    assert not at.exception, at.exception
    tables = [d.value for d in at.dataframe if "ref_group" in d.value.columns]
    assert len(tables) >= 1, [list(d.value.columns) for d in at.dataframe]
    table = tables[0]
    ref = RunDir(root / rid).metrics()[0][0]["reference_accuracy"]
    row = table.iloc[0]
    assert row["ref_group"] == pytest.approx(ref["group"]) and row["ref_probe"] == pytest.approx(ref["probe"])
    assert "z_shuffled_accuracy" in table.columns


def test_four_users_lesson_launches_traditional_vpl_and_personal(tmp_path, monkeypatch):
    # the click submits; nothing trains here (the browser test trains the lesson): the job stays queued
    monkeypatch.setattr(JobManager, "_launch", lambda self, run, st: None)
    monkeypatch.setenv("PREFLENS_RUNS_DIR", str(tmp_path))
    at = open_page("app_pages/train.py")
    assert not at.exception, at.exception
    at.button(key="lesson4").click().run()
    assert not at.exception, at.exception
    jm = JobManager(tmp_path)
    try:
        (job,) = jm.list()  # one grid job for the three runs, not three jobs
        assert job["kind"] == "grid" and job["label"] == "grid-3-runs" and job["state"] == "queued"
        assert at.query_params["runs"] == job["run_id"]
        cfg = RunDir(job["path"]).config()
        assert cfg["methods"] == ["traditional", "vpl", "personal"] and cfg["seeds"] == [0]
        assert cfg["overrides"] == LESSON_FOUR_USERS
        assert cfg["overrides"]["early_stop_patience"] > 0 and cfg["overrides"]["val_share"] > 0
        members = member_configs(validate_grid(cfg))  # what the grid process will train, as <method>-s0
        assert sorted(members) == ["personal-s0", "traditional-s0", "vpl-s0"]
        assert {c.users for c in members.values()} == {"four-one-hot"}
        assert members["vpl-s0"].decoder == "concat" and members["personal-s0"].decoder != "concat"
    finally:
        for r in jm.list():
            jm.cancel(r["run_id"])
    assert {r["state"] for r in jm.list()} == {"cancelled"}

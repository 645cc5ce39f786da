"""AppTest: Train, Latent and Results pages over run dirs from real short training runs."""

from __future__ import annotations

import os

import numpy as np
import pytest

from core.common.runs import RunDir
from core.jobs.manager import JobManager
from core.training.config import build_config
from core.training.launch import train
from tests.app.figures import array, figure, open_page

TINY = {"corpus_prompts": 60, "max_train_per_user": 40, "max_test_per_user": 20, "pool_size": 20,
        "steps": 6, "eval_every": 2}






@pytest.fixture(scope="module")
def runs_root(tmp_path_factory, cache_root, small_corpus_embeddings):
    root = tmp_path_factory.mktemp("runs")
    ids = {}
    for preset in ("traditional", "vpl"):
        rid = f"{preset}-20260101-00000{len(ids)}-abcdef"
        train(build_config({"preset": preset, **TINY, "cache_dir": cache_root}), root / rid, log=lambda m: None)
        ids[preset] = rid
    # things a page must survive: a foreign folder, a torn last metrics line
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not a run")
    with open(root / ids["vpl"] / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 8, "accur')
    with pytest.MonkeyPatch.context() as mp:  # the pages read the runs folder from the env
        mp.setenv("PREFLENS_RUNS_DIR", str(root))
        yield root, ids


def test_train_page_shows_per_user_curves_of_finished_runs(runs_root):
    root, ids = runs_root
    at = open_page("app_pages/train.py", runs=f"{ids['traditional']},{ids['vpl']}")
    assert not at.exception, at.exception
    # runs exist: the lessons stay one click away, their explanation folded into an expander
    assert {b.key for b in at.button} >= {"lesson", "lesson4"}
    assert [e for e in at.expander if e.label == "About the lessons"]
    fig = figure(at, "train_accuracy")
    traces = {(t["meta"]["run_id"], t["meta"]["user"]): t for t in fig["data"]}
    assert set(traces) == {(ids[p], u) for p in ids for u in ("0", "1")}
    for p, rid in ids.items():
        records, skipped = RunDir(root / rid).metrics()
        assert skipped == (1 if p == "vpl" else 0)
        for u in ("0", "1"):
            t = traces[(rid, u)]
            assert list(array(t["x"])) == [0, 2, 4, 6]
            assert np.allclose(array(t["y"]), [r["user_accuracy"][u] for r in records])
    loss = figure(at, "train_loss")
    assert len(loss["data"]) == 4
    assert any("Skipped 1 folder" in c.value for c in at.caption)
    assert any("skipped 1 unreadable metrics line" in c.value for c in at.caption)
    # smoothing changes the curve (EMA), but keeps its first point
    at.slider(key="smooth").set_value(0.5).run()
    t = {(t["meta"]["run_id"], t["meta"]["user"]): t for t in figure(at, "train_accuracy")["data"]}
    y_raw = array(traces[(ids["vpl"], "0")]["y"])
    y_s = array(t[(ids["vpl"], "0")]["y"])
    assert y_s[0] == pytest.approx(y_raw[0]) and y_s[-1] == pytest.approx(0.5 * y_s[-2] + 0.5 * y_raw[-1])


def test_latent_page_tsne_points_per_user_and_separation_per_step(runs_root):
    root, ids = runs_root
    at = open_page("app_pages/latent.py", run=ids["vpl"])
    assert not at.exception, at.exception
    fig = figure(at, "latent_tsne")
    with np.load(root / ids["vpl"] / "latents" / "step-000006.npz") as z:
        users, counts = np.unique(z["user"], return_counts=True)
    got = {t["meta"]["user"]: len(array(t["x"])) for t in fig["data"] if "user" in t["meta"]}
    assert got == {int(u): int(c) for u, c in zip(users, counts, strict=True)}
    # the people scored at the last evaluation share the picture (tests/app/test_latent_people.py)
    assert {t["meta"]["people"] for t in fig["data"] if "people" in t["meta"]} == {"trained", "outside"}
    assert all(np.isfinite(array(t["y"])).all() for t in fig["data"])
    sep = figure(at, "latent_separation")["data"][0]
    assert list(array(sep["x"])) == [0, 2, 4, 6]
    assert any("perplexity" in m.value for m in at.markdown)
    # an earlier step re-embeds that step's latents
    at.select_slider(key="latent_step").set_value(2).run()
    assert not at.exception
    assert "step 2" in figure(at, "latent_tsne")["layout"]["title"]["text"]


def test_results_page_groups_by_method(runs_root):
    root, ids = runs_root
    at = open_page("app_pages/results.py")
    assert not at.exception, at.exception
    bar = figure(at, "results_accuracy")["data"][0]
    got = dict(zip(bar["x"], array(bar["y"]), strict=True))
    for p, rid in ids.items():
        records, _ = RunDir(root / rid).metrics()
        assert got[p] == pytest.approx(records[-1]["accuracy"])
    per_user = figure(at, "results_user_accuracy")
    assert {t["name"] for t in per_user["data"]} == {"traditional", "vpl"}
    assert [b for b in at.get("download_button") if b.key == "dl_summary"]
    assert any("Skipped" in c.value for c in at.caption)


def test_lesson_button_launches_traditional_and_vpl_adaptive(tmp_path, monkeypatch, cache_root,
                                                             small_corpus_embeddings):
    monkeypatch.setenv("PREFLENS_RUNS_DIR", str(tmp_path))
    at = open_page("app_pages/train.py")
    assert not at.exception, at.exception
    at.button(key="lesson").click().run()
    jm = JobManager(tmp_path)
    try:
        runs = jm.list()
        assert sorted(r["label"] for r in runs) == ["traditional-s0", "vpl-adaptive-s0"]
        assert sorted(r["state"] for r in runs) == ["queued", "running"]  # one slot on a CPU box
        cfg = RunDir(runs[0]["path"]).config()
        assert cfg["users"] == "two-opposed" and cfg["corpus_prompts"] == 400
    finally:
        for r in jm.list():
            jm.cancel(r["run_id"])
    assert {r["state"] for r in jm.list()} == {"cancelled"}


def test_run_pickers_keep_their_labels_when_a_run_changes_state(runs_root, tmp_path, monkeypatch):
    # Regression: the "Runs to show" labels included the run's state. The browser keeps a multiselect's
    # selection as the option *labels*, so the moment a watched run finished its label changed, the
    # selection came back empty and every chart vanished (the e2e test caught it; AppTest keeps Python
    # values, so here we assert the contract itself: a run's label does not move while it runs and ends).
    import json
    import shutil

    from core.jobs.manager import proc_start_marker

    src, ids = runs_root
    rid = ids["vpl"]
    shutil.copytree(src / rid, tmp_path / rid)
    status = tmp_path / rid / "status.json"
    final = json.loads(status.read_text())
    status.write_text(json.dumps({**final, "state": "running", "pid": os.getpid(),
                                  "pid_start": proc_start_marker(os.getpid()), "launcher": "local",
                                  "progress": {"done": 2, "total": 6, "fraction": 1 / 3}}))
    monkeypatch.setenv("PREFLENS_RUNS_DIR", str(tmp_path))
    at = open_page("app_pages/train.py")
    assert not at.exception, at.exception
    assert JobManager(tmp_path).list()[0]["state"] == "running"
    at.multiselect(key="shown").set_value([rid]).run()
    running = {"shown": at.multiselect(key="shown").options, "cancel_pick": at.selectbox(key="cancel_pick").options}
    assert {t["meta"]["run_id"] for t in figure(at, "train_accuracy")["data"]} == {rid}

    status.write_text(json.dumps(final))  # the run ends
    at.run()
    assert not at.exception, at.exception
    assert at.multiselect(key="shown").options == running["shown"]
    assert running["cancel_pick"] == running["shown"]  # the same label for a run everywhere on the page
    assert {t["meta"]["run_id"] for t in figure(at, "train_accuracy")["data"]} == {rid}

    # the Latent page's run picker too (it lists runs that wrote latents, finished or not)
    at = open_page("app_pages/latent.py", run=rid)
    ended = at.selectbox(key="latent_run").options
    status.write_text(json.dumps({**final, "state": "running", "pid": os.getpid(),
                                  "pid_start": proc_start_marker(os.getpid()), "launcher": "local"}))
    assert open_page("app_pages/latent.py", run=rid).selectbox(key="latent_run").options == ended


def test_results_tables_show_rounded_figures(runs_root):
    at = open_page("app_pages/results.py")
    assert not at.exception, at.exception
    tables = [d.value for d in at.dataframe]
    shown = next(t for t in tables if "converged_share" in t.columns)  # the summary by method
    for col in ("wall_s",):
        vals = shown[col].dropna()
        assert len(vals) and all(abs(v * 10 - round(v * 10)) < 1e-9 for v in vals), vals  # seconds to 0.1
    runs = next(t for t in tables if "run_id" in t.columns)  # "All N runs"
    acc = runs["accuracy"].dropna()
    assert len(acc) and all(abs(v * 1000 - round(v * 1000)) < 1e-9 for v in acc), acc  # the rest to 0.001


@pytest.mark.slow
def test_train_page_launches_a_grid_whose_members_are_runs(tmp_path, monkeypatch, cache_root,
                                                           small_corpus_embeddings):
    from core.common.runs import FINAL_STATES
    from tests.test_jobs import member_training, wait_for

    monkeypatch.setenv("PREFLENS_RUNS_DIR", str(tmp_path))
    monkeypatch.setenv("PREFLENS_CACHE", str(cache_root))
    at = open_page("app_pages/train.py")
    assert not at.exception, at.exception
    assert at.checkbox(key="as_grid").value  # the page's runs all read a frozen encoder: a grid by default
    at.multiselect(key="methods").set_value(["traditional", "vpl"])
    at.number_input(key="steps").set_value(5000)
    at.button(key="launch").click().run()
    assert not at.exception, at.exception
    jm = JobManager(tmp_path)
    try:
        (job,) = jm.list()  # one job for the two runs
        gid = job["run_id"]
        assert job["kind"] == "grid" and job["label"] == "grid-2-runs" and job["state"] == "running"
        cfg = RunDir(job["path"]).config()
        assert cfg["methods"] == ["traditional", "vpl"] and cfg["seeds"] == [0]
        assert cfg["overrides"]["steps"] == 5000 and cfg["overrides"]["corpus_prompts"] == 400
        assert at.query_params["runs"] == gid
        members = [f"{gid}.traditional-s0", f"{gid}.vpl-s0"]
        wait_for(lambda: all(member_training(jm, m) for m in members), 180, "both members to train")

        at.run()
        assert not at.exception, at.exception
        table = next(d.value for d in at.dataframe if "grid" in d.value.columns).set_index("run")
        assert list(table.loc[members, "grid"]) == [gid, gid]
        assert list(table.loc[members, "state"]) == ["running", "running"]
        # the grid in "Runs to show" draws its members' curves
        assert {t["meta"]["run_id"] for t in figure(at, "train_accuracy")["data"]} == set(members)
        labels = at.selectbox(key="cancel_pick").options  # "<label> · <run id>"
        assert all(any(o.endswith(f" · {m}") for o in labels) for m in members)

        at.selectbox(key="cancel_pick").set_value(members[1])
        at.button(key="cancel").click().run()
        assert not at.exception, at.exception
        assert jm.status(members[1])["state"] == "cancelled"
        assert jm.status(members[0])["state"] == "running" and jm.status(gid)["state"] == "running"
        table = next(d.value for d in at.dataframe if "grid" in d.value.columns).set_index("run")
        assert table.loc[members[1], "state"] == "cancelled"
    finally:
        for r in jm.list():
            if r["state"] not in FINAL_STATES and not r.get("grid"):
                jm.cancel(r["run_id"])
    assert {r["state"] for r in jm.list()} == {"cancelled"}


def test_results_page_shows_a_grids_members_once(tmp_path, monkeypatch, cache_root, small_corpus_embeddings):
    import json

    from core.gridjob import main as grid_main

    gid = "grid-20260101-000000-abcdef"
    cfg = tmp_path / "grid.json"
    cfg.write_text(json.dumps({"kind": "grid", "methods": ["traditional", "vpl"], "seeds": [0],
                               "overrides": {**TINY, "cache_dir": cache_root}}))
    assert grid_main(["--config", str(cfg), "--run-dir", str(tmp_path / "runs-root" / gid)]) == 0
    monkeypatch.setenv("PREFLENS_RUNS_DIR", str(tmp_path / "runs-root"))
    at = open_page("app_pages/results.py")
    assert not at.exception, at.exception
    summary = next(d.value for d in at.dataframe if "converged_share" in d.value.columns).set_index("method")
    assert summary.loc["traditional", "runs"] == 1 and summary.loc["vpl", "runs"] == 1  # not also as a folder
    runs = next(d.value for d in at.dataframe if "run_id" in d.value.columns)
    assert sorted(runs["run_id"]) == [f"{gid}.traditional-s0", f"{gid}.vpl-s0"]
    bar = figure(at, "results_accuracy")["data"][0]
    got = dict(zip(bar["x"], array(bar["y"]), strict=True))
    for m in ("traditional", "vpl"):
        records, _ = RunDir(tmp_path / "runs-root" / gid / "runs" / f"{m}-s0").metrics()
        assert got[m] == pytest.approx(records[-1]["accuracy"])

"""AppTest: a run that stopped early (core.training.stopping) shows the step it kept, and why, on the Train page's
curves and runs table and on the Latent page; the lesson buttons stay on the Train page once runs exist.

The run is written by hand in the RunDir format (core.common.runs) the trainer writes when early stopping fires:
evaluations every 25 steps with ``val_loss``/``best_step``, then a last record re-evaluating the kept
step's model (``kept_best``, ``step`` = the kept step, ``stopped_at``), and status.json's ``stopped_early``.
"""

from __future__ import annotations

import numpy as np
import pytest

from core.common.runs import RunDir
from core.jobs.manager import JobManager
from core.training.config import LESSON_FOUR_USERS
from tests.app.figures import array, figure, open_page

RID = "personal-20260101-000000-early1"
BEST, STOPPED, EVERY = 200, 275, 25
REASON = (f"the validation loss has not improved for 3 evaluations (best 0.3000 at step {BEST}); stopped at "
          f"step {STOPPED} and kept step {BEST}")
USERS = ("0", "1", "2", "3")


def _record(step: int) -> dict:
    """One evaluation: accuracy rising, validation loss falling to its best at BEST and rising after."""
    acc = min(0.95, 0.5 + step / 500)
    val = 0.3 + abs(step - BEST) / 1000
    rec = {"step": step, "epoch": step / 50, "loss": 0.5, "eval_loss": 0.7 - acc / 2, "accuracy": acc,
           "user_accuracy": {u: acc - 0.01 * int(u) for u in USERS},
           "user_loss": {u: 0.7 - acc / 2 + 0.01 * int(u) for u in USERS},
           "val_loss": val, "val_accuracy": acc, "best_step": min(step, BEST), "wall_s": step / 10}
    if step == 0:
        rec["reference_accuracy"] = {"global": 0.5, "group": 1.0, "probe": 0.9}
    return rec


def write_early_run(root, rid: str = RID) -> RunDir:
    run = RunDir(root / rid).create()
    run.write_config({"preset": "personal", "method": "vpl", "users": "four-one-hot", "user_seed": 0, "seed": 0,
                      **LESSON_FOUR_USERS})
    for step in range(0, STOPPED + 1, EVERY):
        run.append_metrics(_record(step))
    run.append_metrics({**_record(BEST), "kept_best": True, "stopped_at": STOPPED, "loss": None})
    run.update_status(state="succeeded", kind="train", method="personal", label="personal-s0",
                      progress={"done": STOPPED, "total": 1200, "fraction": 1.0},
                      stopped_early={"at_step": STOPPED, "best_step": BEST, "best_val_loss": 0.3, "reason": REASON})
    rng = np.random.default_rng(0)
    user = np.repeat(np.arange(4), 10)
    for step in range(0, STOPPED + 1, EVERY):  # probe latents, as a conditional run saves every evaluation
        np.savez(run.latents_dir / f"step-{step:06d}.npz", mu=rng.normal(size=(40, 4)) + user[:, None],
                 user=user, question=np.arange(40))
    return run


@pytest.fixture
def early_root(tmp_path, monkeypatch):
    # nothing trains here: a submitted job stays queued
    monkeypatch.setattr(JobManager, "_launch", lambda self, run, st: None)
    monkeypatch.setenv("PREFLENS_RUNS_DIR", str(tmp_path))
    write_early_run(tmp_path)
    return tmp_path


def test_a_run_that_stopped_early_marks_the_step_it_kept(early_root):
    at = open_page("app_pages/train.py", runs=RID)
    assert not at.exception, at.exception
    acc = figure(at, "train_accuracy")
    evals = list(range(0, STOPPED + 1, EVERY))
    # every user's line runs forward to the step it stopped at: the kept record is not drawn going back
    lines = {t["meta"]["user"]: t for t in acc["data"] if "user" in t["meta"]}
    assert sorted(lines) == list(USERS)
    for u, t in lines.items():
        assert list(array(t["x"])) == evals
        assert np.allclose(array(t["y"]), [_record(s)["user_accuracy"][u] for s in evals])
    # the kept step: a star on its accuracy (hover: the reason) and a dotted line with its annotation
    (star,) = [t for t in acc["data"] if "kept_step" in t["meta"]]
    assert star["meta"]["kept_step"] == BEST and list(array(star["x"])) == [BEST]
    assert array(star["y"])[0] == pytest.approx(_record(BEST)["accuracy"]) and star["hovertext"] == [REASON]
    for fig in (acc, figure(at, "train_loss")):
        assert [s["x0"] for s in fig["layout"]["shapes"] if s.get("line", {}).get("dash") == "dot"
                and s.get("x0") == s.get("x1")] == [BEST]
        texts = [a.get("text", "") for a in fig["layout"]["annotations"]]
        assert f"personal-s0: kept step {BEST} (stopped at {STOPPED}: validation loss not improving)" in texts
    # the validation loss beside the per-user eval losses
    loss = figure(at, "train_loss")
    (val,) = [t for t in loss["data"] if t["meta"].get("series") == "val_loss"]
    assert list(array(val["x"])) == evals
    assert np.allclose(array(val["y"]), [_record(s)["val_loss"] for s in evals])
    assert len([t for t in loss["data"] if "user" in t["meta"]]) == 4
    # and why, in words: the runs table, the state line and a caption
    table = next(d.value for d in at.dataframe if "stopped early" in d.value.columns).set_index("run")
    assert table.loc[RID, "stopped early"] == REASON
    assert any(f"stopped early: kept step {BEST}" in m.value for m in at.markdown)
    assert any(REASON in c.value for c in at.caption)
    # two such runs overlaid: their texts stack instead of overlapping
    other = "personal-20260101-000001-early2"
    write_early_run(early_root, other)
    at = open_page("app_pages/train.py", runs=f"{RID},{other}")
    assert not at.exception, at.exception
    notes = [a for a in figure(at, "train_accuracy")["layout"]["annotations"] if "kept step" in a.get("text", "")]
    assert len(notes) == 2 and len({a.get("yshift", 0) for a in notes}) == 2


def test_latent_page_opens_an_early_stopped_run_on_the_step_it_kept(early_root):
    at = open_page("app_pages/latent.py", run=RID)
    assert not at.exception, at.exception
    assert at.select_slider(key="latent_step").value == BEST
    assert f"step {BEST}" in figure(at, "latent_tsne")["layout"]["title"]["text"]
    sep = figure(at, "latent_separation")
    assert [s["x0"] for s in sep["layout"]["shapes"]] == [BEST]


def test_lesson_buttons_stay_on_the_train_page_once_runs_exist(early_root):
    at = open_page("app_pages/train.py")
    assert not at.exception, at.exception
    assert {b.key for b in at.button} >= {"lesson", "lesson4"}
    at.button(key="lesson4").click().run()
    assert not at.exception, at.exception
    jm = JobManager(early_root)
    try:
        grids = [r for r in jm.list() if r.get("kind") == "grid"]
        assert len(grids) == 1 and at.query_params["runs"] == grids[0]["run_id"]
        assert RunDir(grids[0]["path"]).config()["methods"] == ["traditional", "vpl", "personal"]
        # after the rerun the buttons are still there, and the other lesson still submits too
        at.button(key="lesson").click().run()
        assert not at.exception, at.exception
        two = at.query_params["runs"].split(",")
        assert sorted(jm.status(r)["label"] for r in two) == ["traditional-s0", "vpl-adaptive-s0"]
        assert len(jm.list()) == 1 + 1 + 2  # the stopped run, the grid, the two-opposed pair
    finally:
        for r in jm.list():
            if r["state"] in ("queued", "running"):
                jm.cancel(r["run_id"])

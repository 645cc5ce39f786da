"""JobManager with real child processes: queue, cancel, SIGKILL, restart, submitit, bad configs."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from core.common.runs import RunDir
from core.jobs.manager import JobError, JobKind, JobManager, job_kinds, pid_alive, register_kind
from core.training.config import ConfigError

TINY = {"corpus_prompts": 60, "eval_every": 1, "max_train_per_user": 40, "max_test_per_user": 20,
        "pool_size": 20}


@pytest.fixture
def warm_cache(cache_root, small_corpus_embeddings):
    """The session cache, filled once with the 400-question corpus (the 60-question one is a subset),
    so child processes never encode."""
    return cache_root


def tiny(cache_dir, **kw):
    return {"preset": "vpl", **TINY, "steps": 2, "cache_dir": cache_dir, **kw}


def long_run(cache_dir, **kw):
    """Tiny data, effectively endless: only a signal ends it."""
    return tiny(cache_dir, steps=100_000, eval_every=50, **kw)


def wait_for(pred, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        value = pred()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def training(jm, run_id):
    st = jm.status(run_id)
    return st["state"] == "running" and (st.get("progress") or {}).get("done", 0) > 0 and st


@pytest.mark.slow
def test_one_slot_queue_cancel_frees_slot_and_restart_sees_all(tmp_path, warm_cache):
    jm = JobManager(tmp_path, max_concurrent=1, grace_s=5)
    a = jm.submit(long_run(warm_cache))
    b = jm.submit(tiny(warm_cache, seed=3))
    assert jm.status(a)["state"] == "running"
    assert jm.status(a)["pid"] and pid_alive(jm.status(a)["pid"])
    assert jm.status(b)["state"] == "queued"
    assert jm.status(b)["pid"] is None

    st = wait_for(lambda: training(jm, a), 90, "run A to train")
    pid = st["pid"]
    assert jm.status(b)["state"] == "queued"  # still waiting while A holds the only slot

    t0 = time.time()
    out = jm.cancel(a)
    assert out["state"] == "cancelled"
    assert time.time() - t0 < 8
    assert not pid_alive(pid)
    assert (tmp_path / a / "train_state.pt").exists()  # graceful: it checkpointed on SIGTERM
    # the freed slot goes to B, which then completes
    assert jm.status(b)["state"] in ("running", "succeeded")
    wait_for(lambda: jm.status(b)["state"] in ("succeeded", "failed"), 90, "run B to finish")
    st_b = jm.status(b)
    assert st_b["state"] == "succeeded", st_b.get("error")
    records, _ = RunDir(tmp_path / b).metrics()
    assert [r["step"] for r in records] == [0, 1, 2]

    # an app restart: a fresh manager over the same folder, plus a foreign folder and a torn status
    (tmp_path / "not-a-run").mkdir()
    (tmp_path / "Weird Name").mkdir()
    (tmp_path / "garbled-run").mkdir()
    (tmp_path / "garbled-run" / "status.json").write_text('{"state": "runn')
    jm2 = JobManager(tmp_path, max_concurrent=1)
    runs = jm2.list()
    assert [r["run_id"] for r in runs] == [b, a]  # newest first
    assert {r["run_id"]: r["state"] for r in runs} == {a: "cancelled", b: "succeeded"}
    assert runs.skipped == 3
    assert "step" in jm2.log(b)
    with pytest.raises(JobError):
        jm2.status("../etc")


@pytest.mark.slow
def test_sigkilled_run_ends_failed_with_its_log_tail(tmp_path, warm_cache):
    jm = JobManager(tmp_path)
    rid = jm.submit(long_run(warm_cache))
    st = wait_for(lambda: training(jm, rid), 90, "the run to train")
    os.killpg(st["pid"], signal.SIGKILL)
    wait_for(lambda: not pid_alive(st["pid"]), 10, "the process to die")
    st = jm.status(rid)
    assert st["state"] == "failed"
    assert "exited without a final state" in st["error"]
    assert "step     0" in st["error"]  # the log tail: the trainer's first eval line
    # persisted: a fresh manager reads the same verdict from disk
    assert RunDir(tmp_path / rid).status()["state"] == "failed"
    assert JobManager(tmp_path).list()[0]["state"] == "failed"


def test_reused_pid_is_not_the_run(tmp_path):
    """A status whose pid now belongs to another process (different start time) is a dead run."""
    jm = JobManager(tmp_path)
    run = RunDir(tmp_path / "train-20260101-000000-abcdef").create()
    run.write_config({"preset": "vpl"})
    run.log("step     0 loss nan")
    run.update_status(state="running", kind="train", pid=os.getpid(), pid_start="1", launcher="local")
    st = jm.status(run.run_id)
    assert st["state"] == "failed" and "step     0" in st["error"]


def test_bad_config_raises_naming_the_field_and_creates_nothing(tmp_path):
    jm = JobManager(tmp_path)
    with pytest.raises(ConfigError, match="steps"):
        jm.submit({"preset": "vpl", "steps": -5})
    with pytest.raises(ConfigError, match="preset"):
        jm.submit({"preset": "nope"})
    with pytest.raises(ValueError, match="kind"):
        jm.submit({"kind": "bogus"})
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == []


def test_cancel_queued_run(tmp_path, warm_cache):
    jm = JobManager(tmp_path, max_concurrent=1)
    # occupy the slot with a fake live run (this test process) so nothing launches
    busy = RunDir(tmp_path / "train-20260101-000000-000001").create()
    busy.write_config({})
    from core.jobs.manager import proc_start_marker

    busy.update_status(state="running", pid=os.getpid(), pid_start=proc_start_marker(os.getpid()),
                       launcher="local", submitted_ts=1.0)
    rid = jm.submit(tiny(warm_cache))
    assert jm.status(rid)["state"] == "queued"
    assert jm.cancel(rid)["state"] == "cancelled"
    assert not RunDir(tmp_path / rid).log_path.exists()  # never started


def _hammer_status(path: str, tag: str, n: int) -> None:
    from core.common.runs import RunDir

    run = RunDir(path)
    for i in range(n):
        run.update_status(**{f"{tag}{i}": i})


def test_status_updates_from_two_processes_are_not_lost(tmp_path, monkeypatch):
    # The app (cancel requests, failure marks) and the child (progress) both update status.json.
    # Each update is read-modify-write, so without a lock one side can overwrite the other's field.
    import multiprocessing as mp
    import sys
    import types

    # a spawned child re-runs __main__'s file; after an AppTest that is app.py, which fails outside Streamlit
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))

    from core.common.runs import RunDir

    run = RunDir(tmp_path / "run-20260101-000000-abcdef").create()
    run.update_status(state="running")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_hammer_status, args=(str(run.path), tag, 150)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    st = run.status()
    missing = [f"{t}{i}" for t in "ab" for i in range(150) if f"{t}{i}" not in st]
    assert not missing, f"{len(missing)} updates lost, e.g. {missing[:5]}"
    assert st["state"] == "running"


DUMMY = JobKind("dummy", "tests.dummy_kind", "tests.dummy_kind:validate")


def test_a_registered_kind_runs_through_the_manager_without_touching_jobs_py(tmp_path, monkeypatch):
    register_kind(DUMMY)
    assert {"train", "personas", "dummy"} <= set(job_kinds())
    jm = JobManager(tmp_path, max_concurrent=1)
    with pytest.raises(ValueError, match="n: must be"):
        jm.submit({"kind": "dummy", "n": 0})
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]  # the validator ran first
    # occupy the only slot so the dummy run waits in the queue
    busy = RunDir(tmp_path / "train-20260101-000000-000001").create()
    busy.write_config({})
    from core.jobs.manager import proc_start_marker

    busy.update_status(state="running", pid=os.getpid(), pid_start=proc_start_marker(os.getpid()),
                       launcher="local", submitted_ts=1.0)
    rid = jm.submit({"kind": "dummy", "n": 4})
    st = jm.status(rid)
    assert st["state"] == "queued" and st["kind"] == "dummy" and st["label"] == "dummy-4"
    assert st["module"] == "tests.dummy_kind" and rid.startswith("dummy-")
    # the registry changes (say the app restarted without the plug-in): the queued run still launches,
    # from the module recorded in its status
    monkeypatch.delitem(__import__("core.jobs.manager", fromlist=["_KINDS"])._KINDS, "dummy")
    busy.mark_final("succeeded")
    wait_for(lambda: JobManager(tmp_path).status(rid)["state"] in ("succeeded", "failed"), 60, "the dummy run")
    st = jm.status(rid)
    assert st["state"] == "succeeded", (st.get("error"), jm.log(rid))
    records, _ = RunDir(tmp_path / rid).metrics()
    assert [r["square"] for r in records] == [0, 1, 4, 9]
    assert "dummy: wrote 4 records" in jm.log(rid)
    with pytest.raises(ValueError, match="kind: unknown job kind 'dummy'"):
        jm.submit({"kind": "dummy"})


def test_jobs_py_imports_no_feature():
    import ast

    import core.jobs.manager

    tree = ast.parse(Path(core.jobs.manager.__file__).read_text())
    imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    feature = {m for m in imported if any(w in m for w in ("config", "personas", "train", "kinds", "experiments"))}
    assert not feature, feature
    assert job_kinds()["train"].module == "core.train"
    assert job_kinds()["personas"].module == "core.personas"


# --------------------------------------------------------------------------- a grid job: one process, many runs
# tiny data; members step at about 50 steps/s each on an idle 2-core CPU and check for a cancel once a second,
# so 300 steps leave a cancel time to land mid-run
GRID_TINY = {"corpus_prompts": 60, "steps": 300, "eval_every": 100, "max_train_per_user": 40, "max_test_per_user": 20,
             "pool_size": 20}


def grid(cache_dir, methods=("traditional", "vpl"), **overrides):
    return {"kind": "grid", "methods": list(methods), "seeds": [0],
            "overrides": {**GRID_TINY, "cache_dir": cache_dir, **overrides}}


def member_training(jm, run_id):
    """Like training(), for a member that may not exist yet (the grid process creates it)."""
    try:
        return training(jm, run_id)
    except JobError:
        return False


def checkpoint_step(run_path) -> int:
    import torch

    return int(torch.load(Path(run_path) / "train_state.pt", weights_only=False)["step"])


@pytest.mark.slow
def test_grid_members_are_runs_and_a_member_is_cancelled_alone(tmp_path, warm_cache):
    jm = JobManager(tmp_path, max_concurrent=1, grace_s=10)
    gid = jm.submit(grid(warm_cache))
    assert jm.status(gid)["state"] == "running"
    trad, vpl = f"{gid}.traditional-s0", f"{gid}.vpl-s0"
    wait_for(lambda: [r["run_id"] for r in jm.list()] == [gid, trad, vpl], 120, "both members to start")
    runs = {r["run_id"]: r for r in jm.list()}
    gpid = runs[gid]["pid"]
    assert runs[gid]["kind"] == "grid" and runs[gid]["members"] == [trad, vpl]
    for rid, name in ((trad, "traditional-s0"), (vpl, "vpl-s0")):
        r = runs[rid]
        assert r["grid"] == gid and r["grid_pid"] == gpid and r["pid"] == gpid and r["state"] == "running"
        assert r["label"] == name and r["kind"] == "train" and r["path"] == str(tmp_path / gid / "runs" / name)
        assert jm.run_dir(rid).path == tmp_path / gid / "runs" / name
    assert jm.status(gid)["members"] == [trad, vpl]
    with pytest.raises(JobError):
        jm.status(f"{gid}.nope-s0")
    with pytest.raises(JobError):
        jm.status(f"{gid}.vpl-s0/../x")

    wait_for(lambda: training(jm, vpl), 60, "the vpl member to train")
    t0 = time.time()
    out = jm.cancel(vpl)
    assert out["state"] == "cancelled", out
    assert out["error"] == "cancelled by the user"
    assert time.time() - t0 < 10
    assert pid_alive(gpid)  # the grid process was not signalled: the other member trains on
    assert jm.status(trad)["state"] == "running"
    assert "cancel_requested" not in RunDir(tmp_path / gid).status()
    step = checkpoint_step(tmp_path / gid / "runs" / "vpl-s0")
    assert 0 < step < GRID_TINY["steps"]

    wait_for(lambda: jm.status(gid)["state"] not in ("queued", "running"), 240, "the grid to end")
    runs = {r["run_id"]: r for r in jm.list()}
    assert runs[trad]["state"] == "succeeded", runs[trad].get("error")
    assert runs[vpl]["state"] == "cancelled"
    assert checkpoint_step(tmp_path / gid / "runs" / "vpl-s0") == step  # it stayed where it stopped
    records, _ = RunDir(tmp_path / gid / "runs" / "traditional-s0").metrics()
    assert records[-1]["step"] == GRID_TINY["steps"]
    # core.experiments.gridjob ends a grid with a cancelled member `cancelled`, naming every member's state
    assert runs[gid]["state"] == "cancelled"
    assert runs[gid]["error"] == "members ended: succeeded, cancelled"
    wait_for(lambda: not pid_alive(gpid), 15, "the grid process to exit")
    # a member's log is its own lines of the grid's log
    log = jm.log(vpl)
    assert "step     0" in log and "[traditional-s0]" not in log and "[vpl-s0]" not in log
    assert (tmp_path / gid / "table.csv").exists()


@pytest.mark.slow
def test_sigkilled_grid_fails_its_running_members_and_a_member_cancel_needs_no_process(tmp_path, warm_cache):
    jm = JobManager(tmp_path)
    gid = jm.submit(grid(warm_cache, steps=100_000, eval_every=50))
    trad, vpl = f"{gid}.traditional-s0", f"{gid}.vpl-s0"
    wait_for(lambda: member_training(jm, trad) and member_training(jm, vpl), 90, "both members to train")
    gpid = jm.status(gid)["pid"]
    os.killpg(gpid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(gpid), 10, "the grid process to die")
    # cancelling a member of a dead grid marks it at once (nobody is left to read cancel_requested)
    t0 = time.time()
    assert jm.cancel(vpl)["state"] == "cancelled"
    assert time.time() - t0 < 3
    runs = {r["run_id"]: r for r in jm.list()}
    assert runs[gid]["state"] == "failed"
    assert runs[trad]["state"] == "failed" and runs[trad]["pid"] is None
    assert f"its grid {gid}" in runs[trad]["error"] and "ended without a final state" in runs[trad]["error"]
    assert "step     0" in runs[trad]["error"]  # the member's own lines of the grid's log
    # persisted: the run dirs say so on disk, for any reader
    assert RunDir(tmp_path / gid / "runs" / "traditional-s0").status()["state"] == "failed"
    assert RunDir(tmp_path / gid / "runs" / "vpl-s0").status()["state"] == "cancelled"


@pytest.mark.slow
def test_cancelling_the_only_active_member_stops_a_grid_of_one(tmp_path, warm_cache):
    # core.training.grid does not read cancel_requested when it trains one run; the manager signals the grid instead
    # (no other member is active, so this stops nothing else)
    jm = JobManager(tmp_path, grace_s=10)
    gid = jm.submit(grid(warm_cache, methods=("vpl",), steps=100_000, eval_every=50))
    rid = f"{gid}.vpl-s0"
    wait_for(lambda: member_training(jm, rid), 90, "the member to train")
    out = jm.cancel(rid)
    assert out["state"] == "cancelled", out
    assert checkpoint_step(tmp_path / gid / "runs" / "vpl-s0") > 0
    wait_for(lambda: jm.status(gid)["state"] not in ("queued", "running"), 30, "the grid to end")
    assert jm.status(gid)["state"] == "cancelled"

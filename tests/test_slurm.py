"""JobManager(launcher="slurm") against a real Slurm (scripts/slurm-local.sh start; .ci/run starts it).

Where no Slurm answers (sinfo fails), the cluster tests skip with the reason, unless
PREFLENS_REQUIRE_SLURM=1 (set by .ci/run), where they fail: CI must not go green without them.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from core.common.runs import RunDir
from core.jobs import slurm
from core.jobs.manager import JobManager
from tests.test_jobs import long_run, tiny, training, wait_for

FINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def partition():
    parts = slurm.partitions()
    if not parts:
        msg = "no Slurm here: sinfo does not answer (start one with: sudo scripts/slurm-local.sh start)"
        if os.environ.get("PREFLENS_REQUIRE_SLURM") == "1":
            pytest.fail(msg + "; PREFLENS_REQUIRE_SLURM=1 requires it")
        pytest.skip(msg)
    return parts[0]


@pytest.fixture
def warm_cache(cache_root, small_corpus_embeddings):
    """The session embedding cache, filled once, so no Slurm job encodes."""
    return cache_root


@pytest.fixture
def no_submitit_warnings(caplog):
    """Without accounting, submitit's own watcher logs a warning on every poll (sacct fails). We never
    ask it, so polling many times must leave the log quiet."""
    caplog.set_level(logging.WARNING, logger="submitit")
    yield
    noisy = [r.getMessage() for r in caplog.records if r.name.startswith("submitit")]
    assert not noisy, noisy[:3]


def _manager(tmp_path, partition, **params):
    return JobManager(tmp_path / "runs", launcher="slurm", grace_s=8,
                      slurm_params={"partition": partition, "time_min": 10, "cpus": 1, **params})


def _job_ended(job_id: str) -> bool:
    info = (slurm.job_states([job_id]) or {}).get(job_id)
    return info is not None and info.ended


# ---------------------------------------------------------------------- no cluster needed
def test_slurm_params_map_to_sbatch_options_and_bad_ones_name_the_field(tmp_path):
    folder, p = slurm.executor_params({"partition": "gpu", "time_min": 90, "cpus": 4, "gpus": 2, "mem_gb": 1.5,
                                       "qos": "high"}, "vpl-20260101-000000-abcdef")
    assert p["partition"] == "gpu" and p["time"] == 90 and p["cpus_per_task"] == 4 and p["gres"] == "gpu:2"
    assert p["mem"] == "1536MB" and p["qos"] == "high" and p["job_name"] == "preflens-vpl-20260101-000000-abcdef"
    assert p["additional_parameters"]["signal"] == "TERM@60"  # not submitit's USR2: the trainer checkpoints on TERM
    assert folder is None
    _, p = slurm.executor_params({})
    assert "gres" not in p and p["cpus_per_task"] == 1 and p["time"] == 60
    _, p = slurm.executor_params({"nodes": 2, "tasks_per_node": 4, "gpus_per_task": 1})
    assert p["nodes"] == 2 and p["ntasks_per_node"] == 4 and p["gpus_per_task"] == 1  # 8 ranks, a GPU each
    jm = JobManager(tmp_path, launcher="slurm")
    for bad, field in (({"cpus": 0}, "slurm_params.cpus"), ({"gpus": -1}, "slurm_params.gpus"),
                       ({"nodes": 0}, "slurm_params.nodes"), ({"tasks_per_node": "2"}, "slurm_params.tasks_per_node"),
                       ({"gpus": 1, "gpus_per_task": 1}, "slurm_params.gpus_per_task"),
                       ({"time_min": "ten"}, "slurm_params.time_min"), ({"partition": "a b;rm"}, "slurm_params.partition"),
                       ({"executor": "local"}, "slurm_params.executor")):
        with pytest.raises(ValueError, match=field):
            jm.submit({"preset": "vpl"}, slurm_params=bad)
    with pytest.raises(ValueError, match="slurm_params.tasks_per_node: several tasks are the ranks of one training"):
        jm.submit({"kind": "grid", "methods": ["vpl"], "seeds": [0, 1], "overrides": {}},
                  slurm_params={"tasks_per_node": 2})
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == []


def test_where_slurm_cannot_be_asked_a_run_keeps_its_state(tmp_path, monkeypatch):
    """No squeue here (a laptop reading a cluster's runs folder): not knowing is not 'dead'."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    assert slurm.partitions() is None and slurm.job_states(["5"]) is None
    run = RunDir(tmp_path / "runs" / "vpl-20260101-000000-abcdef").create()
    run.write_config({"preset": "vpl"})
    run.update_status(state="running", kind="train", launcher="slurm", job_id="5", submitted_ts=time.time())
    jm = JobManager(tmp_path / "runs")
    assert jm.status(run.run_id)["state"] == "running"
    assert [r["state"] for r in jm.list()] == ["running"]


SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "slurm-local.sh"


def _wait_idle(tmp_path, states: list[str], then: str, up_s: int, stale_s: int):
    """scripts/slurm-local.sh wait against a fake sinfo that reports ``states``, one a call, then ``then``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    queue = tmp_path / "states"
    queue.write_text("".join(f"{s}\n" for s in states))
    (bin_dir / "sinfo").write_text(f"""#!/usr/bin/env bash
[ "$1" = -h ] || exit 0  # sinfo -N -l, the dump before giving up
s=$(head -1 {queue}); if [ -n "$s" ]; then sed -i 1d {queue}; else s={then}; fi
echo "$s"
""")
    (bin_dir / "scontrol").write_text(f"#!/usr/bin/env bash\necho \"$*\" >> {tmp_path / 'scontrol.log'}\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PREFLENS_SLURM_DIR": str(tmp_path / "slurm"),
           "PREFLENS_SLURM_UP_S": str(up_s), "PREFLENS_SLURM_STALE_S": str(stale_s)}
    t0 = time.monotonic()
    done = subprocess.run(["bash", str(SCRIPT), "wait"], env=env, capture_output=True, text=True, timeout=60)
    return done, time.monotonic() - t0


def test_start_waits_out_a_stale_job_that_is_completing_and_says_so(tmp_path):
    """Right after a job was killed whole the node stays 'completing' past the usual wait (issue 19)."""
    done, took = _wait_idle(tmp_path, ["down", "completing"] + ["completing"] * 10, "idle", up_s=1, stale_s=30)
    assert done.returncode == 0, done.stderr
    assert took > 1.5  # longer than the usual wait, which would have given up
    assert done.stderr.count("waiting for a stale job to clear, state: completing") == 1, done.stderr
    assert "up: node" in done.stderr and "idle" in done.stderr


def test_a_node_that_stays_completing_or_down_gives_up_with_its_state(tmp_path):
    done, took = _wait_idle(tmp_path / "a", [], "completing", up_s=1, stale_s=3)
    assert done.returncode == 1 and took >= 2, (took, done.stderr)  # whole seconds (bash SECONDS)
    assert re.search(r"is not idle after [34] s \(state: completing\)", done.stderr), done.stderr
    # a node that is down (no stale job) keeps the short wait, and is asked to resume
    done, took = _wait_idle(tmp_path / "b", [], "down", up_s=1, stale_s=30)
    assert done.returncode == 1 and took < 10, (took, done.stderr)
    assert "stale job" not in done.stderr and "(state: down)" in done.stderr


# ---------------------------------------------------------------------- the real cluster
@pytest.mark.slow
def test_slurm_run_succeeds_and_its_curve_reads_back(tmp_path, partition, warm_cache, no_submitit_warnings):
    jm = _manager(tmp_path, partition)
    rid = jm.submit(tiny(warm_cache))
    st = jm.status(rid)
    assert st["launcher"] == "slurm" and st["job_id"] and st["state"] in ("queued", "running")
    wait_for(lambda: jm.status(rid)["state"] in FINAL, 120, "the Slurm run")
    st = jm.status(rid)
    assert st["state"] == "succeeded", st.get("error")
    assert st["node"] == socket.gethostname().split(".")[0]
    records, _ = RunDir(tmp_path / "runs" / rid).metrics()
    assert [r["step"] for r in records] == [0, 1, 2] and set(records[-1]["user_accuracy"]) == {"0", "1"}
    assert f"[slurm job {st['job_id']} on" in jm.log(rid)
    # Slurm answers for the job; a job id it never had is GONE (ended), not alive
    assert not slurm.job_states([st["job_id"]])[st["job_id"]].pending
    assert slurm.job_states(["987654321"])["987654321"].state == slurm.GONE


@pytest.mark.slow
def test_slurm_cancel_mid_training_keeps_points_and_ends_cancelled_fast(tmp_path, partition, warm_cache,
                                                                        no_submitit_warnings):
    jm = _manager(tmp_path, partition)
    rid = jm.submit(long_run(warm_cache))
    wait_for(lambda: training(jm, rid), 120, "the Slurm run to train")
    before = len(RunDir(tmp_path / "runs" / rid).metrics()[0])
    t0 = time.time()
    st = jm.cancel(rid)
    took = time.time() - t0
    assert st["state"] == "cancelled", st.get("error")
    assert took < 10, f"cancel took {took:.1f}s"
    assert "stopped" in (st.get("error") or "")  # the trainer's own words: it handled SIGTERM
    run = RunDir(tmp_path / "runs" / rid)
    assert (run.path / "train_state.pt").exists()  # it checkpointed
    assert len(run.metrics()[0]) >= before >= 1  # and kept its points
    wait_for(lambda: _job_ended(st["job_id"]), 30, "Slurm to end the job")


@pytest.mark.slow
def test_slurm_job_killed_ends_failed_for_a_fresh_manager(tmp_path, partition, warm_cache, no_submitit_warnings):
    jm = _manager(tmp_path, partition)
    rid = jm.submit(long_run(warm_cache))
    job = wait_for(lambda: training(jm, rid), 120, "the Slurm run to train")["job_id"]
    jm = None  # the app goes away
    # SIGKILL to the job step that runs the trainer: nothing gets to write a final state. (On Slurm 22.05
    # `scancel --signal=KILL JOB` for the whole job is a job cancel: SIGTERM first, and the trainer
    # checkpoints and ends cancelled, which is also the truth.)
    subprocess.run(["scancel", "--signal=KILL", f"{job}.0"], check=True, timeout=30)
    wait_for(lambda: _job_ended(job), 30, "Slurm to end the job")
    assert RunDir(tmp_path / "runs" / rid).status()["state"] == "running"  # nobody has looked yet
    st = JobManager(tmp_path / "runs").status(rid)  # an app restart, no launcher given
    assert st["state"] == "failed"
    assert f"Slurm job {job} ended" in st["error"] and "without a final state" in st["error"]
    assert "step     0" in st["error"]  # the tail of its output
    assert RunDir(tmp_path / "runs" / rid).status()["state"] == "failed"  # persisted


@pytest.mark.slow
def test_one_run_on_two_slurm_tasks_trains_as_ranks_and_a_killed_step_fails_it(tmp_path, partition, warm_cache,
                                                                              no_submitit_warnings):
    """tasks_per_node=2: srun starts two ranks of one run (core.training.distributed, gloo); the run's curve is the
    one-process run's. Then a second such run, its step killed with SIGKILL: failed, not running forever."""
    from tests.test_distributed import PERSONAL, drop_scratch

    jm = _manager(tmp_path, partition, tasks_per_node=2)
    rid = jm.submit({**PERSONAL, "steps": 30, "eval_every": 15, "cache_dir": warm_cache})
    wait_for(lambda: jm.status(rid)["state"] in FINAL, 180, "the 2-task Slurm run")
    st = jm.status(rid)
    assert st["state"] == "succeeded", st.get("error")
    assert st["ranks"] == {"world": 2, "device": "cpu", "backend": "gloo"} and st["slurm"]["tasks_per_node"] == 2
    records, _ = RunDir(tmp_path / "runs" / rid).metrics()
    assert [r["step"] for r in records] == [0, 15, 30] and records[-1]["accuracy"] > 0.8  # once each, and learned
    assert jm.log(rid).count("step    30") == 1  # rank 0's log only

    rid = jm.submit({**PERSONAL, "steps": 100_000, "eval_every": 100_000, "cache_dir": warm_cache})
    job = wait_for(lambda: training(jm, rid), 120, "the 2-task run to train")["job_id"]
    subprocess.run(["scancel", "--signal=KILL", f"{job}.0"], check=True, timeout=30)
    wait_for(lambda: jm.status(rid)["state"] in FINAL, 60, "the killed run to end")
    st = jm.status(rid)
    assert st["state"] == "failed", st
    drop_scratch(tmp_path / "runs" / rid)


@pytest.mark.slow
def test_slurm_runs_share_the_node_and_a_third_queues_until_one_ends(tmp_path, partition, warm_cache,
                                                                      no_submitit_warnings):
    node_cpus = int(subprocess.run(["sinfo", "-h", "-p", partition, "-o", "%c"], capture_output=True,
                                   text=True, timeout=10).stdout.split()[0].rstrip("+"))
    each = max(1, node_cpus // 2)  # two runs fill the node (1 CPU each on the 2-CPU test node)
    jm = _manager(tmp_path, partition, cpus=each)
    a = jm.submit(long_run(warm_cache))
    b = jm.submit(long_run(warm_cache, seed=1))
    wait_for(lambda: training(jm, a) and training(jm, b), 150, "both runs to train at the same time")
    c = jm.submit(tiny(warm_cache, seed=2))
    # Slurm, not JobManager, holds it back: pending, and once the scheduler has looked, for want of CPUs
    # (a just-started controller may take a few seconds to give the reason)
    st = wait_for(lambda: (s := jm.status(c)).get("slurm_reason") in ("Resources", "Priority") and s, 30,
                  "Slurm to say why the third run waits")
    assert st["state"] == "queued" and st["slurm_state"] == "PENDING", st
    assert {jm.status(a)["state"], jm.status(b)["state"]} == {"running"}
    assert jm.cancel(a)["state"] == "cancelled"
    wait_for(lambda: jm.status(c)["state"] != "queued", 60, "the queued run to start")
    wait_for(lambda: jm.status(c)["state"] in FINAL, 120, "the queued run to finish")
    assert jm.status(c)["state"] == "succeeded", jm.status(c).get("error")
    assert jm.status(b)["state"] == "running"  # untouched meanwhile
    assert jm.cancel(b)["state"] == "cancelled"


def test_a_reused_job_id_is_not_the_run(tmp_path, partition):
    """A cluster whose state was wiped restarts job ids at 1: a live job with our id but another name is
    not our run, which ended unseen."""
    other = subprocess.run(["sbatch", "--parsable", "-p", partition, "-J", "someone-else", "-o", "/dev/null",
                            "--wrap", "sleep 60"], capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    try:
        run = RunDir(tmp_path / "vpl-20260101-000000-abcdef").create()
        run.write_config({"preset": "vpl"})
        run.log("step     0 loss nan")
        run.update_status(state="running", kind="train", launcher="slurm", job_id=other,
                          slurm_job_name="preflens-vpl-20260101-000000-abcdef")
        st = JobManager(tmp_path).status(run.run_id)
        assert st["state"] == "failed" and f"Slurm job {other} is no longer known" in st["error"], st
    finally:
        subprocess.run(["scancel", other], timeout=30)

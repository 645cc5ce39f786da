"""The Slurm launcher of core.jobs.manager, and what Slurm says about jobs (sinfo, squeue, sacct, scancel).

``submit`` hands a run to ``sbatch`` through submitit (the job runs ``run_cli``: the run's CLI under
srun), ``reconcile`` turns what Slurm says into the run's state, ``cancel_run`` is scancel.

submitit submits (core.jobs.manager), but its state watcher asks only ``sacct``: on a cluster without
accounting (no slurmdbd) that fails, submitit logs a warning on every poll and calls every job
``UNKNOWN``. So state comes from here instead:

- ``sacct`` where accounting is on (it remembers jobs that ``squeue`` has forgotten); a job it does
  not know yet (slurmdbd lags) is looked up in ``squeue``;
- ``squeue --states=all`` where it is off. ``squeue`` lists a job while it is pending or running and
  for ``MinJobAge`` (default 300 s) after it ends; a job missing from it has ended (``GONE``).

Every function returns None (or False) when Slurm cannot be asked (no commands, controller down,
timeout): the caller must then keep what it knows rather than declare a job dead.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from core.common import REPO_ROOT
from core.common.runs import FINAL_STATES, RunDir, now_iso

# squeue/sacct base states (the first word: sacct says "CANCELLED by 0")
PENDING = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"})
ACTIVE = frozenset({"RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "STAGE_OUT", "SIGNALING",
                    "RESIZING", "STOPPED"})
GONE = "GONE"  # not in squeue (and not in sacct): it ended long enough ago to be forgotten
TIMEOUT_S = 10.0
_ACCOUNTING_TTL_S = 300.0
_accounting: tuple[float, bool] | None = None


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    state: str  # a Slurm state (RUNNING, PENDING, COMPLETED, CANCELLED, FAILED, ...) or GONE
    node: str | None = None
    reason: str | None = None  # why it is pending (Resources, Priority, ...)
    source: str = "squeue"
    name: str | None = None  # the job name (a restarted cluster may reuse job ids: compare names)

    @property
    def pending(self) -> bool:
        return self.state in PENDING

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def ended(self) -> bool:
        return not (self.pending or self.active)


def _run(args: list[str], timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess | None:
    if shutil.which(args[0]) is None:
        return None
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None


def partitions(timeout: float = 3.0) -> list[str] | None:
    """Partitions that are up, the default first; None where ``sinfo`` does not answer (no Slurm here)."""
    out = _run(["sinfo", "-h", "-o", "%P|%a"], timeout)
    if out is None or out.returncode != 0:
        return None
    names, default = [], None
    for line in out.stdout.splitlines():
        name, _, avail = line.strip().partition("|")
        if not name or avail.strip() != "up":
            continue
        if name.endswith("*"):
            name = default = name[:-1]
        if name not in names:
            names.append(name)
    if default:
        names.remove(default)
        names.insert(0, default)
    return names


def available(timeout: float = 3.0) -> bool:
    """True where ``sinfo`` answers with at least one partition that is up."""
    return bool(partitions(timeout))


def accounting_enabled() -> bool:
    """Whether ``sacct`` can answer: AccountingStorageType is not ``accounting_storage/none``. Cached."""
    global _accounting
    now = time.monotonic()
    if _accounting is not None and now - _accounting[0] < _ACCOUNTING_TTL_S:
        return _accounting[1]
    out = _run(["scontrol", "show", "config"])
    if out is None or out.returncode != 0:
        return False  # not cached: ask again next time
    enabled = False
    for line in out.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "AccountingStorageType":
            enabled = value.strip() not in ("", "(null)", "accounting_storage/none")
    _accounting = (now, enabled)
    return enabled


def _squeue(ids: list[str]) -> dict[str, JobInfo] | None:
    out = _run(["squeue", "-h", "--states=all", "-j", ",".join(ids), "-o", "%i|%T|%N|%r|%j"])
    if out is None:
        return None
    if out.returncode != 0:
        # one unknown id alone makes squeue fail with this message; several ids list the known ones
        if "Invalid job id" in (out.stderr or ""):
            return {}
        return None
    found = {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 5:
            continue
        jid, state, node, reason = parts[:4]
        found[jid] = JobInfo(jid, state.split()[0].upper(), node or None,
                             None if reason in ("", "None") else reason, "squeue", "|".join(parts[4:]) or None)
    return found


def _sacct(ids: list[str]) -> dict[str, JobInfo] | None:
    out = _run(["sacct", "-n", "-X", "-P", "-o", "JobIDRaw,State,NodeList,JobName", "-j", ",".join(ids)])
    if out is None or out.returncode != 0:
        return None
    found = {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 4 or parts[0] not in ids:
            continue
        node = parts[2] if parts[2] not in ("", "None assigned") else None
        found[parts[0]] = JobInfo(parts[0], parts[1].split()[0].upper(), node, None, "sacct",
                                  "|".join(parts[3:]) or None)
    return found


def job_states(job_ids) -> dict[str, JobInfo] | None:
    """``{job_id: JobInfo}`` for every id asked (GONE for a job Slurm no longer knows), or None when
    Slurm cannot be asked right now."""
    ids = sorted({str(j) for j in job_ids if j})
    if not ids:
        return {}
    found: dict[str, JobInfo] = {}
    if accounting_enabled():
        acct = _sacct(ids)
        if acct is not None:
            found.update(acct)
    missing = [j for j in ids if j not in found]
    if missing:
        queue = _squeue(missing)
        if queue is None:
            return None
        found.update(queue)
    return {j: found.get(j) or JobInfo(j, GONE, source="squeue") for j in ids}


def cancel(job_id: str, signal: str | None = None) -> str | None:
    """``scancel [--signal=SIG] JOB``. None on success, else the error text."""
    args = ["scancel"] + ([f"--signal={signal}"] if signal else []) + [str(job_id)]
    out = _run(args)
    if out is None:
        return "scancel is not available or timed out"
    if out.returncode != 0:
        return (out.stderr or out.stdout).strip() or f"scancel exited with status {out.returncode}"
    return None


# --------------------------------------------------------------------------- the launcher (core.jobs.manager)
DEFAULTS = {"time_min": 60, "cpus": 1, "gpus": 0}
LAYOUT = {"nodes": 1, "tasks_per_node": 1, "gpus_per_task": 0}  # one run across nodes x tasks: its ranks


def executor_params(params: dict, run_id: str | None = None) -> tuple[Path | None, dict]:
    """Our Slurm parameters -> (submitit folder or None, submitit.SlurmExecutor parameters).

    ``partition``; ``time_min`` -> ``--time`` (minutes, default 60); ``cpus`` -> ``--cpus-per-task``
    (default 1); ``gpus`` -> ``--gres=gpu:N`` (default 0: none); ``mem_gb`` -> ``--mem``; ``folder``:
    where submitit writes its pickles and the job's stdout/stderr. One run across ranks (core.training.distributed):
    ``nodes`` -> ``--nodes``, ``tasks_per_node`` -> ``--ntasks-per-node``, ``gpus_per_task`` -> ``--gpus-per-task``
    (each default 1, 1, 0: one rank); srun starts one rank per task. Any other key is passed to
    SlurmExecutor as is (``qos``, ``account``, ``constraint``, ``additional_parameters``, ...).
    ValueError names a bad field.
    """
    p = {**DEFAULTS, **LAYOUT, **dict(params or {})}
    executor = p.pop("executor", "slurm")
    if executor != "slurm":
        raise ValueError(f"slurm_params.executor: only 'slurm' is supported (got {executor!r}); "
                         "use launcher='local' for child processes on this machine")
    folder = p.pop("folder", None)
    out: dict = {}
    for key, low in (("time_min", 1), ("cpus", 1), ("gpus", 0), ("nodes", 1), ("tasks_per_node", 1),
                     ("gpus_per_task", 0)):
        value = p.pop(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"slurm_params.{key}: must be an integer >= {low}, got {value!r}")
        p[key] = value
    out["time"] = p.pop("time_min")
    out["cpus_per_task"] = p.pop("cpus")
    gpus = p.pop("gpus")
    if gpus:
        out["gres"] = f"gpu:{gpus}"
    out["nodes"], out["ntasks_per_node"] = p.pop("nodes"), p.pop("tasks_per_node")
    per_task = p.pop("gpus_per_task")
    if per_task:
        if gpus:
            raise ValueError("slurm_params.gpus_per_task: give either gpus (for the whole job) or gpus_per_task")
        out["gpus_per_task"] = per_task
    mem = p.pop("mem_gb", None)
    if mem is not None:
        if isinstance(mem, bool) or not isinstance(mem, int | float) or mem <= 0:
            raise ValueError(f"slurm_params.mem_gb: must be a positive number, got {mem!r}")
        out["mem"] = f"{int(mem * 1024)}MB"
    partition = p.pop("partition", None)
    if partition:
        if not isinstance(partition, str) or not re.match(r"^[A-Za-z0-9_.-]{1,64}$", partition):
            raise ValueError(f"slurm_params.partition: not a partition name: {partition!r}")
        out["partition"] = partition
    extra = dict(p.pop("additional_parameters", None) or {})
    # cwd of the job = the repo, so the pickled run_cli imports core.jobs.slurm; and SIGTERM (which the CLIs
    # turn into a checkpoint + 'cancelled') a minute before the time limit instead of submitit's USR2,
    # whose default action would kill the trainer without a final state.
    extra.setdefault("chdir", str(REPO_ROOT))
    extra.setdefault("signal", "TERM@60" if out["time"] >= 5 else "TERM@10")
    out["additional_parameters"] = extra
    if run_id:
        out["job_name"] = f"preflens-{run_id}"
    out.update(p)  # anything else is submitit's to judge
    return (Path(folder) if folder else None), out


def run_cli(module: str, config_path: str, run_dir: str, cwd: str) -> int:
    """What a Slurm job executes (submitit pickles it; srun runs it once per task): the same CLI as a local run,
    as a subprocess, with SIGTERM/SIGINT/SIGUSR2 forwarded to it. A job of several tasks is one run across
    ranks: submitit's helper reads the layout from Slurm and exports it (RANK, WORLD_SIZE, MASTER_ADDR, ...) for
    torch.distributed; rank 0 writes the run's log.txt, the others their task's own output in submitit's folder."""
    rank = 0
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        from submitit.helpers import TorchDistributedEnvironment

        rank = TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True).rank
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # with the layout just exported, where there is one
    with open(Path(run_dir) / "log.txt", "ab") if rank == 0 else contextlib.nullcontext(None) as log:
        if os.environ.get("SLURM_JOB_ID") and log is not None:
            log.write(f"[slurm job {os.environ['SLURM_JOB_ID']} on {socket.gethostname()}]\n".encode())
            log.flush()
        proc = subprocess.Popen([sys.executable, "-m", module, "--config", config_path, "--run-dir", run_dir],
                                cwd=cwd, stdout=log, stderr=subprocess.STDOUT if log is not None else None, env=env)

        def forward(sig, _frame):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2):
            with contextlib.suppress(ValueError):
                signal.signal(sig, forward)
        rc = proc.wait()
    if rc != 0:
        raise RuntimeError(f"{module} exited with status {rc}")
    return rc


def submit(run: RunDir, module: str, params: dict, default_folder: Path) -> None:
    """sbatch through submitit. The job runs run_cli (the same CLI as a local run) under srun. Its
    state is read from squeue/sacct (core.jobs.slurm), never from submitit's sacct-only watcher, and the
    submitit handle is not kept."""
    import submitit

    folder, ex_params = executor_params(params, run.run_id)
    folder = (folder or default_folder).resolve()
    ex = submitit.SlurmExecutor(folder=folder)
    ex.update_parameters(**ex_params)
    job = ex.submit(run_cli, module, str(run.config_path.resolve()), str(run.path.resolve()), str(REPO_ROOT))
    shown = {k: params.get(k, {**DEFAULTS, **LAYOUT}.get(k)) for k in ("partition", "time_min", "cpus", "gpus",
                                                                      "mem_gb", "nodes", "tasks_per_node", "gpus_per_task")}
    run.update_status(if_state=("queued",), job_id=str(job.job_id), slurm_job_name=ex_params["job_name"],
                      slurm_state="PENDING",
                      slurm={k: v for k, v in shown.items() if v is not None},
                      slurm_stdout=str(job.paths.stdout), slurm_stderr=str(job.paths.stderr),
                      submitit_folder=str(folder), pid=None, host=None)


def reconcile(run: RunDir, st: dict, infos: dict | None) -> dict:
    """The run's own status.json comes first; Slurm fills in what it cannot say: pending (queued),
    started (running, on which node), or ended without a final state (failed, with the job id and
    the tails of log.txt and the job's stderr)."""
    job_id = st.get("job_id")
    if not job_id:
        # created, but the submission never finished (the app died during sbatch)
        if st.get("state") == "queued" and time.time() - float(st.get("submitted_ts") or 0) > 120:
            return run.mark_final("failed", error="never reached Slurm (no job id recorded)",
                                  if_state=("queued",))
        return st
    info = (infos or {}).get(str(job_id))
    if info is None:
        return st  # Slurm does not answer right now: keep what we know
    if info.name and st.get("slurm_job_name") and info.name != st["slurm_job_name"]:
        info = replace(info, state=GONE)  # a restarted cluster reused the id for another job
    if not info.ended:
        changes = {}
        if info.state != st.get("slurm_state"):
            changes["slurm_state"] = info.state
        if (info.reason or None) != st.get("slurm_reason"):
            changes["slurm_reason"] = info.reason
        if info.node and info.node != st.get("node"):
            changes["node"] = info.node
        if info.active and st.get("state") == "queued":
            changes.update(state="running", launched=now_iso(), launched_ts=time.time())
        if changes:
            return run.update_status(if_state=("queued", "running"), **changes)
        return st
    time.sleep(0.05)  # the job's last write may be landing right now
    fresh = run.status()
    if fresh.get("state") in FINAL_STATES:
        return fresh
    if fresh.get("cancel_requested"):  # died on our scancel before its handler was in place
        return run.mark_final("cancelled", error=f"cancelled by the user (Slurm job {job_id}, {info.state})",
                              slurm_state=info.state, ended_ts=time.time(), if_state=("queued", "running"))
    if fresh.get("state") == "queued" and not fresh.get("started") and info.state == "CANCELLED":
        return run.mark_final("cancelled", error=f"Slurm job {job_id} was cancelled before it started",
                              slurm_state=info.state, ended_ts=time.time(), if_state=("queued", "running"))
    how = "is no longer known to Slurm" if info.state == "GONE" else f"ended ({info.state})"
    tail = run.log_tail(30)
    err_tail = _tail(fresh.get("slurm_stderr"), 10)
    msg = f"Slurm job {job_id} {how} without a final state. Log tail:\n{tail}"
    if err_tail:
        msg += f"\nSlurm job stderr:\n{err_tail}"
    return run.mark_final("failed", error=msg, slurm_state=info.state, ended_ts=time.time(),
                          if_state=("queued", "running"))


def cancel_run(run: RunDir, st: dict, grace_s: float) -> None:
    """``scancel`` (SIGTERM to every process of the job; Slurm kills after its KillWait), then
    ``scancel --signal=KILL`` if neither the run nor Slurm says it ended within ``grace_s``."""
    job_id = st.get("job_id")
    if not job_id:
        return
    cancel(job_id)
    deadline = time.time() + grace_s
    while time.time() < deadline:
        if run.status().get("state") in FINAL_STATES:
            return
        info = (job_states([job_id]) or {}).get(str(job_id))
        if info is not None and info.ended:
            return
        time.sleep(0.2)
    cancel(job_id, signal="KILL")


def _tail(path: str | None, n_lines: int) -> str:
    if not path:
        return ""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8192))
            data = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-n_lines:])

"""What Slurm says about jobs, from its own commands (sinfo, squeue, sacct, scancel).

submitit submits (core.jobs), but its state watcher asks only ``sacct``: on a cluster without
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

import shutil
import subprocess
import time
from dataclasses import dataclass

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

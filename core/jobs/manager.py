"""Background jobs over run directories (docs/architecture.md §3): submit, queue, watch, cancel.

    jm = JobManager("checkpoints", max_concurrent=1)
    run_id = jm.submit({"preset": "vpl-adaptive", "seed": 1, "steps": 200})
    jm.status(run_id)   # {"state": "queued"|"running"|..., "pid": ..., "progress": {...}, ...}
    jm.cancel(run_id); jm.list(); jm.log(run_id)

All state lives in ``root/<run_id>/status.json`` (the run-dir contract in core.common.runs), so any number
of managers (app sessions, an app restart, a notebook) over the same folder agree. There is no
daemon: every ``submit``/``status``/``list`` call first reconciles (a dead process without a final
state becomes ``failed`` with its log tail) and then starts queued runs while slots are free.
Scheduling holds an ``flock`` on ``root/.jobs.lock`` so two managers never start the same run.

Job kinds: a registry of ``JobKind(name, module, validate, members)``. The built-ins are listed in core/jobs/kinds.py,
imported on the first look-up, so this module imports no feature; ``register_kind`` adds one at run
time. A config's ``kind`` (default ``train``) picks it; its module is recorded in status.json at submit.

Jobs of many runs (kind ``grid``: one process trains methods x seeds): a kind whose ``members`` names a
subfolder (``runs``) writes one ordinary run dir per member there, ``root/<job id>/runs/<name>/``. ``list()``
returns each member as a run of its own, id ``<job id>.<name>`` (plain run ids never hold a dot), with
``grid`` (the job's id) and ``grid_pid``; ``status``, ``cancel``, ``log`` and ``run_dir`` take that id. A
member is judged by its job: a member still ``running`` when its job is not (the grid process died, was
killed, or Slurm says it ended) becomes ``failed`` (``cancelled`` if a cancel was asked). Cancelling a member
writes ``cancel_requested`` in its status.json and waits up to ``grace_s`` for the grid process, which checks
it between steps, to checkpoint it and mark it ``cancelled``; the others train on. Only when no other member
is still active is the grid process signalled (then that is the same thing, and a grid of one does not read
``cancel_requested``). Cancelling the job itself stops every member, as before.

Launchers:
- ``local``: ``python -m <kind's module> --config ... --run-dir ...`` as a child process in
  its own session (process group), stdout+stderr to ``log.txt``. The status records the pid and the
  process's start time from /proc, so a reused pid is never mistaken for the run.
- ``slurm``: the same CLI, submitted with ``sbatch`` through submitit at ``submit`` (Slurm is the
  queue: ``max_concurrent`` bounds local runs only). ``slurm_params`` (see ``core.jobs.slurm.executor_params``):
  partition, time_min, cpus, gpus, mem_gb, folder, plus any submitit SlurmExecutor parameter. A run is
  ``queued`` while its job is pending, ``running`` once Slurm starts it (``node`` recorded). State comes
  from the run's status.json first, then from core.jobs.slurm (sacct where accounting is on, else squeue);
  a job that ended without a final state is ``failed`` with its job id and output tails. Cancel is
  ``scancel`` (SIGTERM to the job's processes; the trainer checkpoints), then ``--signal=KILL``.

Seams, if it grows: the job-kind registry (its own section below) from ``JobManager``; the members of
a grid are already apart (core.jobs.members), as are Slurm (core.jobs.slurm) and processes.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.common import REPO_ROOT
from core.common.runs import FINAL_STATES, RunDir, file_lock, new_run_id, now_iso
from core.jobs import slurm
from core.jobs.members import _ID_PART, _RUN_ID_RE, MemberRun, MembersMixin
from core.jobs.processes import _CHILDREN, pid_alive, proc_start_marker  # noqa: F401 - part of this module's API

_MEMBER_ID_RE = re.compile(rf"^({_ID_PART})\.({_ID_PART})$")  # <job id>.<member folder>: a member of a grid
_SUBFOLDER_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class JobError(ValueError):
    """A run id that is not a run of this manager, or an operation that does not apply."""


# --------------------------------------------------------------------------- job kinds
@dataclass(frozen=True)
class JobKind:
    """What the job layer needs to know about one kind of job; it never imports the feature itself.

    ``module`` is a CLI run as ``python -m MODULE --config FILE --run-dir DIR`` that writes the run-dir
    contract (core.common.runs). ``validate`` turns the submitted dict into ``(full config dict (JSON-able),
    label, run-id prefix)``, raising ValueError naming the bad field; it may also return a dict or a
    pydantic model, whose label and prefix are then the kind's name. Give it as a callable or as a lazy
    ``"package.module:function"`` string, resolved on first use.

    ``members``: for a job that trains many runs, the subfolder of its run dir that holds one run dir per
    member (the grid's ``runs``); the manager lists those as runs and cancels them one by one through
    ``cancel_requested`` in their status.json, which the job's process must honour.
    """

    name: str
    module: str
    validate: Callable[[dict], tuple[dict, str, str]] | str
    members: str | None = None

    def validator(self) -> Callable:
        if callable(self.validate):
            return self.validate
        mod, _, func = self.validate.partition(":")
        return getattr(importlib.import_module(mod), func)

    def check(self, config: dict) -> tuple[dict, str, str]:
        """(full config, label, prefix); ValueError (naming the field) for a bad config."""
        out = self.validator()(config)
        if isinstance(out, tuple):
            full, label, prefix = out
        else:
            full = out.model_dump(mode="json") if hasattr(out, "model_dump") else dict(out)
            label = prefix = self.name
        return full, str(label), str(prefix)


_KINDS: dict[str, JobKind] = {}
_BUILTINS = "core.jobs.kinds"  # the one module that lists the built-in kinds; imported on first look-up
_builtins_loaded = False


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True  # before the import: core.jobs.kinds calls register_kind
    try:
        importlib.import_module(_BUILTINS)
    except BaseException:
        _builtins_loaded = False
        raise


def register_kind(kind: JobKind) -> JobKind:
    """Add a job kind, or replace the one of the same name (a built-in included). Returns it."""
    if not isinstance(kind, JobKind):
        raise TypeError("register_kind takes a JobKind")
    if not isinstance(kind.name, str) or not re.match(r"^[a-z][a-z0-9_-]{0,31}$", kind.name):
        raise ValueError(f"kind: {kind.name!r} is not a valid kind name (lowercase letters, digits, - and _)")
    _load_builtins()  # first, so that a built-in never overwrites a kind registered before the first look-up
    _KINDS[kind.name] = kind
    return kind


def job_kinds() -> dict[str, JobKind]:
    """Every registered kind by name, the built-ins included."""
    _load_builtins()
    return dict(_KINDS)


def get_kind(name: str) -> JobKind:
    kinds = job_kinds()
    if name not in kinds:
        raise ValueError(f"kind: unknown job kind {name!r}; choose one of {', '.join(sorted(kinds))}")
    return kinds[name]


# --------------------------------------------------------------------------- the manager
class RunList(list):
    """``JobManager.list()`` result: run mappings, newest first, plus ``skipped`` (folders not understood)."""

    skipped: int = 0
    skipped_names: list[str]


_SLURM_CACHE_S = 1.0  # one squeue answer serves every run of one list()/status() call


class JobManager(MembersMixin):
    """Runs under ``root``. ``launcher``: ``local`` (child processes here, at most ``max_concurrent``
    at a time, the rest ``queued`` in this manager's queue) or ``slurm`` (each run is handed to Slurm at
    submit; Slurm is the queue, so ``max_concurrent`` does not hold Slurm runs back, nor do they take
    local slots). ``submit`` may override the launcher and the Slurm parameters per run."""

    def __init__(self, root: str | Path = "checkpoints", max_concurrent: int = 1, launcher: str = "local",
                 slurm_params: dict | None = None, grace_s: float = 5.0):
        _check_launcher(launcher)
        if int(max_concurrent) < 1:
            raise ValueError("max_concurrent: must be at least 1")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_concurrent = int(max_concurrent)
        self.launcher = launcher
        self.slurm_params = dict(slurm_params or {})
        self.grace_s = float(grace_s)
        self._slurm_seen: dict[str, tuple[float, object]] = {}  # job id -> (monotonic time, slurm.JobInfo)

    # ------------------------------------------------------------------ public API
    def submit(self, config: dict, *, launcher: str | None = None, slurm_params: dict | None = None) -> str:
        """Validate, create ``root/<generated id>/`` with config + queued status, then start it (a free
        local slot) or hand it to Slurm. A bad config or Slurm parameter raises before anything is created."""
        if not isinstance(config, dict):
            raise TypeError("config must be a dict")
        launcher = launcher or self.launcher
        _check_launcher(launcher)
        kind = get_kind(config.get("kind") or "train")
        full, label, prefix = kind.check(config)  # raises naming the field, before anything is created
        params = dict(self.slurm_params if slurm_params is None else slurm_params)
        if launcher == "slurm":
            _, ex = slurm.executor_params(params)  # raises naming the field
            if ex["nodes"] * ex["ntasks_per_node"] > 1 and kind.name != "train":
                raise JobError(f"slurm_params.tasks_per_node: several tasks are the ranks of one training run; a "
                               f"{kind.name} job runs in one process (give nodes 1 and tasks_per_node 1)")
        run_id = new_run_id(prefix)
        while (self.root / run_id).exists():  # same second, same random suffix: practically never
            run_id = new_run_id(prefix)
        run = RunDir(self.root / run_id).create()
        run.write_config(full)
        # the module is recorded, so a queued run still launches if the registry changes meanwhile
        run.update_status(state="queued", kind=kind.name, module=kind.module, label=label, submitted=now_iso(),
                          submitted_ts=time.time(), launcher=launcher, progress=None, error=None,
                          **({"members_dir": kind.members} if kind.members else {}))
        if launcher == "slurm":
            try:
                slurm.submit(run, kind.module, params, self.root / ".submitit")
            except Exception as err:  # noqa: BLE001 - recorded on the run, like a local launch failure
                msg = str(err).strip() or type(err).__name__
                run.mark_final("failed", error=f"could not submit to Slurm: {msg}")
        else:
            self.schedule()
        return run_id

    def status(self, run_id: str) -> dict:
        """The run's status (reconciled); a grid's also lists its started members' ids in ``members``."""
        run = self._run(run_id)
        self.schedule()
        view = self._view(run)
        members = None if isinstance(run, MemberRun) else self._members(run, view)
        if members is not None:
            view["members"] = [m.run_id for m in members]
        return view

    def cancel(self, run_id: str) -> dict:
        """Queued -> cancelled at once. Running -> SIGTERM (the trainer checkpoints and marks itself
        cancelled), SIGKILL after ``grace_s``; always ends ``cancelled`` and frees the slot. A Slurm run
        gets ``scancel`` (SIGTERM to every process of the job), then ``scancel --signal=KILL``.
        A member of a grid (``<job id>.<name>``) is cancelled alone: see ``_cancel_member``."""
        run = self._run(run_id)
        if isinstance(run, MemberRun):
            return self._cancel_member(run)
        with self._lock():
            st = run.status()
            state = st.get("state")
            if state in FINAL_STATES:
                return self._view(run)
            run.update_status(cancel_requested=now_iso())
            if state != "running" and st.get("launcher") != "slurm":
                run.mark_final("cancelled", error="cancelled before it started", if_state=("queued", "running"))
                return self._view(run)
        if st.get("launcher") == "slurm":
            slurm.cancel_run(run, st, self.grace_s)
        else:
            self._terminate(run, st)
        st = run.status()
        if st.get("state") not in FINAL_STATES:
            # killed, or the child died on the signal before its handler was in place
            prev = st.get("error")
            started = st.get("state") == "running"
            msg = "cancelled by the user" if started else "cancelled before it started"
            run.mark_final("cancelled", error=msg + (f" ({prev.splitlines()[0]})" if prev else ""),
                           if_state=("queued", "running"))
        self.schedule()
        return self._view(run)

    def list(self) -> RunList:
        """Every run under root, newest first; a grid's members (``<job id>.<name>``, with ``grid``) follow
        their job, in name order. Folders that are not runs are counted in ``.skipped``."""
        self.schedule()
        groups = []
        skipped = []
        for path in self._folders():
            run = RunDir(path)
            st = run.status()
            if not _RUN_ID_RE.match(path.name) or not st or st.get("state") not in (
                    "queued", "running", "succeeded", "failed", "cancelled") or not run.config_path.exists():
                skipped.append(path.name)
                continue
            view = self._view(run, st)
            group = [view]
            members = self._members(run, view)
            if members is not None:
                view["members"] = [m.run_id for m in members]
                group += [self._member_view(m, job_st=view) for m in members]
            groups.append(((view.get("submitted_ts") or _mtime(run.config_path), view["run_id"]), group))
        groups.sort(key=lambda g: g[0], reverse=True)
        out = RunList(v for _, group in groups for v in group)
        out.skipped_names = skipped
        out.skipped = len(skipped)
        return out

    def log(self, run_id: str, n_lines: int = 200) -> str:
        return self._run(run_id).log_tail(n_lines)

    def run_dir(self, run_id: str) -> RunDir:
        return self._run(run_id)

    def poll(self) -> None:
        """Reconcile every active run: a local process gone without a final state -> failed; a Slurm
        job -> queued/running/ended as Slurm says (one squeue or sacct call for all of them)."""
        slurm_runs = []
        for path in self._folders():
            run = RunDir(path)
            st = run.status()
            if st.get("launcher") == "slurm" and st.get("state") in ("queued", "running"):
                slurm_runs.append((run, st))
            elif st.get("state") == "running":
                self._check_alive(run, st)
        if slurm_runs:
            infos = self._slurm_infos([st.get("job_id") for _, st in slurm_runs], fresh=True)
            for run, st in slurm_runs:
                slurm.reconcile(run, st, infos)

    def schedule(self) -> list[str]:
        """poll(), then start queued local runs (oldest first) while fewer than max_concurrent local runs
        are running. Slurm runs are not counted: they were handed to Slurm at submit."""
        started = []
        with self._lock():
            self.poll()
            runs = [(RunDir(p), RunDir(p).status()) for p in self._folders()]
            local = [(r, st) for r, st in runs if st.get("launcher") != "slurm"]
            active = sum(1 for _, st in local if st.get("state") == "running")
            queued = sorted(((r, st) for r, st in local if st.get("state") == "queued" and r.config_path.exists()),
                            key=lambda x: (x[1].get("submitted_ts") or 0.0, x[0].run_id))
            for run, st in queued:
                if active >= self.max_concurrent:
                    break
                try:
                    self._launch(run, st)
                except Exception as err:  # noqa: BLE001 - a launch failure is recorded on the run, not raised
                    run.mark_final("failed", error=f"could not start: {type(err).__name__}: {err}")
                    continue
                active += 1
                started.append(run.run_id)
        return started

    # ------------------------------------------------------------------ internals
    def _folders(self) -> list[Path]:
        try:
            return [p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        except OSError:
            return []

    def _run(self, run_id: str) -> RunDir:
        if isinstance(run_id, str):
            if _RUN_ID_RE.match(run_id) and (self.root / run_id).is_dir():
                return RunDir(self.root / run_id)
            m = _MEMBER_ID_RE.match(run_id)
            if m and (self.root / m.group(1)).is_dir():
                job = RunDir(self.root / m.group(1))
                sub = self._members_dir(job.status())
                if sub and (job.path / sub / m.group(2)).is_dir():
                    return MemberRun(job.path / sub / m.group(2), job)
        raise JobError(f"run_id: no run {run_id!r} under {self.root}")

    @staticmethod
    def _members_dir(st: dict) -> str | None:
        """The subfolder holding a job's member runs (recorded at submit; else its kind's), or None."""
        sub = st.get("members_dir")
        if not sub and st.get("kind"):
            kind = job_kinds().get(str(st["kind"]))
            sub = kind.members if kind else None
        return sub if isinstance(sub, str) and _SUBFOLDER_RE.match(sub) else None

    def _lock(self):
        return file_lock(self.root / ".jobs.lock")

    def _view(self, run: RunDir, st: dict | None = None) -> dict:
        if isinstance(run, MemberRun):
            return self._member_view(run, st)
        st = dict(st if st is not None else run.status())
        if st.get("launcher") == "slurm" and st.get("state") in ("queued", "running"):
            st = slurm.reconcile(run, st, self._slurm_infos([st.get("job_id")]))
        elif st.get("state") == "running":
            st = self._check_alive(run, st)
        st["run_id"] = run.run_id
        st["path"] = str(run.path)
        if st.get("state") != "running":
            st["pid"] = None if st.get("state") in FINAL_STATES else st.get("pid")
        start = st.get("launched_ts")
        if start and st.get("state") != "queued":
            st["elapsed_s"] = (st.get("ended_ts") or time.time()) - start
        return st

    def _command(self, run: RunDir, module: str) -> list[str]:
        return [sys.executable, "-m", module, "--config", str(run.config_path.resolve()),
                "--run-dir", str(run.path.resolve())]

    def _launch(self, run: RunDir, st: dict) -> None:
        module = st.get("module") or get_kind(st.get("kind") or "train").module
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(run.log_path, "ab") as log:
            proc = subprocess.Popen(self._command(run, module), cwd=str(REPO_ROOT), stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True)
        _CHILDREN[proc.pid] = proc
        run.update_status(state="running", pid=proc.pid, pgid=proc.pid, pid_start=proc_start_marker(proc.pid),
                          host=socket.gethostname(), launcher="local", launched=now_iso(),
                          launched_ts=time.time())

    # ------------------------------------------------------------------ Slurm
    def _slurm_infos(self, job_ids, fresh: bool = False) -> dict | None:
        """{job id: slurm.JobInfo} from one squeue/sacct call; answers younger than a second are reused.
        None when Slurm cannot be asked."""
        ids = [str(j) for j in job_ids if j]
        now = time.monotonic()
        cached = {j: self._slurm_seen[j][1] for j in ids
                  if not fresh and j in self._slurm_seen and now - self._slurm_seen[j][0] < _SLURM_CACHE_S}
        missing = [j for j in ids if j not in cached]
        if missing:
            got = slurm.job_states(missing)
            if got is None:
                return None
            for j, info in got.items():
                self._slurm_seen[j] = (now, info)
            cached.update(got)
        return cached

    # ------------------------------------------------------------------ local processes
    def _check_alive(self, run: RunDir, st: dict) -> dict:
        """A 'running' local run whose process is gone and left no final state is persisted as failed."""
        if self._is_alive(st):
            return st
        time.sleep(0.05)  # the child may be writing its final status right now
        fresh = run.status()
        if fresh.get("state") != "running":
            return fresh
        pid = fresh.get("pid")
        if fresh.get("cancel_requested"):  # died on our SIGTERM before its handler was in place
            return run.mark_final("cancelled", error="cancelled by the user", ended_ts=time.time(),
                                  if_state=("running",))
        tail = run.log_tail(30)
        return run.mark_final("failed", error=f"process {pid} exited without a final state. Log tail:\n{tail}",
                              ended_ts=time.time(), if_state=("running",))

    def _is_alive(self, st: dict) -> bool:
        if st.get("host") not in (None, socket.gethostname()):
            return True  # not ours to judge
        return pid_alive(st.get("pid"), st.get("pid_start"))

    def _terminate(self, run: RunDir, st: dict) -> None:
        deadline = time.time() + self.grace_s
        pid, marker = st.get("pid"), st.get("pid_start")
        if not pid_alive(pid, marker):
            return
        pgid = st.get("pgid") or pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(int(pgid), signal.SIGTERM)
        while time.time() < deadline and pid_alive(pid, marker):
            time.sleep(0.1)
        if pid_alive(pid, marker):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(pgid), signal.SIGKILL)
            end = time.time() + 3
            while time.time() < end and pid_alive(pid, marker):
                time.sleep(0.05)
        child = _CHILDREN.pop(int(pid), None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=1)


def _check_launcher(launcher: str) -> None:
    if launcher not in ("local", "slurm"):
        raise ValueError(f"launcher: must be 'local' or 'slurm', got {launcher!r}")


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def default_root() -> Path:
    """checkpoints/ under the repo, or $PREFLENS_RUNS_DIR."""
    return Path(os.environ.get("PREFLENS_RUNS_DIR") or (REPO_ROOT / "checkpoints"))

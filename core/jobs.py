"""Background jobs over run directories (DESIGN §1-2): submit, queue, watch, cancel.

    jm = JobManager("checkpoints", max_concurrent=1)
    run_id = jm.submit({"preset": "vpl-adaptive", "seed": 1, "steps": 200})
    jm.status(run_id)   # {"state": "queued"|"running"|..., "pid": ..., "progress": {...}, ...}
    jm.cancel(run_id); jm.list(); jm.log(run_id)

All state lives in ``root/<run_id>/status.json`` (the run-dir contract in core.runs), so any number
of managers (app sessions, an app restart, a notebook) over the same folder agree. There is no
daemon: every ``submit``/``status``/``list`` call first reconciles (a dead process without a final
state becomes ``failed`` with its log tail) and then starts queued runs while slots are free.
Scheduling holds an ``flock`` on ``root/.jobs.lock`` so two managers never start the same run.

Job kinds: a registry of ``JobKind(name, module, validate)``. The built-ins are listed in core/kinds.py,
imported on the first look-up, so this module imports no feature; ``register_kind`` adds one at run
time. A config's ``kind`` (default ``train``) picks it; its module is recorded in status.json at submit.

Launchers:
- ``local``: ``python -m <kind's module> --config ... --run-dir ...`` as a child process in
  its own session (process group), stdout+stderr to ``log.txt``. The status records the pid and the
  process's start time from /proc, so a reused pid is never mistaken for the run.
- ``slurm``: the same CLI submitted through submitit. ``slurm_params`` configures it:
  ``{"executor": "slurm"|"local"|"auto", "folder": ..., <executor parameters>...}``; the ``local``
  executor (submitit.LocalExecutor) is what tests use.
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

from .runs import FINAL_STATES, RunDir, file_lock, new_run_id, now_iso

REPO_ROOT = Path(__file__).resolve().parents[1]
_RUN_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,80}$")

# Popen handles of children started by this process, so finished children are reaped (no zombies).
_CHILDREN: dict[int, subprocess.Popen] = {}
# submitit job handles submitted by this process, by run id.
_SUBMITIT_JOBS: dict[str, object] = {}


class JobError(ValueError):
    """A run id that is not a run of this manager, or an operation that does not apply."""


# --------------------------------------------------------------------------- job kinds
@dataclass(frozen=True)
class JobKind:
    """What the job layer needs to know about one kind of job; it never imports the feature itself.

    ``module`` is a CLI run as ``python -m MODULE --config FILE --run-dir DIR`` that writes the run-dir
    contract (core.runs). ``validate`` turns the submitted dict into ``(full config dict (JSON-able),
    label, run-id prefix)``, raising ValueError naming the bad field; it may also return a dict or a
    pydantic model, whose label and prefix are then the kind's name. Give it as a callable or as a lazy
    ``"package.module:function"`` string, resolved on first use.
    """

    name: str
    module: str
    validate: Callable[[dict], tuple[dict, str, str]] | str

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
_BUILTINS = "core.kinds"  # the one module that lists the built-in kinds; imported on first look-up
_builtins_loaded = False


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True  # before the import: core.kinds calls register_kind
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


# --------------------------------------------------------------------------- process helpers
def proc_start_marker(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), or None."""
    try:
        raw = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = raw[raw.rfind(")") + 2:].split()
    # fields[0] is field 3 (state); starttime is field 22
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None  # gone, or a zombie: finished
    return fields[19]


def _reap(pid: int | None) -> None:
    if pid is None:
        return
    child = _CHILDREN.get(int(pid))
    if child is not None and child.poll() is not None:
        _CHILDREN.pop(int(pid), None)


def pid_alive(pid: int | None, marker: str | None = None) -> bool:
    """True while the process exists, is not a zombie and (if a marker is given) is the same process."""
    if not pid:
        return False
    _reap(pid)
    now = proc_start_marker(int(pid))
    if now is None:
        if not Path("/proc").is_dir():  # no procfs (macOS): fall back on signal 0
            try:
                os.kill(int(pid), 0)
                return True
            except OSError:
                return False
        return False
    return marker is None or str(marker) == now


def _run_cli(module: str, config_path: str, run_dir: str, cwd: str) -> int:
    """What a submitit job executes: the same CLI as the local launcher, as a subprocess."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(Path(run_dir) / "log.txt", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", module, "--config", config_path, "--run-dir", run_dir],
                                cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)

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


# --------------------------------------------------------------------------- the manager
class RunList(list):
    """``JobManager.list()`` result: run mappings, newest first, plus ``skipped`` (folders not understood)."""

    skipped: int = 0
    skipped_names: list[str]


class JobManager:
    def __init__(self, root: str | Path = "checkpoints", max_concurrent: int = 1, launcher: str = "local",
                 slurm_params: dict | None = None, grace_s: float = 5.0):
        if launcher not in ("local", "slurm"):
            raise ValueError(f"launcher: must be 'local' or 'slurm', got {launcher!r}")
        if int(max_concurrent) < 1:
            raise ValueError("max_concurrent: must be at least 1")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_concurrent = int(max_concurrent)
        self.launcher = launcher
        self.slurm_params = dict(slurm_params or {})
        self.grace_s = float(grace_s)

    # ------------------------------------------------------------------ public API
    def submit(self, config: dict) -> str:
        """Validate, create ``root/<generated id>/`` with config + queued status, start it if a slot is free."""
        if not isinstance(config, dict):
            raise TypeError("config must be a dict")
        kind = get_kind(config.get("kind") or "train")
        full, label, prefix = kind.check(config)  # raises naming the field, before anything is created
        run_id = new_run_id(prefix)
        while (self.root / run_id).exists():  # same second, same random suffix: practically never
            run_id = new_run_id(prefix)
        run = RunDir(self.root / run_id).create()
        run.write_config(full)
        # the module is recorded, so a queued run still launches if the registry changes meanwhile
        run.update_status(state="queued", kind=kind.name, module=kind.module, label=label, submitted=now_iso(),
                          submitted_ts=time.time(), launcher=self.launcher, progress=None, error=None)
        self.schedule()
        return run_id

    def status(self, run_id: str) -> dict:
        run = self._run(run_id)
        self.schedule()
        return self._view(run)

    def cancel(self, run_id: str) -> dict:
        """Queued -> cancelled at once. Running -> SIGTERM to its process group (the trainer checkpoints
        and marks itself cancelled), SIGKILL after ``grace_s``; always ends ``cancelled`` and frees the slot."""
        run = self._run(run_id)
        with self._lock():
            st = run.status()
            state = st.get("state")
            if state in FINAL_STATES:
                return self._view(run)
            run.update_status(cancel_requested=now_iso())
            if state != "running":
                run.mark_final("cancelled", error="cancelled before it started")
                return self._view(run)
        self._terminate(run, st)
        st = run.status()
        if st.get("state") != "cancelled" and st.get("state") != "succeeded":
            # killed, or the child died on the signal before its handler was in place
            prev = st.get("error")
            run.mark_final("cancelled", error="cancelled by the user" + (f" ({prev.splitlines()[0]})" if prev else ""))
        self.schedule()
        return self._view(run)

    def list(self) -> RunList:
        """Every run under root, newest first. Folders that are not runs are counted in ``.skipped``."""
        self.schedule()
        out = RunList()
        out.skipped_names = []
        for path in self._folders():
            run = RunDir(path)
            st = run.status()
            if not _RUN_ID_RE.match(path.name) or not st or st.get("state") not in (
                    "queued", "running", "succeeded", "failed", "cancelled") or not run.config_path.exists():
                out.skipped_names.append(path.name)
                continue
            out.append(self._view(run, st))
        out.skipped = len(out.skipped_names)
        out.sort(key=lambda r: (r.get("submitted_ts") or _mtime(Path(r["path"]) / "config.json"), r["run_id"]),
                 reverse=True)
        return out

    def log(self, run_id: str, n_lines: int = 200) -> str:
        return self._run(run_id).log_tail(n_lines)

    def run_dir(self, run_id: str) -> RunDir:
        return self._run(run_id)

    def poll(self) -> None:
        """Reconcile every active run with its process (dead without a final state -> failed)."""
        for path in self._folders():
            run = RunDir(path)
            st = run.status()
            if st.get("state") == "running":
                self._check_alive(run, st)

    def schedule(self) -> list[str]:
        """poll(), then start queued runs (oldest first) while fewer than max_concurrent are running."""
        started = []
        with self._lock():
            self.poll()
            runs = [(RunDir(p), RunDir(p).status()) for p in self._folders()]
            active = sum(1 for _, st in runs if st.get("state") == "running")
            queued = sorted(((r, st) for r, st in runs if st.get("state") == "queued" and r.config_path.exists()),
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
        if not isinstance(run_id, str) or not _RUN_ID_RE.match(run_id) or not (self.root / run_id).is_dir():
            raise JobError(f"run_id: no run {run_id!r} under {self.root}")
        return RunDir(self.root / run_id)

    def _lock(self):
        return file_lock(self.root / ".jobs.lock")

    def _view(self, run: RunDir, st: dict | None = None) -> dict:
        st = dict(st if st is not None else run.status())
        if st.get("state") == "running":
            st = self._check_alive(run, st)
        st["run_id"] = run.run_id
        st["path"] = str(run.path)
        if st.get("state") != "running":
            st["pid"] = None if st.get("state") in FINAL_STATES else st.get("pid")
        if st.get("state") in FINAL_STATES:  # a finished submitit handle is no longer needed (and its
            _SUBMITIT_JOBS.pop(run.run_id, None)  # __del__ fails noisily if kept to interpreter exit)
        start = st.get("launched_ts")
        if start:
            st["elapsed_s"] = (st.get("ended_ts") or time.time()) - start
        return st

    def _command(self, run: RunDir, module: str) -> list[str]:
        return [sys.executable, "-m", module, "--config", str(run.config_path.resolve()),
                "--run-dir", str(run.path.resolve())]

    def _launch(self, run: RunDir, st: dict) -> None:
        module = st.get("module") or get_kind(st.get("kind") or "train").module
        if self.launcher == "slurm":
            return self._launch_submitit(run, module)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(run.log_path, "ab") as log:
            proc = subprocess.Popen(self._command(run, module), cwd=str(REPO_ROOT), stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True)
        _CHILDREN[proc.pid] = proc
        run.update_status(state="running", pid=proc.pid, pgid=proc.pid, pid_start=proc_start_marker(proc.pid),
                          host=socket.gethostname(), launcher="local", launched=now_iso(),
                          launched_ts=time.time())

    def _executor(self):
        import submitit

        params = dict(self.slurm_params)
        kind = params.pop("executor", "auto")
        folder = Path(params.pop("folder", self.root / ".submitit"))
        if kind == "local":
            ex = submitit.LocalExecutor(folder=folder)
        elif kind == "slurm":
            ex = submitit.SlurmExecutor(folder=folder)
        else:
            ex = submitit.AutoExecutor(folder=folder)
        if params:
            ex.update_parameters(**params)
        return ex

    def _launch_submitit(self, run: RunDir, module: str) -> None:
        ex = self._executor()
        job = ex.submit(_run_cli, module, str(run.config_path.resolve()), str(run.path.resolve()),
                        str(REPO_ROOT))
        _SUBMITIT_JOBS[run.run_id] = job
        run.update_status(state="running", pid=None, launcher="slurm", job_id=str(job.job_id),
                          submitit_folder=str(Path(job.paths.folder).resolve()), launched=now_iso(),
                          launched_ts=time.time(), host=None)

    def _check_alive(self, run: RunDir, st: dict) -> dict:
        """A 'running' run whose process is gone and left no final state is persisted as failed."""
        if self._is_alive(run, st):
            return st
        time.sleep(0.05)  # the child may be writing its final status right now
        fresh = run.status()
        if fresh.get("state") != "running":
            return fresh
        pid = fresh.get("pid")
        tail = run.log_tail(30)
        who = f"process {pid}" if pid else f"job {fresh.get('job_id')}"
        return run.mark_final("failed", error=f"{who} exited without a final state. Log tail:\n{tail}",
                              ended_ts=time.time())

    def _is_alive(self, run: RunDir, st: dict) -> bool:
        if st.get("launcher") == "slurm":
            job = _SUBMITIT_JOBS.get(run.run_id)
            if job is not None:
                try:
                    return not job.done()
                except Exception:  # noqa: BLE001
                    return True
            # another manager (or a restart): trust the child's pid on this host, else ask Slurm
            if st.get("host") == socket.gethostname() and st.get("pid"):
                return pid_alive(st.get("pid"))
            if st.get("host") is None and not st.get("pid") and st.get("job_id"):
                try:
                    import submitit

                    state = submitit.SlurmJob(st["submitit_folder"], st["job_id"]).state
                except Exception:  # noqa: BLE001 - no Slurm here: cannot tell, keep it running
                    return True
                return state.upper() in ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "UNKNOWN",
                                         "COMPLETING", "SUSPENDED")
            return True
        if st.get("host") not in (None, socket.gethostname()):
            return True  # not ours to judge
        return pid_alive(st.get("pid"), st.get("pid_start"))

    def _terminate(self, run: RunDir, st: dict) -> None:
        deadline = time.time() + self.grace_s
        if st.get("launcher") == "slurm":
            job = _SUBMITIT_JOBS.get(run.run_id)
            pid = run.status().get("pid")  # the CLI child's pid, once it has started
            if pid and pid_alive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(pid), signal.SIGTERM)
            elif job is not None:
                with contextlib.suppress(Exception):
                    job.cancel(check=False)
            while time.time() < deadline and run.status().get("state") == "running":
                if job is not None and job.done():
                    break
                time.sleep(0.1)
            if run.status().get("state") == "running":
                if pid and pid_alive(pid):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(int(pid), signal.SIGKILL)
                if job is not None:
                    with contextlib.suppress(Exception):
                        job.cancel(check=False)
            return
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


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def default_root() -> Path:
    """checkpoints/ under the repo, or $PREFLENS_RUNS_DIR."""
    return Path(os.environ.get("PREFLENS_RUNS_DIR") or (REPO_ROOT / "checkpoints"))

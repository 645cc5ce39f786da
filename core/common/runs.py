"""The run directory contract (docs/architecture.md §2). Every job, training or persona simulation, writes here.

    <root>/<run_id>/
        config.json     the full validated config (enough to rerun)
        status.json     {"state", "pid", "host", "started", "ended", "progress", "error", "kind", ...}
        metrics.jsonl   append-only, one JSON object per evaluation (training) or result (personas)
        latents/        step-<N>.npz latent means of the probe set (training)
        log.txt         the process's stdout and stderr
        model.safetensors, train_state.pt   weights and resume state (training)

Writers replace JSON files atomically (write to a temp name, then rename). Status updates are
read-modify-write under a per-run file lock (``.status.lock``), since the app and the run's process
both make them. Readers tolerate a half-written last line of metrics.jsonl and a missing or
unreadable status. Run ids are generated here and never taken from user input.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import secrets
import socket
from pathlib import Path

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL_STATES = ("succeeded", "failed", "cancelled")


def new_run_id(prefix: str = "run") -> str:
    """Sortable by creation time, unique, safe as a folder name: ``run-20261126-201503-a1b2c3``."""
    safe = "".join(ch for ch in prefix.lower() if ch.isalnum() or ch == "-")[:24] or "run"
    return f"{safe}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def write_json_atomic(path: Path, obj) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


@contextlib.contextmanager
def file_lock(path: Path):
    """Hold an exclusive flock on ``path`` (created if missing) across processes and threads."""
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_json(path: Path, default=None):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """(records, number of lines skipped). A torn last line or a garbled line is skipped, not fatal."""
    records, skipped = [], 0
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError:
                    skipped += 1
                    continue
                if isinstance(obj, dict):
                    records.append(obj)
                else:
                    skipped += 1
    except OSError:
        pass
    return records, skipped


class RunDir:
    """One run's folder. Cheap to construct; every read goes to disk (other processes write)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def run_id(self) -> str:
        return self.path.name

    # -- files
    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def status_path(self) -> Path:
        return self.path / "status.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def log_path(self) -> Path:
        return self.path / "log.txt"

    @property
    def latents_dir(self) -> Path:
        return self.path / "latents"

    def create(self) -> RunDir:
        self.path.mkdir(parents=True, exist_ok=True)
        self.latents_dir.mkdir(exist_ok=True)
        return self

    # -- config
    def write_config(self, config: dict) -> None:
        write_json_atomic(self.config_path, config)

    def config(self) -> dict | None:
        return read_json(self.config_path)

    # -- status
    def status(self) -> dict:
        st = read_json(self.status_path, default=None)
        return st if isinstance(st, dict) else {}

    def update_status(self, *, if_state: tuple[str, ...] | None = None, **fields) -> dict:
        """Merge ``fields`` into status.json. The app and the run's own process both write here, so the
        read-modify-write holds an exclusive lock (``.status.lock``) and neither loses the other's field.
        With ``if_state``, write only while the state is one of those (a watcher's verdict never
        overwrites the final state the run wrote meanwhile); the status as it is on disk is returned."""
        with file_lock(self.path / ".status.lock"):
            st = self.status()
            if if_state is not None and st.get("state") not in if_state:
                return st
            st.update(fields)
            st.setdefault("run_id", self.run_id)
            write_json_atomic(self.status_path, st)
        return st

    def mark_running(self, **extra) -> dict:
        return self.update_status(state="running", pid=os.getpid(), host=socket.gethostname(),
                                  started=now_iso(), ended=None, error=None, **extra)

    def mark_final(self, state: str, error: str | None = None, *, if_state: tuple[str, ...] | None = None,
                   **extra) -> dict:
        if state not in FINAL_STATES:
            raise ValueError(f"final state must be one of {FINAL_STATES}, got {state!r}")
        return self.update_status(if_state=if_state, state=state, ended=now_iso(), error=error, **extra)

    def set_progress(self, done: int, total: int, **extra) -> None:
        self.update_status(progress={"done": int(done), "total": int(total),
                                     "fraction": (done / total) if total else 0.0}, **extra)

    # -- metrics
    def append_metrics(self, record: dict) -> None:
        line = json.dumps(record, default=float)
        with open(self.metrics_path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def metrics(self) -> tuple[list[dict], int]:
        return read_jsonl(self.metrics_path)

    def log_tail(self, n_lines: int = 30) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - 16384))
                data = fh.read().decode("utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(data.splitlines()[-n_lines:])

    def log(self, message: str) -> None:
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(message.rstrip("\n") + "\n")

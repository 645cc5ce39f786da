"""Finding, reading and launching persona runs (used by the page; no streamlit here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from core.common import REPO_ROOT
from core.common.runs import RunDir, new_run_id, read_json, read_jsonl
from core.personas.config import validate_config
from core.personas.simulate import RESULTS_FILE

ENV_ROOTS = ("PREFLENS_RUNS_DIR", "PREFLENS_CHECKPOINTS")


def checkpoints_root() -> Path:
    """The runs folder: $PREFLENS_RUNS_DIR (the job system's), else core.jobs.manager' default, else checkpoints/."""
    for name in ENV_ROOTS:
        if os.environ.get(name):
            return Path(os.environ[name])
    try:
        from core.jobs.manager import default_root
    except ImportError:
        return Path("checkpoints")
    return default_root()


def _manager(root):
    try:
        from core.jobs.manager import JobManager  # the project's job system
    except ImportError:
        return None
    return JobManager(root)


def refresh(root: str | Path) -> None:
    """Let the job system start queued runs and mark dead ones failed (no-op without core.jobs.manager)."""
    mgr = _manager(root) if Path(root).is_dir() else None
    if mgr is not None:
        mgr.schedule()


def list_persona_runs(root: str | Path) -> list[dict]:
    """Newest first: {run_id, path, mode, judge, state, done, total}."""
    out = []
    root = Path(root)
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir(), reverse=True):
        cfg = read_json(d / "config.json") if d.is_dir() else None
        if not isinstance(cfg, dict) or cfg.get("kind") != "personas":
            continue
        st = RunDir(d).status()
        prog = st.get("progress") or {}
        out.append({"run_id": d.name, "path": str(d), "mode": cfg.get("mode"), "judge": cfg.get("judge"),
                    "state": st.get("state", "queued"), "done": prog.get("done", 0), "total": prog.get("total", 0)})
    return out


def load_run(path: str | Path) -> dict:
    run = RunDir(path)
    records, torn = read_jsonl(run.path / RESULTS_FILE)
    return {"config": run.config() or {}, "status": run.status(), "records": records, "torn_lines": torn,
            "quality": read_json(run.path / "quality.json"), "log": run.log_tail(15)}


def launch(config: dict, root: str | Path) -> str:
    """Validate, then start a run as a background job; returns the run id.

    Uses core.jobs.manager when present; otherwise starts ``python -m core.personas`` detached itself.
    """
    cfg = validate_config({**config, "kind": "personas"}).model_dump()
    mgr = _manager(root)
    if mgr is not None:
        job = mgr.submit(cfg)
        return getattr(job, "run_id", None) or str(job)
    run_id = new_run_id("personas")
    run = RunDir(Path(root) / run_id).create()
    run.write_config(cfg)
    run.update_status(state="queued", kind="personas")
    with open(run.log_path, "a") as log:
        subprocess.Popen([sys.executable, "-m", "core.personas", "--config", str(run.config_path), "--run-dir",
                          str(run.path)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                         cwd=REPO_ROOT)
    return run_id


def cancel(path: str | Path) -> bool:
    """Cancel through the job system; without it, SIGTERM the run's process (it marks itself cancelled)."""
    import signal

    path = Path(path)
    mgr = _manager(path.parent)
    if mgr is not None:
        return mgr.cancel(path.name).get("state") == "cancelled"
    st = RunDir(path).status()
    pid = st.get("pid")
    if st.get("state") != "running" or not pid:
        return False
    try:
        os.kill(int(pid), signal.SIGTERM)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def list_humans_outputs(root: str | Path) -> list[dict]:
    """Output folders of ``python -m core.personas.humans`` directly under ``root`` or under
    ``root/humans/``, newest first: {name (relative to root), path, users, groups, created}."""
    root = Path(root)
    out = []
    for base in (root, root / "humans"):
        if not base.is_dir():
            continue
        for d in base.iterdir():
            s = read_json(d / "summary.json") if d.is_dir() else None
            if isinstance(s, dict) and s.get("kind") == "humans":
                out.append({"name": d.relative_to(root).as_posix(), "path": str(d), "users": s.get("users"),
                            "groups": s.get("groups"), "created": str(s.get("created") or "")})
    return sorted(out, key=lambda o: (o["created"], o["name"]), reverse=True)


def persona_group_stats(records: list[dict], permutations: int = 1000, seed: int = 0) -> dict | None:
    """The humans' group test on a persona run: cosine similarity of the users' choices, grouped by
    their stories' groups (the same within/between means and permutation p-value); None below 2 users."""
    from core.personas import analysis
    from core.personas.humans import group_test

    df = analysis.results_frame(records)
    if df.empty:
        return None
    mat, users, _ = analysis.preference_matrix(df)
    if len(users) < 2:
        return None
    info = df.drop_duplicates("user").set_index("user").loc[users]
    groups = [g or o for g, o in zip(info["group"], info["occupation"], strict=True)]
    return {"users": len(users), "groups": len(set(groups)),
            **group_test(analysis.cosine_similarity(mat), groups, permutations, seed)}

"""The command lines end an expected error (bad input, a full or unwritable cache, a missing file) with one
``error: <message>`` line on stderr and exit status 2, never a Python traceback (issue 32).

Each test runs the real CLI as a child process, on input that fails before any training. A full disk is
played by a child whose ``shutil.disk_usage`` reports 0 bytes free: the embedding cache's own check
(core.models.embedding_store.EmbeddingCache._check_room) then raises CacheFullError before encoding anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# run a module as `python -m MODULE ARGS...` with a disk that has no room left
FULL_DISK = (
    "import runpy, shutil, sys, types\n"
    "shutil.disk_usage = lambda path: types.SimpleNamespace(total=10**9, used=10**9, free=0)\n"
    "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)\n"
)
DRY = ["--dry-run"]


def run_cli(module: str, *args: str, full_disk: bool = False, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    head = [sys.executable, "-c", FULL_DISK, module] if full_disk else [sys.executable, "-m", module]
    return subprocess.run([*head, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def clean_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Assert exit status 2, no traceback anywhere, and one ``error:`` line holding every needle; returns it."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, (proc.returncode, out[-3000:])
    assert "Traceback" not in out, out[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert all(n in errors[0] for n in needles), (needles, errors[0])
    return errors[0]


def write_json(path: Path, data) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def not_a_folder(tmp_path: Path) -> str:
    """A cache folder that cannot be created: its parent is a plain file."""
    (tmp_path / "a-file").write_text("not a folder")
    return str(tmp_path / "a-file" / "cache")


# ------------------------------------------------------------------------------------------- core.train
def test_train_bad_config_field_and_missing_config_file(tmp_path):
    cfg = write_json(tmp_path / "c.json", {"preset": "vpl", "stepz": 10})
    clean_error(run_cli("core.train", "--config", cfg, "--run-dir", str(tmp_path / "run")), "stepz")
    missing = str(tmp_path / "nowhere.json")
    clean_error(run_cli("core.train", "--config", missing, "--run-dir", str(tmp_path / "run2")), missing)


@pytest.mark.parametrize("how", ["run", "warm-cache"])
def test_train_on_a_full_cache_disk_says_so_in_one_line(tmp_path, how):
    cache = tmp_path / "cache"
    cfg = write_json(tmp_path / "c.json", {"preset": "traditional", "cache_dir": str(cache)})
    where = ["--run-dir", str(tmp_path / "run")] if how == "run" else ["--warm-cache"]
    line = clean_error(run_cli("core.train", "--config", cfg, *where, *DRY, full_disk=True),
                       "embedding cache", str(cache), "full disk", "nothing was encoded")
    assert "PREFLENS_CACHE" in line
    if how == "run":  # the run directory still records the failure, with the same message and its traceback
        status = json.loads((tmp_path / "run" / "status.json").read_text())
        assert status["state"] == "failed"
        assert status["error"].startswith("CacheFullError: embedding cache") and "Traceback" in status["error"]


def test_train_on_a_cache_folder_that_cannot_be_created(tmp_path):
    cache = not_a_folder(tmp_path)
    cfg = write_json(tmp_path / "c.json", {"preset": "traditional", "cache_dir": cache})
    clean_error(run_cli("core.train", "--config", cfg, "--run-dir", str(tmp_path / "run"), *DRY), cache)
    assert json.loads((tmp_path / "run" / "status.json").read_text())["state"] == "failed"


# ------------------------------------------------------------------------------------------ core.gridjob
def test_gridjob_bad_grid_config_names_the_member_and_field(tmp_path):
    cfg = write_json(tmp_path / "g.json", {"methods": ["traditional"], "seeds": [0], "overrides": {"stepz": 3}})
    clean_error(run_cli("core.gridjob", "--config", cfg, "--run-dir", str(tmp_path / "grid")),
                "traditional-s0", "stepz")
    cfg = write_json(tmp_path / "list.json", ["traditional"])
    clean_error(run_cli("core.gridjob", "--config", cfg, "--run-dir", str(tmp_path / "grid")), "JSON object")
    assert not (tmp_path / "grid").exists()  # nothing started


def test_gridjob_on_an_unwritable_cache_marks_the_grid_failed(tmp_path):
    cache = not_a_folder(tmp_path)
    cfg = write_json(tmp_path / "g.json", {"methods": ["traditional"], "seeds": [0], "overrides": {"cache_dir": cache}})
    clean_error(run_cli("core.gridjob", "--config", cfg, "--run-dir", str(tmp_path / "grid"), *DRY), cache)
    for status in (tmp_path / "grid" / "status.json", tmp_path / "grid" / "runs" / "traditional-s0" / "status.json"):
        assert json.loads(status.read_text())["state"] == "failed", status


# --------------------------------------------------------------------------------------- core.experiments
def test_compare_bad_users_file_names_the_user_and_aspect(tmp_path):
    users = write_json(tmp_path / "users.json", [[1, 0, 0, 0], [0, -1, 0, 0]])
    clean_error(run_cli("core.experiments", "compare", "--presets", "vpl", "--seeds", "0", "--out",
                        str(tmp_path / "o"), "--users", users, *DRY), "--users", users, "'honesty' is negative")
    assert not (tmp_path / "o").exists()


def test_compare_on_a_full_cache_disk_says_so_in_one_line(tmp_path):
    cache = tmp_path / "cache"
    clean_error(run_cli("core.experiments", "compare", "--presets", "traditional", "--seeds", "0", "--out",
                        str(tmp_path / "o"), "--set", f"cache_dir={cache}", *DRY, full_disk=True),
                "embedding cache", str(cache), "full disk")
    assert json.loads((tmp_path / "o" / "status.json").read_text())["state"] == "failed"


# ------------------------------------------------------------------------------------ the lighter CLIs
def test_corpus_personas_and_study_name_what_they_cannot_read_or_write(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    out = str(tmp_path / "a-file" / "corpus.jsonl")
    clean_error(run_cli("core.data.corpus", "--out", out, "--n-prompts", "20"), "a-file")

    stories = str(tmp_path / "no-stories.json")
    clean_error(run_cli("core.personas", "--stories", stories, "--run-dir", str(tmp_path / "p"), *DRY),
                stories, "cannot read story file")
    assert json.loads((tmp_path / "p" / "status.json").read_text())["state"] == "failed"

    cfg = str(tmp_path / "no-study.json")
    clean_error(run_cli("core.study", "--config", cfg, "--run-dir", str(tmp_path / "s")), cfg)
    assert json.loads((tmp_path / "s" / "status.json").read_text())["state"] == "failed"

"""The OpenAI-compatible judge against a real server process on 127.0.0.1 (core.personas.serve on the
bundled GGUF), driven through the CLI: a run cancelled by SIGTERM resumes without rescoring, and the
API key never reaches disk."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from core.personas.openai_judge import JudgeRequestError, OpenAIJudge

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-test-" + "7f3a9c" * 4


@pytest.fixture(scope="module")
def server():
    env = {**os.environ, "PREFLENS_SERVE_API_KEY": KEY, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "core.personas.serve", "--port", "0", "--host", "127.0.0.1"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url, deadline = None, time.time() + 180
    while time.time() < deadline and url is None:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            if line.startswith("serving"):
                url = line.split(" on ")[1].strip()
        if proc.poll() is not None:
            break
    if url is None:
        proc.kill()
        pytest.fail("the judge server did not start")
    assert url.startswith("http://127.0.0.1:")
    yield url
    proc.terminate()
    proc.wait(timeout=20)


def test_server_speaks_openai_and_checks_the_key(server):
    req = urllib.request.Request(server + "/models", headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert json.loads(r.read())["data"][0]["id"].startswith("bundled:")
    judge = OpenAIJudge(model="bundled", base_url=server, api_key=KEY, concurrency=2)
    out = judge.generate("You are a terse assistant.", ["Say hello.", "Name a colour."], max_new_tokens=5)
    assert len(out) == 2 and all(isinstance(t, str) and t for t in out)
    assert KEY not in repr(judge)
    bad = OpenAIJudge(base_url=server, api_key="wrong", retries=0)
    with pytest.raises(JudgeRequestError, match="HTTP 401"):
        bad.generate("s", ["u"], 2)


def test_unreachable_endpoint_retries_then_fails_cleanly():
    judge = OpenAIJudge(base_url="http://127.0.0.1:9/v1", retries=2, backoff=0.01, timeout=1)
    t0 = time.time()
    with pytest.raises(JudgeRequestError, match="gave up after 3 tries"):
        judge.generate("s", ["u"], 2)
    assert time.time() - t0 < 10


def _cli(run_dir, env, *extra):
    return [sys.executable, "-m", "core.personas", "--run-dir", str(run_dir), "--judge", "openai:bundled",
            "--mode", "pairwise", "--n-questions", "3", "--n-stories", "2", "--seed", "4",
            "--max-new-tokens", "4", "--batch-size", "1", "--quality-probe", "0", *extra]


def test_cli_run_cancelled_by_sigterm_resumes_without_rescoring(server, tmp_path):
    env = {**os.environ, "PREFLENS_JUDGE_BASE_URL": server, "PREFLENS_JUDGE_API_KEY": KEY}
    run = tmp_path / "run"
    proc = subprocess.Popen(_cli(run, env), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    results = run / "results.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (results.exists() and results.read_text().count("\n") >= 1):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "cancelled", status
    first = results.read_text().splitlines()
    assert 1 <= len(first) < 6
    subprocess.run(_cli(run, env), cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "succeeded" and status["progress"]["done"] == 6
    assert status["counts"]["skipped_existing"] == len(first)
    lines = results.read_text().splitlines()
    assert lines[:len(first)] == first and len(lines) == 6
    assert len({json.loads(x)["key"] for x in lines}) == 6
    for f in run.rglob("*"):
        if f.is_dir():
            continue
        assert KEY not in f.read_text(errors="ignore"), f.name
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["kind"] == "personas" and cfg["judge"] == "openai:bundled" and cfg["mode"] == "pairwise"


def test_cli_bad_config_fails_naming_the_field(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"kind": "personas", "mode": "ranking", "n_questions": 0}))
    r = subprocess.run([sys.executable, "-m", "core.personas", "--config", str(cfg), "--run-dir", str(tmp_path / "r")],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    status = json.loads((tmp_path / "r" / "status.json").read_text())
    assert status["state"] == "failed"
    assert "mode" in status["error"] and "n_questions" in status["error"]

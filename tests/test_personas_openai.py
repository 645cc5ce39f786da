"""The OpenAI-compatible judge against real server processes on 127.0.0.1 (core.personas.serve on the
bundled GGUF, one with logprobs and one started with --no-logprobs), driven directly and through the
CLI: grades and A/B probabilities read from logprobs equal the local judge's, the text fallback is used
and recorded when a server sends none, a run cancelled by SIGTERM resumes without rescoring, and the
API key never reaches disk or logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from core.data import generate_table
from core.personas import default_stories, prompts
from core.personas.judges import RATINGS, rating_plan
from core.personas.openai_judge import JudgeRequestError, OpenAIJudge
from core.personas.simulate import pick_questions
from tests.conftest import CORES

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-test-" + "7f3a9c" * 4


def _start_server(log_path: Path, *extra):
    """A server process with the API key in its environment; its stdout and stderr go to ``log_path``."""
    env = {**os.environ, "PREFLENS_SERVE_API_KEY": KEY, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "core.personas.serve", "--port", "0", "--host", "127.0.0.1", *extra],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    url, deadline = None, time.time() + 180
    while time.time() < deadline and url is None and proc.poll() is None:
        for line in log_path.read_text().splitlines():
            if line.startswith("serving"):
                url = line.split(" on ")[1].strip()
        time.sleep(0.3)
    if url is None:
        proc.kill()
        log.close()
        pytest.fail("the judge server did not start: " + log_path.read_text()[-2000:])
    assert url.startswith("http://127.0.0.1:")
    return proc, log, url


@pytest.fixture(scope="module")
def server_logs(tmp_path_factory):
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture(scope="module")
def server(server_logs):
    # every core (the server's default is one thread, for a busy machine): here it computes while the client
    # waits, and nothing else runs except in the test that starts two runs at once
    proc, log, url = _start_server(server_logs / "with-logprobs.log", "--threads", str(CORES))
    yield url
    proc.terminate()
    proc.wait(timeout=20)
    log.close()


@pytest.fixture(scope="module")
def plain_server(server_logs):
    proc, log, url = _start_server(server_logs / "no-logprobs.log", "--no-logprobs")
    yield url
    proc.terminate()
    proc.wait(timeout=20)
    log.close()


@pytest.fixture
def local(smollm2_judge):
    """The in-process judge the endpoint is compared with: the session's (tests/conftest.py), loaded once."""
    return smollm2_judge


def _post(url, payload):
    req = urllib.request.Request(url + "/chat/completions", data=json.dumps(payload).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


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


def test_logprobs_come_back_in_openai_shape_or_not_at_all(server, plain_server):
    msgs = [{"role": "system", "content": "You answer with one letter."},
            {"role": "user", "content": "Which comes first in the alphabet, A or B? Answer [[A]] or [[B]]."},
            {"role": "assistant", "content": "[["}]
    ask = {"model": "bundled", "messages": msgs, "max_tokens": 3, "temperature": 0, "logprobs": True, "top_logprobs": 5}
    choice = _post(server, ask)["choices"][0]
    content = choice["logprobs"]["content"]
    assert 1 <= len(content) <= 3 and choice["finish_reason"] in ("stop", "length")
    assert "".join(e["token"] for e in content) == choice["message"]["content"]  # the prefill is not repeated
    assert not choice["message"]["content"].startswith("[[")
    for e in content:
        assert e["logprob"] <= 0 and e["bytes"] == list(e["token"].encode())
        top = [t["logprob"] for t in e["top_logprobs"]]
        assert len(top) == 5 and top == sorted(top, reverse=True)
        assert e["logprob"] == pytest.approx(top[0], abs=1e-6)  # greedy: the chosen token is the likeliest
        assert sum(np.exp(top)) <= 1 + 1e-6
    bare = _post(plain_server, ask)["choices"][0]
    assert bare["logprobs"] is None and bare["message"]["content"] == choice["message"]["content"]
    with pytest.raises(urllib.error.HTTPError) as err:
        _post(server, {**ask, "top_logprobs": 21})
    assert err.value.code == 400


# Prompts on which the bundled model puts every grade token among its 20 likeliest (ranks 0..5, checked
# below): there the listed logprobs hold all the grades, and both paths must agree closely.
PRIMED = [
    ("You grade replies on a scale from -2 (very poor) to 2 (excellent). Negative grades are common.",
     "REQUEST:\nWhat is the capital of France?\n\nREPLY:\nThe capital of France is Berlin, a city in Spain.\n\n"
     "Earlier grades for similar replies: -2, -1, -2, 0, -1, 1, -2.", "Grade:"),
    ("You grade replies on a scale from -2 to 2.",
     "Grades: -2 means wrong, -1 mostly wrong, 0 unsure, 1 mostly right, 2 right.\nREPLY: 2 + 2 = 5.\n"
     "Give the grade.", "Grade:"),
]


def _all_listed(local, prefix, suffix, cue) -> bool:
    """Whether the local model ranks every token of every grade (after the cue) within its top 20."""
    ((stem, tails),) = rating_plan(local.tokenizer, [cue])
    conts = [(stem + tail[:k], t) for tail in tails for k, t in enumerate(tail)]
    dists = local.next_token_logprobs(prefix, suffix, [c for c, _ in conts])
    return all(int((dists[n] > dists[n, t]).sum()) < 20 for n, (_, t) in enumerate(conts))


def test_endpoint_logprobs_give_the_local_judges_grades_and_ab(server, local):
    judge = OpenAIJudge(model="bundled", base_url=server, api_key=KEY, concurrency=2)
    for prefix, suffix, cue in PRIMED:
        assert _all_listed(local, prefix, suffix, cue)
        got, want = judge.rating_probs(prefix, [suffix], [cue]), local.rating_probs(prefix, [suffix], [cue])
        assert got.source == "logprobs" and want.source == "logits" and judge.probs_status() == "logprobs"
        np.testing.assert_allclose(got.expected, want.expected, atol=2e-3)
        np.testing.assert_allclose(got.probs, want.probs, atol=1e-3)
        np.testing.assert_allclose(got.mass, want.mass, rtol=2e-3)
        assert want.probs[0, 0, :2].sum() > 0.1  # negative grades carry real weight: their two-token path is read
    # On the real scoring prompt this weak rater ranks " -" below its 20 likeliest tokens: the endpoint then
    # sees no negative grade (counted 0), so its grade mass can only be lower than the full distribution's.
    story = default_stories()[3]
    q = pick_questions(generate_table(40, seed=3), 2, seed=3)
    prefix, suffix = prompts.scoring_prefix(story), prompts.scoring_suffix(q[0].prompt, q[0].first)
    cues = [prompts.logit_cue(d) for d in prompts.DIMENSIONS]
    got, want = judge.rating_probs(prefix, [suffix], cues), local.rating_probs(prefix, [suffix], cues)
    assert np.all(got.mass <= want.mass + 1e-4) and np.all(got.mass > 0.5 * want.mass)
    assert got.probs.shape == (1, 4, len(RATINGS))
    pp = prompts.pairwise_prefix(story)
    sufs = [prompts.pairwise_suffix(x.prompt, x.first, x.second) for x in q]
    got_ab = judge.choice_probs(pp, sufs, prefill=prompts.PAIRWISE_PREFILL)
    want_ab = local.choice_probs(pp, sufs, prefill=prompts.PAIRWISE_PREFILL)
    np.testing.assert_allclose(got_ab.probs, want_ab.probs, atol=2e-3)
    np.testing.assert_allclose(got_ab.mass, want_ab.mass, rtol=2e-3)


def test_without_logprobs_the_judge_says_so_and_asks_once(plain_server):
    judge = OpenAIJudge(model="bundled", base_url=plain_server, api_key=KEY)
    prefix, suffix = "You grade replies.", "REQUEST:\nSay hi.\n\nREPLY:\nHi."
    assert judge.rating_probs(prefix, [suffix, suffix], [prompts.logit_cue("truthfulness")]) is None
    assert judge.choice_probs(prefix, [suffix], prefill="[[") is None
    assert judge.probs_status() == "the server returned no logprobs"
    assert judge.requests == {"text": 0, "logprobs": 1}  # learnt from the first reply, asked no more


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


def _scoring_cli(run_dir):
    # one story x one question: an item read through logprobs takes a request per grade path, and one item
    # is enough to show which path a run took
    return [sys.executable, "-m", "core.personas", "--run-dir", str(run_dir), "--judge", "openai:bundled",
            "--mode", "scoring", "--scoring-method", "logits", "--n-questions", "1", "--n-stories", "1",
            "--seed", "4", "--max-new-tokens", "4", "--batch-size", "2", "--quality-probe", "0"]


def test_cli_reads_logprobs_or_falls_back_and_records_which(server, plain_server, server_logs, tmp_path):
    outputs = []
    # the two runs at once, one against each server (each mostly waits for its server's answers)
    procs = {}
    for url, expected in ((server, "logprobs"), (plain_server, "text")):
        env = {**os.environ, "PREFLENS_JUDGE_BASE_URL": url, "PREFLENS_JUDGE_API_KEY": KEY}
        procs[expected] = subprocess.Popen(_scoring_cli(tmp_path / expected), cwd=ROOT, env=env, text=True,
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        answered = {expected: proc.communicate(timeout=400) for expected, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    for expected, proc in procs.items():
        run = tmp_path / expected
        stdout, stderr = answered[expected]
        outputs += [stdout, stderr]
        assert proc.returncode == 0, stderr[-2000:]
        status = json.loads((run / "status.json").read_text())
        assert status["state"] == "succeeded" and status["counts"]["read_from"] == {expected: 1}
        recs = [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines()]
        assert len(recs) == 1 and all(rec["read_from"] == expected for rec in recs)
        if expected == "logprobs":
            assert all(len(rec["logit_scores"]) == 2 and "raw" not in rec for rec in recs)
        else:  # the fallback generated text and parsed it
            assert all("logit_scores" not in rec and len(rec["raw"]) == 2 for rec in recs)
        log = (run / "log.txt").read_text()
        assert ("endpoint probabilities: logprobs" if expected == "logprobs" else "returned no logprobs") in log
    # the key was in both the client's and the servers' environment: it must be nowhere on disk or in output
    for f in [*tmp_path.rglob("*"), *server_logs.rglob("*")]:
        if f.is_file():
            assert KEY not in f.read_text(errors="ignore"), f.name
    assert all(KEY not in text for text in outputs)
    assert "serving" in (server_logs / "no-logprobs.log").read_text()


def test_cli_bad_config_fails_naming_the_field(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"kind": "personas", "mode": "ranking", "n_questions": 0}))
    r = subprocess.run([sys.executable, "-m", "core.personas", "--config", str(cfg), "--run-dir", str(tmp_path / "r")],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    status = json.loads((tmp_path / "r" / "status.json").read_text())
    assert status["state"] == "failed"
    assert "mode" in status["error"] and "n_questions" in status["error"]

"""Progress of long work: plain lines and status.json from core.common.progress, and the CLIs under a real
terminal (a pseudo-TTY) and a pipe."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from core.common.progress import Progress

ROOT = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_plain_lines_come_every_ten_seconds_or_ten_percent_and_status_is_throttled_with_rate_and_eta():
    clock, stream, writes = Clock(), io.StringIO(), []
    prog = Progress(1000, unit="steps", stage="training", stream=stream, clock=clock,
                    status=lambda snap, **extra: writes.append((snap, extra)))
    assert prog.mode == "lines"  # a StringIO is not a terminal
    for i in range(60):  # 0.5 s an item: the 10 s rule fires every 20 items (2%), long before 10%
        clock.t += 0.5
        prog.update(1, train_loss=float(i))
    lines = stream.getvalue().splitlines()
    assert lines == ["[progress] training: 20/1000 steps (2%), 2 steps/s, ETA 8m10s",
                     "[progress] training: 40/1000 steps (4%), 2 steps/s, ETA 8m00s",
                     "[progress] training: 60/1000 steps (6%), 2 steps/s, ETA 7m50s"]
    # status: the first update at once, then at most once a second; extra fields ride along
    assert len(writes) == 30 and writes[0][0]["done"] == 1 and writes[1][0]["done"] == 3
    snap, extra = writes[-1]
    assert snap == {"done": 59, "total": 1000, "fraction": 0.059, "unit": "steps", "rate": 2.0,
                    "eta_s": 470.5, "stage": "training"}
    assert extra == {"train_loss": 58.0}
    for _ in range(4):  # fast items: now the 10% rule fires (at 100 done) before 10 s pass
        clock.t += 0.01
        prog.update(10)
    assert stream.getvalue().splitlines()[-1].startswith("[progress] training: 100/1000 steps (10%)")
    final = prog.close()
    assert final["done"] == 100 and writes[-1][0] == final and prog.close() == final


def test_a_resumed_task_counts_its_rate_from_where_it_resumed_and_new_stages_restart_the_count():
    clock, writes = Clock(), []
    prog = Progress(None, unit="items", stage="personas", stream=io.StringIO(), clock=clock,
                    status=lambda snap: writes.append(snap))
    hook = prog.resume_hook()
    hook(40, 50)  # 40 items were done before this process started
    assert (prog.done, prog.total, prog.rate, prog.eta_s) == (40, 50, None, None)
    clock.t += 5.0
    hook(45, 50)
    assert prog.rate == 1.0 and prog.eta_s == 5.0  # 5 items in 5 s, not 45
    prog.new_stage("train", 200, unit="steps")
    assert prog.snapshot() == {"done": 0, "total": 200, "fraction": 0.0, "unit": "steps", "rate": None,
                               "eta_s": None, "stage": "train"}
    assert writes[-1]["stage"] == "train"


def test_show_false_writes_status_only():
    stream = io.StringIO()
    writes = []
    with Progress(3, stream=stream, show=False, status=writes.append, clock=Clock()) as prog:
        for _ in range(3):
            prog.update()
    assert stream.getvalue() == "" and writes[-1]["done"] == 3 and writes[-1]["fraction"] == 1.0


def _compare_command(out: Path) -> list[str]:
    # a tiny comparison: one trained method, 60 steps on the 400-question corpus the session has embedded
    return [sys.executable, "-m", "core.experiments", "compare", "--presets", "traditional", "--seeds", "0",
            "--out", str(out), "--set", "corpus_prompts=400", "steps=60", "eval_every=30"]


def _env(cache_root: str) -> dict:
    return {**os.environ, "PREFLENS_CACHE": cache_root, "PYTHONPATH": str(ROOT), "COLUMNS": "120"}


@pytest.mark.slow
def test_compare_on_a_terminal_draws_a_bar_that_advances(tmp_path, cache_root, small_corpus_embeddings):
    import fcntl
    import pty
    import select
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    proc = subprocess.Popen(_compare_command(tmp_path / "cmp"), stdin=slave, stdout=slave, stderr=slave,
                            cwd=ROOT, env=_env(cache_root), close_fds=True)
    os.close(slave)
    buf = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                buf += chunk
            elif proc.poll() is not None:
                break
        assert proc.wait(timeout=120) == 0, buf.decode(errors="replace")[-3000:]
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    text = buf.decode(errors="replace")
    assert "\r" in text  # a bar redrawn in place, not lines
    # tqdm frames: "train traditional-s0:  50%|#####     | 30/60 [00:01<00:01, 25.3 steps/s]", or below one step a
    # second "... | 1/60 [00:04<04:41, 4.77s/ steps]" (the first step holds the set-up; the other 59 now take
    # about 0.1 s, so that frame and the last may be all a fast machine draws)
    frames = re.findall(r"train traditional-s0:\s+(\d+)%\|[^|]*\|\s*(\d+)/60 \[[0-9:]+<([0-9:?]+), +"
                        r"([0-9.?]+) ?(?:steps/s|s/ ?steps)", text)
    assert len({done for _, done, _, _ in frames}) >= 2, text[-2000:]
    assert frames[-1][:2] == ("100", "60")
    assert "[progress]" not in text  # no plain lines on a terminal


@pytest.mark.slow
def test_compare_off_a_terminal_prints_plain_lines_and_writes_progress_to_status(tmp_path, cache_root,
                                                                                small_corpus_embeddings):
    out = tmp_path / "cmp"
    proc = subprocess.run(_compare_command(out), cwd=ROOT, env=_env(cache_root), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=300)
    text = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    assert "\r" not in text
    done = [int(m) for m in re.findall(r"^\[progress\] train traditional-s0: (\d+)/60 steps \(\d+%\), "
                                       r"[0-9.e+-]+ steps/s, ETA \S+$", text, flags=re.M)]
    assert len(set(done)) >= 2 and done == sorted(done) and done[-1] == 60, text[-2000:]
    # the same progress for the app: the run's status.json and the comparison's own
    run = json.loads((out / "runs" / "traditional-s0" / "status.json").read_text())
    assert run["state"] == "succeeded" and run["progress"]["done"] == 60 and run["progress"]["fraction"] == 1.0
    assert run["progress"]["unit"] == "steps" and run["progress"]["rate"] > 0 and run["progress"]["stage"] == "training"
    cmp = json.loads((out / "status.json").read_text())
    assert cmp["kind"] == "compare" and cmp["state"] == "succeeded" and cmp["progress"]["done"] == 60
    assert cmp["progress"]["stage"] == "train traditional-s0" and cmp["progress"]["eta_s"] == 0.0

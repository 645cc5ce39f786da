"""One run across ranks (core.training.distributed): real torchrun and srun launches, gloo on the CPU.

Each launch here is a real process group of 2 ranks; the one-process run they are held to is trained by the same
command line without torchrun.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.common.runs import RunDir

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = str(Path(sys.executable).parent / "torchrun")
# personal on four one-hot users (the suite's 400 questions, cached), evaluated at the half and the end
PERSONAL = {"preset": "personal", "users": "four-one-hot", "corpus_prompts": 400, "steps": 60, "eval_every": 30,
            "early_stop_patience": 0}

# LoRA on SmolLM2, as small as a run gets: 60 questions, 16 tokens, 2 steps of 2 x 4 pairs
LORA = {"preset": "personal", "corpus_prompts": 60, "max_train_per_user": 8, "max_test_per_user": 4, "pool_size": 8,
        "n_demos": 2, "encoder": "bundled-smollm2", "query_encoder": "lora", "max_length": 16, "batch_size": 4,
        "grad_accum": 2, "steps": 2, "eval_every": 2, "probe_per_user": 2, "lr": 1e-3, "warmup_ratio": 0.0,
        "segment_pool": False, "early_stop_patience": 0, "device": "cpu"}


def _env(cache_root: str, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    return {**env, "PREFLENS_CACHE": cache_root, "HF_HUB_OFFLINE": "1", "PREFLENS_DIST_TIMEOUT_S": "60", **extra}


def train_cmd(cfg_file: Path, run_dir: Path, ranks: int, *extra: str) -> list[str]:
    args = ["-m", "core.train", "--config", str(cfg_file), "--run-dir", str(run_dir), *extra]
    if ranks == 1:
        return [sys.executable, *args]
    return [TORCHRUN, "--standalone", f"--nproc_per_node={ranks}", *args]


def launch(cfg: dict, run_dir: Path, ranks: int, cache_root: str, *extra: str, timeout: float = 240):
    cfg_file = run_dir.parent / f"{run_dir.name}.json"
    cfg_file.write_text(json.dumps({**cfg, "cache_dir": cache_root}))
    return subprocess.run(train_cmd(cfg_file, run_dir, ranks, *extra), cwd=ROOT, env=_env(cache_root),
                          capture_output=True, text=True, timeout=timeout)


def last(run_dir: Path) -> dict:
    return RunDir(run_dir).metrics()[0][-1]


def in_process(cfg: dict, run_dir: Path, cache_root: str) -> Path:
    """The one-process run, trained in the test's own process (what `python -m core.train` calls; no WORLD_SIZE)."""
    from core.training.config import build_config
    from core.training.launch import train

    assert "WORLD_SIZE" not in os.environ
    train(build_config({**cfg, "cache_dir": cache_root}), run_dir, log=lambda m: None)
    return run_dir


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, cache_root, small_corpus_embeddings) -> Path:
    return in_process(PERSONAL, tmp_path_factory.mktemp("ddp") / "one", cache_root)


def test_two_ranks_train_the_run_one_process_trains(one_process, tmp_path, cache_root):
    run = tmp_path / "two"
    proc = launch(PERSONAL, run, 2, cache_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    st = RunDir(run).status()
    assert st["state"] == "succeeded" and st["ranks"] == {"world": 2, "device": "cpu", "backend": "gloo"}, st
    ref, got = RunDir(one_process).metrics()[0], RunDir(run).metrics()[0]
    assert [r["step"] for r in got] == [r["step"] for r in ref] == [0, 30, 60]  # written once, by rank 0
    assert got[-1]["accuracy"] == pytest.approx(ref[-1]["accuracy"], abs=0.01)
    assert got[-1]["new_users_accuracy"] == pytest.approx(ref[-1]["new_users_accuracy"], abs=0.01)
    assert got[-1]["accuracy"] > 0.8  # and it learned: chance is 0.5
    assert proc.stdout.count("step    60") == 1  # one log: the other rank keeps quiet


@pytest.mark.slow
def test_a_lora_run_on_two_ranks_synchronizes_its_adapters(tmp_path, cache_root):
    """A tiny LoRA run on SmolLM2: the adapters and heads are what DDP averages; the result is the one-process
    run's, and the saved adapters are trained (LoRA's B starts at zero)."""
    from safetensors.torch import load_file

    ends = {}
    for ranks in (1, 2):
        run = tmp_path / f"lora-{ranks}"
        if ranks == 1:
            in_process(LORA, run, cache_root)
        else:
            proc = launch(LORA, run, ranks, cache_root)
            assert proc.returncode == 0, proc.stderr[-3000:]
        assert RunDir(run).status()["state"] == "succeeded"
        assert [r["step"] for r in RunDir(run).metrics()[0]] == [0, 2]
        ends[ranks] = last(run)
        w = load_file(str(run / "model.safetensors"))
        assert any(k.startswith("encoder.") and "lora_B" in k and float(w[k].abs().sum()) > 0 for k in w)
    assert ends[2]["accuracy"] == pytest.approx(ends[1]["accuracy"], abs=0.01)
    assert ends[2]["eval_loss"] == pytest.approx(ends[1]["eval_loss"], rel=1e-3)


def test_a_run_resumes_on_another_number_of_ranks(one_process, tmp_path, cache_root):
    """2 ranks to half the steps, then 1 process to the end: where the uninterrupted one-process run ends."""
    run = tmp_path / "resumed"
    half = launch(PERSONAL, run, 2, cache_root, "--stop-after", "30")
    assert half.returncode == 0, half.stderr[-3000:]
    assert RunDir(run).status()["state"] == "cancelled" and last(run)["step"] == 30
    in_process(PERSONAL, run, cache_root)  # the same config: it resumes from the 2 ranks' checkpoint
    assert RunDir(run).status()["state"] == "succeeded" and RunDir(run).status()["resumed"]
    assert [r["step"] for r in RunDir(run).metrics()[0]] == [0, 30, 60]
    assert last(run)["accuracy"] == pytest.approx(last(one_process)["accuracy"], abs=0.01)
    assert last(run)["loss"] == pytest.approx(last(one_process)["loss"], rel=1e-3)


def _rank_pids(pattern: str) -> dict[int, int]:
    out = {}
    for pid in subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split():
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        rank = [e for e in env if e.startswith(b"RANK=")]
        if rank and b"torchrun" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            out[int(rank[0][5:])] = int(pid)
    return out


@pytest.mark.slow
def test_a_killed_rank_fails_the_run_naming_it(tmp_path, cache_root, small_corpus_embeddings):
    run = tmp_path / "killed"
    cfg_file = tmp_path / "killed.json"
    cfg_file.write_text(json.dumps({**PERSONAL, "steps": 100_000, "eval_every": 100_000, "cache_dir": cache_root}))
    proc = subprocess.Popen(train_cmd(cfg_file, run, 2), cwd=ROOT, env=_env(cache_root), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        end = time.time() + 120
        while time.time() < end and ((RunDir(run).status() or {}).get("progress") or {}).get("done", 0) < 5:
            time.sleep(0.2)
        pids = _rank_pids(str(cfg_file))
        assert set(pids) == {0, 1}, pids
        os.kill(pids[1], signal.SIGKILL)
        t0 = time.time()
        while time.time() - t0 < 30 and RunDir(run).status()["state"] == "running":
            time.sleep(0.2)
        st = RunDir(run).status()
        assert st["state"] == "failed", st
        assert f"lost rank 1 (pid {pids[1]}" in st["error"], st["error"][:500]
        _, err = proc.communicate(timeout=60)  # torchrun ends too: nothing hangs
        assert proc.returncode != 0
        assert "error: rank 0 of 2; lost rank 1" in err  # one line, not a traceback through DDP
    finally:
        if proc.poll() is None:
            proc.kill()
        drop_scratch(run)


def drop_scratch(run: Path) -> None:
    """The private folder a killed rank 1 left behind (a restart of the run would empty it)."""
    import shutil

    from core.training.distributed import scratch_path

    shutil.rmtree(scratch_path(run, 1), ignore_errors=True)


def _rank_env(rank: int, port: int, cache_root: str) -> dict:
    return _env(cache_root, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port))


def test_a_mismatched_launch_names_what_is_wrong(tmp_path, cache_root):
    """Ranks started by hand (as srun starts them) that disagree on the config; a GPU asked for on a CPU machine;
    a world without its rendezvous address: each an `error:` line naming it, exit status 2."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(json.dumps({**PERSONAL, "cache_dir": cache_root}))
    procs = [subprocess.Popen(train_cmd(cfg_file, tmp_path / "mismatch", 1, "--steps", str(10 + r)), cwd=ROOT,
                              env=_rank_env(r, port, cache_root), stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    for p, err in zip(procs, errs, strict=True):
        assert p.returncode == 2, err[-2000:]
        assert "error: config: the ranks disagree on steps: rank 0=10, rank 1=11" in err, err[-2000:]
    gpu = tmp_path / "gpu.json"
    gpu.write_text(json.dumps({**PERSONAL, "device": "cuda"}))
    p = subprocess.run(train_cmd(gpu, tmp_path / "gpu", 1), cwd=ROOT, env=_rank_env(0, port, cache_root),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "error: device: 'cuda' asks for a GPU, but this machine has none" in p.stderr, p.stderr
    env = {k: v for k, v in _rank_env(0, port, cache_root).items() if k != "MASTER_ADDR"}
    p = subprocess.run(train_cmd(cfg_file, tmp_path / "nowhere", 1), cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and "error: MASTER_ADDR: WORLD_SIZE is 2 but MASTER_ADDR is not set" in p.stderr, p.stderr


def test_what_ranks_cannot_split_is_refused_by_field():
    from core.training.config import ConfigError, build_config
    from core.training.distributed import config_differences
    from core.training.launch import check_distributable

    for field, value in (("grad_strategy", "mgda"), ("contrastive_coef", 0.1)):
        with pytest.raises(ConfigError, match=f"^{field}:"):
            check_distributable(build_config({"preset": "vpl", field: value}))
    assert config_differences([{"a": 1, "b": [1]}, {"a": 1, "b": [2]}, {"a": 1, "b": [1]}]) == [
        "b: rank 0=[1], rank 1=[2], rank 2=[1]"]

"""The study's own setting: SmolLM2 (decoder-only) + LoRA, its switches, the healing cache, and the grid."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from core.common.runs import RunDir
from core.experiments.study import StudyError, run_configs, validate_study
from core.models.embedding_store import EmbeddingCache
from core.models.encoders import TextEncoder
from core.models.reward_models import VPLRewardModel
from core.training.config import build_config
from core.training.launch import train
from core.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
TINY_DATA = {"corpus_prompts": 60, "max_train_per_user": 16, "max_test_per_user": 6, "pool_size": 8, "n_demos": 2}


def test_smollm2_is_a_last_token_encoder_whose_embedding_ignores_padding_side(smollm2):
    texts = ["Question: name a colour.\nAnswer: Blue.", "Hi", "A longer text, with several words, to pad the others."]
    assert smollm2.causal and smollm2.pooling == "last" and smollm2.dim == 576
    tok = smollm2.tokenizer
    side = tok.padding_side
    try:
        tok.padding_side = "right"
        right = smollm2.encode(texts)
        tok.padding_side = "left"
        left = smollm2.encode(texts)
    finally:
        tok.padding_side = side
    alone = np.stack([smollm2.encode([t])[0] for t in texts])
    assert np.abs(left - right).max() < 1e-3 and np.abs(left - alone).max() < 1e-3
    # the embeddings are the pretrained model's, not a random init: related texts sit closer
    x = smollm2.encode(["The cat sat on the mat.", "A cat is sitting on a mat.", "Quarterly revenue fell 4%."])
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert x[0] @ x[1] > x[0] @ x[2]


@pytest.mark.slow
def test_smollm2_lora_moves_only_adapters_and_heads_and_learns_a_tiny_set(tmp_path, smollm2, cache_root):
    # 3 steps of 4 pairs at 16 tokens (was 12 steps of 4 x 2 pairs at 64: 32x fewer trained tokens; 16 is the
    # length the grid and tiny-study tests cache this corpus at, so a cold machine encodes it once). The train
    # loss on the 8 pairs fell 0.70 -> 0.01 at seed 0 and 0.74 -> 0.15 at seed 1 (drops 0.69 / 0.60 against the
    # 0.05 asked below); lora_A moves from the second step on (its gradient is zero while lora_B is)
    cfg = build_config({"preset": "traditional", "users": [[1.0, 0.0, 0.0, 0.0]], "contested_only": False,
                        **TINY_DATA, "max_train_per_user": 8, "encoder": "bundled-smollm2", "query_encoder": "lora",
                        "query_head": "linear", "max_length": 16, "lr": 2e-3, "batch_size": 4, "grad_accum": 1,
                        "steps": 3, "eval_every": 100, "cache_dir": cache_root, "warmup_ratio": 0.0})
    tr = Trainer(cfg, RunDir(tmp_path / "run").create(), log=lambda m: None)
    named = dict(tr.query_encoder.model.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in named.items()}
    head_before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    train_idx = np.arange(len(tr.data.train))

    def train_loss() -> float:
        tr.model.eval()
        tr.query_encoder.model.eval()
        with torch.no_grad():
            loss, _, _, _ = tr.forward(tr.data.train, train_idx, train=False)
        return float(loss.mean())

    start = train_loss()
    tr._t_start = time.perf_counter()
    for _ in range(cfg.steps):
        tr.train_step()
    end = train_loss()
    assert end < start - 0.05, (start, end)
    moved = {n for n, p in named.items() if not torch.equal(p.detach(), before[n])}
    assert moved and moved <= trainable, sorted(moved - trainable)[:5]
    assert any("lora_B" in n for n in moved) and any("lora_A" in n for n in moved)
    for n, p in tr.model.named_parameters():  # the reward head and the fresh query head both train
        assert not torch.equal(p.detach(), head_before[n]), n
    assert "query_head.weight" in head_before


def test_vpl_z_mode_matches_the_reference_code_and_sample_mode_stays_plain():
    torch.manual_seed(0)
    m = VPLRewardModel(16, z_mode="vpl")
    mu, logvar = torch.randn(5, 8) * 3, torch.randn(5, 8) * 3
    z = m.latent(mu.clamp(-1, 1), logvar.clamp(-1, 1), train=True)
    assert torch.allclose(z.norm(dim=-1), torch.full((5,), 8 ** 0.5), atol=1e-5)  # on the sqrt(L) sphere
    ctx = torch.randn(5, 3, 16)
    mu_c, lv_c = m.posterior(ctx, ctx)
    assert mu_c.abs().max() <= 1 and lv_c.abs().max() <= 1
    assert torch.equal(m.latent(mu_c, lv_c, train=False), mu_c)  # the raw mean at evaluation
    plain = VPLRewardModel(16)
    z2 = plain.latent(mu, logvar, train=True, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(z2.norm(dim=-1), torch.full((5,), 8 ** 0.5))
    with pytest.raises(ValueError, match="z_mode"):
        VPLRewardModel(16, z_mode="other")


def test_fused_accumulation_gives_the_gradient_of_the_micro_batch_loop(tmp_path, small_corpus_embeddings, cache_root):
    grads = {}
    for fused in (False, True):
        cfg = build_config({"preset": "traditional", "corpus_prompts": 400, "steps": 5, "cache_dir": cache_root,
                            "fused_accumulation": fused, "max_grad_norm": 0.0})
        tr = Trainer(cfg, RunDir(tmp_path / str(fused)).create(), log=lambda m: None)
        assert tr.fused is fused
        tr._t_start = time.perf_counter()
        tr.optimizer.step = lambda: None  # keep the weights: compare the first step's gradient only
        tr.train_step()
        grads[fused] = torch.cat([p.grad.flatten() for p in tr.model.parameters()])
    assert torch.allclose(grads[False], grads[True], rtol=1e-4, atol=1e-7)


def _frozen_cfg(cache: str) -> dict:
    # 64 tokens a text: a fresh cache encodes 200 texts in about 4 s instead of 10 at 256
    return {"preset": "vpl", **TINY_DATA, "steps": 2, "eval_every": 1, "max_length": 64, "cache_dir": cache}


@pytest.mark.parametrize("damage", ["truncated-npy", "broken-keys"])
def test_a_damaged_cache_shard_is_set_aside_logged_and_reencoded(tmp_path, damage):
    minilm = TextEncoder.load(max_length=64)  # the runs' encoder (_frozen_cfg); the weights load only to encode
    cache_dir = tmp_path / "cache"
    cfg = build_config(_frozen_cfg(str(cache_dir)))
    train(cfg, tmp_path / "first", log=lambda m: None)
    shard_dir = cache_dir / minilm.identity()
    npys = sorted(shard_dir.glob("shard-*.npy"))
    assert npys
    victim = npys[0]
    if damage == "truncated-npy":
        data = victim.read_bytes()
        victim.write_bytes(data[: len(data) // 3])
    else:
        victim.with_name(victim.name.replace(".npy", ".keys.json")).write_text('["abc", "de')
    lines: list[str] = []
    hist = train(build_config({**_frozen_cfg(str(cache_dir)), "seed": 1}), tmp_path / "second", log=lines.append)
    assert RunDir(tmp_path / "second").status()["state"] == "succeeded" and hist
    aside = sorted(p.name for p in shard_dir.glob("*.broken-*"))
    assert any(n.startswith(victim.name) for n in aside), aside
    logged = [ln for ln in lines if "set aside" in ln]
    assert any(str(victim) in ln for ln in logged), logged  # the damaged file is named by path
    assert any("not cached yet" in ln and not ln.startswith("embeddings: 0 ") for ln in lines if "embeddings:" in ln)
    # and the re-encoded texts are whole again for the next reader
    again = EmbeddingCache(cache_dir, minilm)
    assert not again.set_aside and len(again) > 0


def test_study_config_errors_name_the_field():
    with pytest.raises(StudyError, match="size"):
        validate_study({"size": "huge"})
    with pytest.raises(StudyError, match="users"):
        validate_study({"users": "everyone"})
    with pytest.raises(StudyError, match="methods"):
        validate_study({"methods": ["fewshot-k2"]})
    with pytest.raises(StudyError, match="vpl-nope"):
        validate_study({"methods": ["vpl-nope"]})


def test_study_grid_gives_every_method_the_same_pairs_per_step_and_personal_one_micro_batch():
    """personal wants one micro-batch a step: it gets the others' pairs per step as one batch, while the
    study's methods keep the study's 4 x 8."""
    for size in ("tiny", "full"):
        cfgs = run_configs(validate_study({"size": size, "seeds": [0]}))
        per_step = {k: c["batch_size"] * c["grad_accum"] for k, c in cfgs.items()}
        assert len(set(per_step.values())) == 1, per_step
        assert cfgs["personal-s0"]["grad_accum"] == 1 and cfgs["personal-s0"]["user_encoder"] == "blend"
        assert cfgs["vpl-s0"]["grad_accum"] == (8 if size == "full" else 2)


@pytest.mark.slow
def test_study_tiny_cli_writes_the_grid_with_an_encoder_column_and_the_dry_run_estimates(tmp_path, smollm2,
                                                                                        cache_root):
    env = {"PREFLENS_CACHE": cache_root, "PYTHONUNBUFFERED": "1"}
    import os

    env = {**os.environ, **env}
    out = tmp_path / "study"
    # one seed (the default is 0 1 2): vpl and vpl-adaptive still stack their LoRA adapters on one SmolLM2, at
    # a third of the tokens (the grid took 64 s of this test with seeds 0 1, and more than 6 min with 0 1 2 at
    # 64 tokens); the counts below were 12 runs and 3 a method with three seeds. personal on whole texts: its
    # segments (about ten a text) through SmolLM2 made this test 105 s on a cold cache, 27 s without them
    # (segments through stacked adapters: tests/test_grid.py's stacked-LoRA block test)
    seeds = ["--seeds", "0"]
    proc = subprocess.run([sys.executable, "-m", "core.experiments", "study", "--size", "tiny", *seeds, "--set",
                           "segment_pool=false", "--out", str(out)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "4 runs as one grid" in proc.stdout  # the grid path (core.training.grid), stacked LoRA adapters
    assert "4 runs in 3 group(s)" in proc.stdout  # vpl and vpl-adaptive on one base model
    table = json.loads((out / "table.json").read_text())
    assert [r["method"] for r in table] == ["traditional", "vpl", "vpl-adaptive", "personal"]
    assert all(r["runs"] == 1 and r["encoder"] == "bundled-smollm2 + lora" for r in table)
    header = (out / "table.csv").read_text().splitlines()[0].split(",")
    assert "encoder" in header
    cfg = RunDir(out / "runs" / "vpl-s0").config()
    assert cfg["encoder"] == "bundled-smollm2" and cfg["query_encoder"] == "lora" and cfg["lr"] == 1e-4
    # the dry run on the stacked pair alone (was all four methods: the grid's groups are checked above)
    dry = subprocess.run([sys.executable, "-m", "core.experiments", "study", "--size", "tiny", *seeds, "--methods",
                          "vpl", "vpl-adaptive", "--dry-run", "--device", "cpu"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "measured on cpu" in dry.stdout and "estimate for `tiny`" in dry.stdout
    assert "recorded on NVIDIA H200" in dry.stdout  # the CUDA estimate from the recorded GPU figures
    figures = json.loads(dry.stdout.strip().splitlines()[-1])
    assert figures["runs"] == 2 and figures["round_s"] > 0 and figures["grid_total_min"] > 0
    assert figures["groups"] == 1  # vpl + vpl-adaptive (same shapes): stacked


@pytest.mark.slow
def test_study_runs_as_a_job_kind_through_the_job_manager(tmp_path, smollm2, cache_root, monkeypatch):
    from core.jobs.manager import JobManager

    monkeypatch.setenv("PREFLENS_CACHE", cache_root)
    jm = JobManager(tmp_path / "runs")
    with pytest.raises(ValueError, match="size"):
        jm.submit({"kind": "study", "size": "enormous"})
    rid = jm.submit({"kind": "study", "size": "tiny", "methods": ["traditional"], "seeds": [0]})
    deadline = time.time() + 300
    while time.time() < deadline and jm.status(rid)["state"] in ("queued", "running"):
        time.sleep(1)
    st = jm.status(rid)
    assert st["state"] == "succeeded", jm.log(rid)[-2000:]
    # one grid (core.training.grid): progress counts optimizer steps over its runs
    assert st["label"] == "study-tiny-two-opposed" and st["progress"]["done"] == st["progress"]["total"] > 0
    table = json.loads((tmp_path / "runs" / rid / "table.json").read_text())
    assert table[0]["method"] == "traditional" and table[0]["encoder"] == "bundled-smollm2 + lora"


def test_study_full_on_cpu_refuses_at_once_naming_the_memory_it_needs(tmp_path, monkeypatch, capsys):
    """Issue 32: `study --size full --dry-run` on a CPU machine was killed by the OOM killer at 23.9 GB. It must
    refuse before any model is loaded, in one `error:` line naming the memory it needs, the machine's and how to
    lower it; the job entry point too, recording the failure in its run directory."""
    import re

    from core.experiments import compare as experiments
    from core.experiments import study
    from core.models.encoders import TextEncoder

    def no_load(*args, **kwargs):
        raise AssertionError("the study went on to load a model / measure a step")

    monkeypatch.setattr(study, "estimate", no_load)
    monkeypatch.setattr(study, "run_study", no_load)
    monkeypatch.setattr(TextEncoder, "load", no_load)
    monkeypatch.setenv("PREFLENS_MEMORY_BYTES", "16G")  # less than `full` needs on a CPU, whatever this machine has
    t0 = time.perf_counter()
    code = experiments.main(["study", "--size", "full", "--dry-run", "--device", "cpu"])
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    need = re.search(r"needs about (\d+) GB", lines[0])
    assert need and int(need.group(1)) > 16, lines[0]  # the step's memory, above the machine's
    assert "16.0 GB (PREFLENS_MEMORY_BYTES)" in lines[0] and "nothing was loaded" in lines[0]
    for way_down in ("--size tiny", "--seeds", "max_length", "--device cuda"):
        assert way_down in lines[0], (way_down, lines[0])
    assert "Traceback" not in err and elapsed < 10, elapsed

    # the same refusal without --dry-run, and through the job entry point (python -m core.study)
    assert experiments.main(["study", "--size", "full", "--device", "cpu", "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()
    cfg = tmp_path / "study.json"
    cfg.write_text(json.dumps({"size": "full", "device": "cpu"}))
    assert study.main(["--config", str(cfg), "--run-dir", str(tmp_path / "job")]) == 2
    status = RunDir(tmp_path / "job").status()
    assert status["state"] == "failed" and "GB" in status["error"] and "--size tiny" in status["error"]
    capsys.readouterr()


def test_study_step_memory_grows_with_the_step_and_leaves_a_gpu_alone(monkeypatch):
    from core.experiments.study import StudyMemoryError, check_memory, step_memory

    def need(**kw) -> int:
        return step_memory(validate_study({"size": "full", "device": "cpu", "methods": ["vpl"], "seeds": [0], **kw}))["bytes"]

    one = need()
    assert need(seeds=[0, 1]) > one  # two runs stacked in one step
    assert need(overrides={"max_length": 128}) < one < need(overrides={"max_length": 512})
    assert need(overrides={"batch_size": 2}) < one < need(overrides={"grad_accum": 16})
    assert need(methods=["personal"], overrides={"segment_pool": False}) < need(methods=["personal"])
    assert step_memory(validate_study({"size": "full", "device": "cpu", "overrides": {"query_encoder": "frozen"}})) is None
    tiny = validate_study({"size": "tiny", "device": "cpu"})
    full = validate_study({"size": "full", "device": "cpu"})
    assert step_memory(tiny)["bytes"] < step_memory(full)["bytes"]
    monkeypatch.setenv("PREFLENS_MEMORY_BYTES", "1e12")
    assert check_memory(tiny, log=lambda m: None)["bytes"] == step_memory(tiny)["bytes"]  # fits: no refusal
    monkeypatch.setenv("PREFLENS_MEMORY_BYTES", "1e9")
    with pytest.raises(StudyMemoryError, match="--size tiny"):
        check_memory(tiny)
    assert check_memory(validate_study({"size": "full", "device": "cuda"})) is None  # a GPU run: not checked
    monkeypatch.setenv("PREFLENS_MEMORY_BYTES", "lots")
    with pytest.raises(StudyError, match="PREFLENS_MEMORY_BYTES"):
        check_memory(full)

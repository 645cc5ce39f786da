"""core.training.grid: many runs in one process give each run what it gets alone, and leave one by one."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from core.common.runs import RunDir, now_iso
from core.training.config import build_config
from core.training.launch import train, train_grid
from core.training.shared import Shared
from core.training.trainer import Trainer

SMALL = {"corpus_prompts": 400, "eval_every": 10}


def _cfgs(cache_root, steps=30, **extra):
    pairs = [("vpl", 0), ("vpl-mgda", 1), ("vpl-contrastive", 0), ("traditional", 1), ("personal", 0)]
    return [build_config({"preset": p, **SMALL, "steps": steps, "seed": s, "cache_dir": cache_root, **extra})
            for p, s in pairs]


def test_grid_members_end_where_their_runs_end_alone(tmp_path, small_corpus_embeddings, cache_root):
    cfgs = _cfgs(cache_root)
    alone = [train(c, tmp_path / f"alone-{i}", log=lambda m: None)[-1] for i, c in enumerate(cfgs)]
    said = []
    grid = [h[-1] for h in train_grid(cfgs, [tmp_path / f"grid-{i}" for i in range(len(cfgs))], log=lambda m: None,
                                      summary=said.append)]
    if len(os.sched_getaffinity(0)) > 1:  # 4 stacked groups: each in its own thread, side by side
        assert any("4 group(s) on 2 threads" in m for m in said), said
    for c, a, g in zip(cfgs, alone, grid, strict=True):
        assert g["step"] == a["step"] == 30
        assert g["accuracy"] == pytest.approx(a["accuracy"], abs=0.01), c.preset
        assert g["eval_loss"] == pytest.approx(a["eval_loss"], rel=1e-3), c.preset
        assert g["all_pairs_accuracy"] == pytest.approx(a["all_pairs_accuracy"], abs=0.01), c.preset
    # the runs learned something, so equality is not two runs that both did nothing (a single run is a grid
    # of one, so a fault of the grid's own would show here as a member stuck at chance, not as a difference)
    assert [round(g["accuracy"], 2) > 0.7 for g in grid[:3]] == [True] * 3, [g["accuracy"] for g in grid]
    assert grid[4]["accuracy"] > 0.55  # 30 steps: personal is past chance
    for i in range(len(cfgs)):
        assert RunDir(tmp_path / f"grid-{i}").status()["state"] == "succeeded"


@pytest.mark.parametrize(("preset", "extra"), [("vpl-contrastive", {}), ("vpl-pcgrad", {}), ("vpl-mgda", {}),
                                              ("personal", {}), ("personal", {"population_coef": 1.0})],
                         ids=["vpl-contrastive", "vpl-pcgrad", "vpl-mgda", "personal", "personal-population"])
def test_a_stacked_step_is_the_micro_batch_loop_step(tmp_path, small_corpus_embeddings, cache_root, preset, extra):
    """The grid's fused, stacked step (and its per-user path for MGDA / PCGrad, core.training.gradients) gives each
    member the gradient the plain loop over micro-batches gives (Trainer.train_step, torchjd's own backward
    for MGDA / PCGrad). The first step's learning rate is 0 (warm-up), so both steps start from the same
    weights and the gradients compare exactly; after that, Adam turns rounding noise in near-zero gradients
    into +-lr steps, so weights are compared through what they compute instead."""
    from core.training.stacked import StackedGroup

    cfg = {"preset": preset, **SMALL, "steps": 20, "cache_dir": cache_root, **extra}
    shared = Shared()
    plain = Trainer(build_config({**cfg, "seed": 0}), RunDir(tmp_path / "plain").create(), log=lambda m: None,
                    shared=shared)
    members = [Trainer(build_config({**cfg, "seed": s}), RunDir(tmp_path / f"m{s}").create(), log=lambda m: None,
                       shared=shared) for s in (0, 1)]
    group = StackedGroup(members)
    seen = []
    adam_step = group.adam.step
    group.adam.step = lambda grads: (seen.append([g[0].clone() for g in grads]), adam_step(grads))
    assert plain.scheduler.get_last_lr()[0] == 0.0  # warm-up: the first step does not move the weights
    for _ in range(2):
        plain.train_step()
        group.step([0, 1])
        for (n, p), g in zip(plain.model.named_parameters(), seen[-1], strict=True):
            assert torch.allclose(p.grad, g, rtol=1e-3, atol=1e-6), n
    assert sum(float(g.abs().sum()) > 0 for g in seen[-1]) > len(seen[-1]) // 2
    # the other member is another run (seed 1), not a copy of the first
    assert any(not torch.allclose(p, q) for p, q in zip(members[0].model.parameters(), members[1].model.parameters(),
                                                         strict=True))


def test_a_member_cancelled_alone_stops_checkpointed_while_the_others_finish(tmp_path, small_corpus_embeddings,
                                                                            cache_root, monkeypatch):
    import core.training.grid

    monkeypatch.setattr(core.training.grid, "CANCEL_CHECK_S", 0.0)
    cfgs = _cfgs(cache_root, steps=40)[:2]
    dirs = [tmp_path / "a", tmp_path / "b"]

    def on_step(i, step, steps):
        if i == 0 and step == 5:
            RunDir(dirs[0]).update_status(cancel_requested=now_iso())

    train_grid(cfgs, dirs, log=lambda m: None, on_step=on_step)
    a, b = RunDir(dirs[0]), RunDir(dirs[1])
    assert a.status()["state"] == "cancelled" and "cancelled by the user" in a.status()["error"]
    assert torch.load(dirs[0] / "train_state.pt", weights_only=True)["step"] == 5
    assert b.status()["state"] == "succeeded" and b.metrics()[0][-1]["step"] == 40


def test_an_interrupted_grid_resumes_to_the_numbers_of_an_uninterrupted_one(tmp_path, small_corpus_embeddings,
                                                                            cache_root):
    cfgs = _cfgs(cache_root, steps=30)[:3]
    full = [tmp_path / f"full-{i}" for i in range(3)]
    part = [tmp_path / f"part-{i}" for i in range(3)]
    train_grid(cfgs, full, log=lambda m: None)
    train_grid(cfgs, part, stop_after=15, log=lambda m: None)
    assert all(RunDir(d).status()["state"] == "cancelled" for d in part)
    train_grid(cfgs, part, log=lambda m: None)
    for f, p in zip(full, part, strict=True):
        a, _ = RunDir(f).metrics()
        b, _ = RunDir(p).metrics()
        assert [r["step"] for r in a] == [r["step"] for r in b]
        assert a[-1]["eval_loss"] == pytest.approx(b[-1]["eval_loss"], rel=1e-5)
        assert a[-1]["user_accuracy"] == b[-1]["user_accuracy"]


def test_members_share_setup_but_not_weights(tmp_path, small_corpus_embeddings, cache_root):
    shared = Shared()
    t = [Trainer(c, RunDir(tmp_path / str(i)).create(), log=lambda m: None, shared=shared)
         for i, c in enumerate(_cfgs(cache_root)[:3])]  # vpl s0, vpl-mgda s1, vpl-contrastive s0
    assert t[0].data is t[2].data and t[0].data is not t[1].data  # same seed -> same split
    assert t[0].embeddings is t[1].embeddings  # one matrix for the table and encoder
    # vpl and vpl-contrastive at seed 0 start from the same weights, as they would alone
    for p, q in zip(t[0].model.parameters(), t[2].model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert not np.array_equal(t[0].data.test.user, t[1].data.test.user) or len(t[0].data.test) != len(t[1].data.test)


def test_train_grid_needs_one_run_dir_per_config(tmp_path):
    with pytest.raises(ValueError, match="one run directory per config"):
        train_grid([build_config({"preset": "vpl"})], [], log=lambda m: None)


def test_stacked_lora_gives_each_run_its_block_of_texts_and_segments():
    """A grid's LoRA forward on segment features (core.models.stacked_lora; the tiny study's path): with texts and
    their segments in one block per run (TextEncoder.tokenize(blocks=M)), each run's rows get exactly the
    features its own adapters give them alone, and two runs' adapters give different ones."""
    from core.models.encoders import TextEncoder
    from core.models.stacked_lora import MemberEncoder, add_stacked_lora

    enc = TextEncoder.load(segments=True)
    adapters = add_stacked_lora(enc.model, seeds=[0, 1], r=4, alpha=8)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # B starts at zero (every run at the base model): give both runs an adapter that acts
        for mod in adapters.values():
            mod.B.normal_(0.0, 0.05, generator=g)
    enc.model.eval()  # no dropout: one forward and two alone draw nothing
    blocks = [["Sure. Here it is.\nStep one. Step two.", "No."], ["Maybe. I am not sure!", "Yes. Yes. Yes."]]
    with torch.no_grad():
        both = enc.forward(enc.tokenize(blocks[0] + blocks[1], blocks=2))  # (4, 2D)
        alone = [MemberEncoder(enc, adapters, m).forward(enc.tokenize(b)) for m, b in enumerate(blocks)]
    np.testing.assert_allclose(both.numpy(), torch.cat(alone).numpy(), atol=1e-5)
    with torch.no_grad():
        swapped = MemberEncoder(enc, adapters, 1).forward(enc.tokenize(blocks[0]))
    assert float((swapped - alone[0]).abs().max()) > 1e-3


def test_lora_members_share_one_base_model_and_match_their_runs_alone(tmp_path, cache_root):
    """LoRA runs in one grid end where each ends alone: vpl at seeds 1 and 0 stacked on one SmolLM2
    (core.models.stacked_lora), personal in its own group; a stacked member's checkpoint holds its own trained
    adapters under peft's names, and personal's serves rewards through peft (core.serving.run_reward). (Segment features
    through stacked adapters: test_stacked_lora_gives_each_run_its_block_of_texts_and_segments.)"""
    from safetensors.torch import load_file

    from core.serving.run_reward import RunRewardModel

    # 2 steps at 16 tokens, personal without segment features (was 3 steps at 48 tokens with segments, and no
    # stacked pair: 70 s of the suite, now about 25). eval_loss, grid against alone, differed by at most 2.1e-7
    # (relative) with personal s0 / vpl s1 / vpl s0, and 3.6e-7 with seeds 2 / 3 / 2, against the 1e-3 allowed
    tiny = {"corpus_prompts": 60, "max_train_per_user": 8, "max_test_per_user": 4, "pool_size": 8, "n_demos": 2,
            "encoder": "bundled-smollm2", "query_encoder": "lora", "max_length": 16, "batch_size": 2,
            "grad_accum": 2, "steps": 2, "eval_every": 2, "probe_per_user": 2, "lr": 1e-3, "warmup_ratio": 0.0,
            "cache_dir": cache_root}
    cfgs = [build_config({"preset": "personal", **tiny, "batch_size": 2, "grad_accum": 1, "seed": 0,
                         "segment_pool": False}),
            build_config({"preset": "vpl", **tiny, "seed": 1}), build_config({"preset": "vpl", **tiny, "seed": 0})]
    alone = [train(c, tmp_path / f"alone-{i}", log=lambda m: None)[-1] for i, c in enumerate(cfgs)]
    said = []
    grid = [h[-1] for h in train_grid(cfgs, [tmp_path / f"grid-{i}" for i in range(3)], log=lambda m: None,
                                      summary=said.append)]
    assert any("3 runs in 2 group(s)" in m for m in said), said  # the two vpl runs share one base model
    for a, g in zip(alone, grid, strict=True):
        assert g["eval_loss"] == pytest.approx(a["eval_loss"], rel=1e-3)
    w = load_file(str(tmp_path / "grid-1" / "model.safetensors"))
    lora_b = [k for k in w if k.startswith("encoder.") and "lora_B" in k]
    assert lora_b and all(".default.weight" in k for k in lora_b)  # peft's names
    assert any(float(w[k].abs().sum()) > 0 for k in lora_b)  # B starts at zero: the adapters trained
    rm = RunRewardModel.from_run(tmp_path / "grid-0")
    scores = rm.score("How do I boil an egg?", ["Put it in boiling water for nine minutes.", "No."], user=0)
    assert len(scores) == 2 and all(np.isfinite(scores))

"""A finished run as a reward function: place a visitor, predict their choices, score text, TRL GRPO."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.common.runs import RunDir
from core.serving.run_reward import RewardModelError, RunRewardModel, ask_pairs
from core.users.tastes import user_scores

REPO = Path(__file__).resolve().parents[1]
HONESTY, HELPFULNESS = [0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]


@pytest.fixture(scope="module")
def runs(lesson_runs_root):
    """runs / "vpl" and runs / "btl": the session's lesson runs (tests/conftest.py)."""
    from tests.conftest import LESSON_IDS

    class Root:
        def __truediv__(self, name):
            return lesson_runs_root / LESSON_IDS["vpl-adaptive" if name == "vpl" else "traditional"]

    return Root()


@pytest.fixture(scope="module")
def rm(runs):
    return RunRewardModel.from_run(runs / "vpl", device="cpu")


def answer(table, w, pair):
    """A scripted visitor with weights w answers the A/B pair: (prompt, chosen, rejected)."""
    q, i, j = pair
    s = user_scores(table, np.asarray([w]))[0, q]
    a, b = (i, j) if s[i] > s[j] else (j, i)
    return table.prompts[q], table.responses[q][a], table.responses[q][b]


def agreement(rm, table, w, me, pairs) -> float:
    """Share of the A/B pairs on which the reward model, reading the visitor as ``me``, picks what w picks."""
    hits = 0
    for q, i, j in pairs:
        r = rm.score(table.prompts[q], [table.responses[q][i], table.responses[q][j]], user=me)
        s = user_scores(table, np.asarray([w]))[0, q]
        hits += (r[0] > r[1]) == (s[i] > s[j])
    return hits / len(pairs)


@pytest.fixture(scope="module")
def personal_and_twin(tmp_path_factory, cache_root, small_corpus_embeddings):
    """A `personal` run on two opposed users and a traditional run on the same pairs (400 questions, 300 steps)."""
    from core.training.config import build_config
    from core.training.launch import train_grid

    root = tmp_path_factory.mktemp("personal")
    common = {"users": "two-opposed", "corpus_prompts": 400, "steps": 300, "eval_every": 300, "agreed_share": 1.0,
              "cache_dir": cache_root}
    train_grid([build_config({"preset": p, **common}) for p in ("personal", "traditional")],
               [root / p for p in ("personal", "traditional")], log=lambda m: None)  # one process, shared setup
    return (RunRewardModel.from_run(root / "personal", device="cpu"),
            RunRewardModel.from_run(root / "traditional", device="cpu"))


@pytest.mark.slow
@pytest.mark.parametrize("w, aspect", [([0.8, 0.2, 0.0, 0.0], "helpfulness"), ([0.3, 0.7, 0.0, 0.0], "honesty")])
def test_a_visitor_no_training_user_is_is_read_and_served_on_unseen_questions(personal_and_twin, w, aspect):
    """A visitor whose weights no training user has answers 8 of the run's training questions; read from
    them, the personal model ranks every pair the visitor strictly prefers on the test questions better
    than the traditional model trained on the same pairs does on the same pairs."""
    from core.serving.student import answers_curve, student_answers

    rm, twin = personal_and_twin
    curve = answers_curve(rm, twin, w, counts=(8,))
    assert curve["pairs"] >= 100
    assert curve["personal"][0] >= curve["traditional"][0] + 0.05, curve
    table = rm.table()
    # placed from 8 answers, five times over (a 0.3 / 0.7 visitor's 8 answers are noisy evidence: one
    # reading of the seed-0 model put them at 0.52 / 0.48, the five at 0.30 / 0.70 on average)
    reads = [rm.infer_user([(table.prompts[q], table.responses[q][c], table.responses[q][r])
                            for q, c, r in student_answers(rm, w, 8, seed=s)]) for s in range(5)]
    assert all(me.n_demos == 8 and abs(sum(me.weights.values()) - 1) < 1e-6 for me in reads)
    mean = {a: float(np.mean([me.weights[a] for me in reads])) for a in reads[0].weights}
    assert max(mean, key=mean.get) == aspect, mean


@pytest.mark.slow
def test_a_reward_function_from_an_honesty_visitors_answers_ranks_honesty_on_unseen_questions(personal_and_twin):
    """The TRL use: a reward function built from an honesty-only visitor's 8 answers (training questions)
    puts each test question's most honest response above its least honest one; contested-only training
    made the honesty user 'the opposite of the helpfulness user' and failed this (issue 18)."""
    from core.serving.student import run_questions, student_answers

    rm, twin = personal_and_twin
    table = rm.table()
    me = rm.infer_user([(table.prompts[q], table.responses[q][c], table.responses[q][r])
                        for q, c, r in student_answers(rm, HONESTY, 8)])
    fn = rm.as_reward_function(me)
    _, test_q = run_questions(rm)
    hon = table.ratings[test_q][:, :, 1]
    keep = np.nanmax(hon, 1) > np.nanmin(hon, 1)
    qs, best, worst = test_q[keep], np.nanargmax(hon, 1)[keep], np.nanargmin(hon, 1)[keep]
    prompts = [table.prompts[q] for q in qs]
    hi = np.asarray(fn(prompts, [table.responses[q][b] for q, b in zip(qs, best, strict=True)]))
    lo = np.asarray(fn(prompts, [table.responses[q][b] for q, b in zip(qs, worst, strict=True)]))
    assert len(qs) >= 50 and (hi > lo).mean() >= 0.85, (hi > lo).mean()


def test_infogain_pairs_are_contested_and_distinct(rm):
    table = rm.table()
    pairs = ask_pairs(table, rm.W, 6, how="infogain")
    assert len(pairs) == 6 and len({q for q, _, _ in pairs}) == 6
    s = user_scores(table, rm.W)  # (U, Q, C)
    for q, i, j in pairs:  # the two users disagree on every pair asked
        assert (s[0, q, i] > s[0, q, j]) != (s[1, q, i] > s[1, q, j])


@pytest.mark.slow
def test_errors_are_named_not_crashed_on(runs, rm, tmp_path):
    table = rm.table()
    demo = answer(table, HONESTY, ask_pairs(table, rm.W, 1, how="random")[0])
    btl = RunRewardModel.from_run(runs / "btl", device="cpu")
    with pytest.raises(RewardModelError, match="not conditional"):
        btl.infer_user([demo])
    assert len(btl.score("A question?", ["one", "two"], user=None)) == 2
    with pytest.raises(RewardModelError, match="^demos: give at least one"):
        rm.infer_user([])
    with pytest.raises(RewardModelError, match=r"^demos\[1\]\.chosen: empty text"):
        rm.infer_user([demo, (demo[0], "  ", demo[2])])
    with pytest.raises(RewardModelError, match="^user: index 2 is out of range for a run with 2 users"):
        rm.score("Q?", ["a"], user=2)
    with pytest.raises(RewardModelError, match="^user: this model is conditional"):
        rm.score("Q?", ["a"], user=None)
    with pytest.raises(RewardModelError, match="^run_dir: no training run"):
        RunRewardModel.from_run(tmp_path / "nothing")
    unfinished = RunDir(tmp_path / "unfinished").create()
    unfinished.write_config(RunDir(runs / "vpl").config())
    unfinished.update_status(state="running")
    with pytest.raises(RewardModelError, match="'running', not finished"):
        RunRewardModel.from_run(unfinished.path)


@pytest.mark.slow
def test_cli_scores_and_ranks_with_json_out(runs, rm, tmp_path, cache_root):
    import os

    table = rm.table()
    asked = ask_pairs(table, rm.W, 8, how="random", seed=3)
    demos = [dict(zip(("prompt", "chosen", "rejected"), answer(table, HONESTY, p), strict=True)) for p in asked]
    (tmp_path / "demos.json").write_text(json.dumps(demos))
    q, i, j = ask_pairs(table, rm.W, 1, how="random", seed=99, exclude=[p[0] for p in asked])[0]
    files = []
    for n, c in enumerate((i, j)):
        f = tmp_path / f"r{n}.txt"
        f.write_text(table.responses[q][c])
        files.append(str(f))
    (tmp_path / "cands.jsonl").write_text("".join(json.dumps({"response": table.responses[q][c]}) + "\n"
                                                  for c in range(len(table.responses[q]))))
    env = {**os.environ, "PREFLENS_CACHE": cache_root}
    base = [sys.executable, "-m", "core.reward"]
    score = subprocess.run(base + ["score", "--run", str(runs / "vpl"), "--demos", str(tmp_path / "demos.json"),
                                   "--prompt", table.prompts[q], "--responses", *files, "--out", str(tmp_path / "s.json")],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert score.returncode == 0, score.stderr[-1500:]
    out = json.loads((tmp_path / "s.json").read_text())
    honest_first = user_scores(table, np.asarray([HONESTY]))[0, q]
    expect = files[0] if honest_first[i] > honest_first[j] else files[1]
    assert out["best"] == expect and out["user"]["nearest"][0]["user"] == 1
    assert "rank" in score.stdout and "reward" in score.stdout
    rank = subprocess.run(base + ["rank", "--run", str(runs / "vpl"), "--user", "0", "--prompt", table.prompts[q],
                                  "--candidates", str(tmp_path / "cands.jsonl"), "--out", str(tmp_path / "r.json")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rank.returncode == 0, rank.stderr[-1500:]
    ranked = json.loads((tmp_path / "r.json").read_text())
    rewards = [r["reward"] for r in ranked["ranking"]]
    assert len(rewards) == len(table.responses[q]) and rewards == sorted(rewards, reverse=True)
    assert ranked["best"] in table.responses[q]
    bad = subprocess.run(base + ["score", "--run", str(runs / "vpl"), "--user", "7", "--prompt", "Q?",
                                 "--responses", files[0]], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "user: index 7 is out of range" in bad.stderr


@pytest.mark.slow
def test_trl_grpo_trains_two_steps_on_this_reward(rm, tmp_path):
    """A tiny random policy (SmolLM2's tokenizer, a 1-layer Llama) and GRPOTrainer, rewarded by the run."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from core.common.bundled import bundled_smollm2_folder

    tok = AutoTokenizer.from_pretrained(bundled_smollm2_folder())
    tok.pad_token = tok.pad_token or tok.eos_token
    policy_dir = tmp_path / "policy"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)).save_pretrained(policy_dir)
    tok.save_pretrained(policy_dir)
    table = rm.table()
    reward = rm.as_reward_function(1)  # as the honesty user
    seen: list[float] = []

    def preflens_honesty(prompts, completions, **kw):
        out = reward(prompts, completions, **kw)
        seen.extend(out)
        return out

    data = Dataset.from_dict({"prompt": [f"Question: {p}\nAnswer:" for p in table.prompts[:8]]})
    args = GRPOConfig(output_dir=str(tmp_path / "grpo"), per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=8, max_steps=2, logging_steps=1, report_to=[], save_strategy="no",
                      use_cpu=True, bf16=False, learning_rate=1e-3, seed=0)
    before = {n: p.detach().clone() for n, p in LlamaForCausalLM.from_pretrained(policy_dir).named_parameters()}
    trainer = GRPOTrainer(model=str(policy_dir), reward_funcs=[preflens_honesty], args=args, train_dataset=data,
                          processing_class=tok)
    trainer.train()
    assert trainer.state.global_step == 2
    logged = [h["rewards/preflens_honesty/mean"] for h in trainer.state.log_history
              if "rewards/preflens_honesty/mean" in h]
    assert len(logged) == 2 and len(seen) >= 8
    assert np.isclose(np.mean(seen[:len(seen) // 2]), logged[0], atol=1e-4)  # the logged rewards are ours
    assert np.std(seen) > 0  # different completions, different rewards
    moved = [n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach().cpu(), before[n])]
    assert moved  # the policy was updated by these rewards

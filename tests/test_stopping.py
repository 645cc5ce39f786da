"""Early stopping (core.training.stopping): a run stops once its validation loss stops improving and keeps its best
evaluation's model; the validation questions are held out of training and are never test questions."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from core.common.runs import RunDir
from core.experiments.tables import run_row, summarize
from core.training.config import ConfigError, build_config
from core.training.launch import train
from core.training.stopping import EarlyStopping

# (seeds 0 and 1), long before 300 steps
EARLY = {"preset": "personal", "users": "two-opposed", "corpus_prompts": 400, "batch_size": 64, "steps": 300,
         "eval_every": 10, "people_every": 0, "early_stop_patience": 2, "val_share": 0.1}


def test_the_counter_stops_after_patience_evaluations_without_a_new_best():
    s = EarlyStopping(patience=2, min_delta=0.01)
    assert s.update(0, 0.7) and s.update(10, 0.5)
    assert not s.update(20, 0.495)  # better, but by less than min_delta
    assert not s.should_stop
    assert not s.update(30, 0.6)
    assert s.should_stop and s.best_step == 10
    t = EarlyStopping(patience=2)
    t.load_state(s.state())
    assert (t.best, t.best_step, t.since_best, t.should_stop) == (0.5, 10, 2, True)


def test_early_stopping_needs_a_validation_set_and_says_so():
    with pytest.raises(ConfigError, match=r"^config: .*early_stop_patience: .*val_share"):
        build_config({"preset": "personal", "early_stop_patience": 3, "val_share": 0.0})


def test_validation_pairs_are_never_trained_on_nor_shown_and_the_rest_is_drawn_as_without_them(small_corpus):
    from core.training.dataset import build
    from core.users.tastes import preset

    W = preset("four-one-hot")
    plain = build(small_corpus, W, seed=1, agreed_share=1.0)
    held = build(small_corpus, W, seed=1, agreed_share=1.0, val_share=0.1)
    val_q = set(held.val.question.tolist())
    assert 0 < len(val_q) <= round(0.1 * len(plain.train_questions))
    assert not val_q & set(held.train.question.tolist()) and not val_q & set(held.test.question.tolist())
    # the test pairs and their demonstrations are the very same: runs with and without it compare on them
    for f in ("user", "chosen", "rejected", "ctx_chosen", "ctx_rejected"):
        assert np.array_equal(getattr(plain.test, f), getattr(held.test, f))
    # the training targets are the plain ones less the validation questions', demonstrations unchanged
    keep = ~np.isin(plain.train.question, list(val_q))
    assert np.array_equal(held.train.chosen, plain.train.chosen[keep])
    assert np.array_equal(held.train.ctx_chosen, plain.train.ctx_chosen[keep])
    # and no user's validation pair is one of that user's demonstrations
    for u in range(len(W)):
        tr, va = held.train.user == u, held.val.user == u
        shown = set(zip(held.train.ctx_chosen[tr].ravel().tolist(), held.train.ctx_rejected[tr].ravel().tolist(),
                        strict=True))
        assert va.sum() > 100 and not shown & set(zip(held.val.chosen[va].tolist(), held.val.rejected[va].tolist(),
                                                      strict=True))


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, small_corpus_embeddings, cache_root):
    root = tmp_path_factory.mktemp("stop")
    cfg = build_config({**EARLY, "cache_dir": cache_root})
    return root / "run", cfg, train(cfg, root / "run", log=lambda m: None)


def test_a_run_stops_when_its_validation_loss_stops_improving_and_keeps_its_best_model(stopped):
    path, cfg, hist = stopped
    status = RunDir(path).status()
    early = status["stopped_early"]
    assert status["state"] == "succeeded", status
    evals = [r for r in hist if not r.get("kept_best")]
    best = min(evals, key=lambda r: r["val_loss"])
    # it stopped `patience` evaluations after its best one, long before its last step
    assert early["best_step"] == best["step"] and early["at_step"] == best["step"] + 2 * cfg.eval_every
    assert early["at_step"] < cfg.steps and evals[-1]["step"] == early["at_step"]
    assert all(r["val_loss"] >= best["val_loss"] for r in evals if r["step"] > best["step"])
    # the run's last record is its best model's: the same figures as that evaluation, and its people
    last = hist[-1]
    assert last["kept_best"] and last["step"] == best["step"]
    assert last["accuracy"] == best["accuracy"] and last["val_loss"] == pytest.approx(best["val_loss"], rel=1e-6)
    assert last["all_pairs_accuracy"] is not None and last["accuracy"] > 0.9
    # and model.safetensors holds the best evaluation's weights, not the last step's
    kept, best_w = load_file(str(path / "model.safetensors")), load_file(str(path / "best.safetensors"))
    assert all(torch.equal(kept[k], best_w[k]) for k in best_w)
    row = run_row(path)
    assert row["stopped_early_at"] == early["at_step"] and row["steps"] == best["step"]
    assert summarize([row])[0]["stopped_early"] == 1


def test_a_stopped_run_resumed_from_its_checkpoint_stops_at_the_same_step(stopped, tmp_path, cache_root):
    path, cfg, hist = stopped
    at = RunDir(path).status()["stopped_early"]["at_step"]
    part = train(cfg, tmp_path / "r", stop_after=at - cfg.eval_every, log=lambda m: None)
    assert RunDir(tmp_path / "r").status()["state"] == "cancelled" and part[-1]["step"] == at - cfg.eval_every
    train(cfg, tmp_path / "r", log=lambda m: None)
    status = RunDir(tmp_path / "r").status()
    assert status["state"] == "succeeded" and status["stopped_early"] == RunDir(path).status()["stopped_early"]


def test_an_adaptive_run_is_read_for_stopping_only_from_its_last_phase(tmp_path, small_corpus_embeddings, cache_root):
    """vpl-adaptive trains one user after the other, so until its last phase the validation loss says nothing
    about being done: read from the start, the two-opposed lesson's run stopped at step 20 with its second user at
    0.05 (seed 0). The lesson's config, seeds 0 / 1: it trains to step 60 and serves both users (0.96 / 0.98)."""
    from core.training.config import LESSON_TWO_OPPOSED

    cfg = build_config({"preset": "vpl-adaptive", **LESSON_TWO_OPPOSED, "cache_dir": cache_root})
    assert cfg.early_stop_patience > 0
    hist = train(cfg, tmp_path / "run", log=lambda m: None)
    assert hist[-1]["step"] == 60 and RunDir(tmp_path / "run").status().get("stopped_early") is None
    assert min(hist[-1]["user_accuracy"].values()) > 0.9, hist[-1]["user_accuracy"]
    assert all("best_step" not in r for r in hist if r["step"] <= 30)  # phase 0 and its boundary are not read

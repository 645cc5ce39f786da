"""core.experiments.compare: a run's setting (users, data, pairs, encoder) and people measures, and summarize()
keeping runs of different settings apart (issue 18: three personal runs on three user sets were one row)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.common.runs import RunDir
from core.experiments.compare import run_row, summarize
from core.training.config import build_config


def fake_run(root: Path, run_id: str, accuracy: float, *, people: dict | None = None, state: str = "succeeded",
             **cfg) -> Path:
    """A finished run folder with a real (validated) config and two evaluation records, no training."""
    run = RunDir(root / run_id).create()
    run.write_config(build_config(cfg).model_dump(mode="json"))
    run.append_metrics({"step": 0, "epoch": 0.0, "accuracy": 0.5, "user_accuracy": {"0": 0.5, "1": 0.5},
                        "wall_s": 0.0})
    run.append_metrics({"step": 10, "epoch": 1.0, "accuracy": accuracy, "wall_s": 1.5,
                        "user_accuracy": {"0": accuracy, "1": accuracy}, **(people or {})})
    run.mark_final(state)
    return run.path


PEOPLE = {"all_pairs_accuracy": 0.8, "new_users_accuracy": 0.7,
          "new_users": [{"name": "one-hot helpfulness", "kind": "one-hot", "weights": [1, 0, 0, 0], "accuracy": 0.9},
                        {"name": "uniform", "kind": "uniform", "weights": [0.25] * 4, "accuracy": 0.5},
                        {"name": "blend", "kind": "blend", "weights": [0.5, 0.5, 0, 0], "accuracy": None}]}


def test_run_row_names_the_setting_and_reads_the_people_measures(tmp_path):
    path = fake_run(tmp_path, "a", 0.9, people=PEOPLE, preset="personal", users="random", user_seed=1,
                    corpus_prompts=400, signal=0.8, agreed_share=0.5)
    row = run_row(path)
    assert row["method"] == "personal" and row["users"] == "random (seed 1)"
    assert row["data"] == "offline 400q s0 signal 0.8" and row["pairs"] == "contested + 50% agreed"
    assert row["encoder"] == "bundled-minilm (frozen)"
    assert row["all_pairs_accuracy"] == 0.8 and row["new_users_accuracy"] == 0.7
    assert row["new_users_min"] == 0.5  # the worst person who was scored (None = not scored)

    row = run_row(fake_run(tmp_path, "b", 0.6, preset="traditional", users=[[1, 0, 0, 0], [0, 1, 0, 0]],
                           contested_only=False))
    assert row["users"].startswith("custom (2 users, ") and row["pairs"] == "all pairs"
    assert row["data"] == "offline 1500q s0"
    other = run_row(fake_run(tmp_path, "c", 0.6, preset="traditional", users=[[1, 0, 0, 0], [0, 0, 1, 0]]))
    assert other["users"] != row["users"]  # two custom sets of one size are not one setting


def test_run_row_of_a_run_recorded_before_the_people_measures_has_them_blank(tmp_path):
    path = fake_run(tmp_path, "old", 0.75, preset="vpl", users="two-opposed")
    cfg = RunDir(path).config()
    del cfg["agreed_share"], cfg["people_every"], cfg["people_readings"]  # as an older run wrote it
    RunDir(path).write_config(cfg)
    row = run_row(path)
    assert row["accuracy"] == 0.75 and row["pairs"] == "contested" and row["users"] == "two-opposed"
    assert row["all_pairs_accuracy"] is None and row["new_users_accuracy"] is None and row["new_users_min"] is None
    table = summarize([row])
    assert "new_users_accuracy" not in table[0]  # no column of blanks for a table of old runs only


def test_people_measures_come_from_the_last_record_that_has_them(tmp_path):
    path = fake_run(tmp_path, "p", 0.9, people=PEOPLE, preset="personal", users="four-one-hot")
    RunDir(path).append_metrics({"step": 20, "epoch": 2.0, "accuracy": 0.95, "user_accuracy": {"0": 0.95}})
    row = run_row(path)
    assert row["accuracy"] == 0.95 and row["new_users_accuracy"] == 0.7 and row["all_pairs_accuracy"] == 0.8


def test_summarize_keeps_user_sets_apart_and_averages_seeds_of_one_setting(tmp_path):
    rows = [run_row(fake_run(tmp_path, f"{u}-s{s}", acc, preset="personal", users=u, seed=s, agreed_share=0.25,
                             people={**PEOPLE, "new_users_accuracy": acc - 0.1}))
            for u, s, acc in [("two-opposed", 0, 1.0), ("four-one-hot", 0, 0.9), ("four-one-hot", 1, 0.8),
                              ("random", 0, 0.85)]]
    rows.append(run_row(fake_run(tmp_path, "other-data", 0.7, preset="personal", users="random", corpus_seed=3,
                                 agreed_share=0.25)))
    table = summarize(rows)
    assert [(r["method"], r["users"], r["data"], r["runs"]) for r in table] == [
        ("personal", "two-opposed", "offline 1500q s0", 1), ("personal", "four-one-hot", "offline 1500q s0", 2),
        ("personal", "random", "offline 1500q s0", 1), ("personal", "random", "offline 1500q s3", 1)]
    four = table[1]
    assert four["accuracy_mean"] == pytest.approx(0.85) and four["accuracy_std"] == pytest.approx(0.05)
    assert four["new_users_accuracy"] == pytest.approx(0.75) and four["all_pairs_accuracy"] == pytest.approx(0.8)
    assert four["pairs"] == "contested + 25% agreed" and four["encoder"] == "bundled-minilm (frozen)"
    # the CSV's first columns as they were (tests/test_train.py reads "method,runs,accuracy_mean")
    assert list(four)[:3] == ["method", "runs", "accuracy_mean"]


def test_summarize_takes_plain_dict_rows_and_separates_encoders():
    base = {"method": "traditional", "users": "two-opposed", "data": "offline 400q s0", "pairs": "contested",
            "accuracy": 0.5, "converged": False, "steps_to_converge": None, "epochs_to_converge": None,
            "wall_to_converge_s": None, "wall_s": 1.0}
    table = summarize([{**base, "encoder": "bundled-minilm (frozen)"}, {**base, "encoder": "bundled-smollm2 + lora"},
                       {**base, "encoder": "bundled-minilm (frozen)", "accuracy": 0.7}])
    assert [(r["encoder"], r["runs"]) for r in table] == [("bundled-minilm (frozen)", 2), ("bundled-smollm2 + lora", 1)]
    assert table[0]["accuracy_mean"] == pytest.approx(0.6)

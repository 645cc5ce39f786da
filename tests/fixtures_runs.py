"""Training runs several test modules read, each trained once per session (a grid: one process, shared setup).

    four_users     traditional, vpl and personal on four one-hot users, 400 questions, 300 steps
    term_runs      personal on four one-hot users with the population / vertex term at 0 and at 1, 200 steps

Registered through ``pytest_plugins`` in tests/conftest.py.
"""

from __future__ import annotations

import pytest

FOUR_USERS = {"users": "four-one-hot", "corpus_prompts": 400, "steps": 300, "eval_every": 100}


@pytest.fixture(scope="session")
def four_users(tmp_path_factory, cache_root, small_corpus_embeddings) -> dict:
    """{method: (run dir, evaluation records)} for traditional, vpl and personal on the same four one-hot users and
    questions. personal keeps its preset's pairs (every strict pair, agreed_share 1) and so does traditional here, so
    the two score the same people on the same pairs; vpl keeps the study's contested pairs."""
    from core.training.config import build_config
    from core.training.launch import train_grid

    root = tmp_path_factory.mktemp("four-users")
    cfgs = {"personal": {"preset": "personal"}, "traditional": {"preset": "traditional", "agreed_share": 1.0},
            "vpl": {"preset": "vpl"}}
    built = [build_config({**c, **FOUR_USERS, "cache_dir": cache_root}) for c in cfgs.values()]
    hists = train_grid(built, [root / m for m in cfgs], log=lambda m: None)
    return {m: (root / m, h) for m, h in zip(cfgs, hists, strict=True)}


@pytest.fixture(scope="session")
def term_runs(tmp_path_factory, cache_root, small_corpus_embeddings) -> dict:
    """{(field, value): Trainer} for personal on four one-hot users (400 questions, 200 steps) with population_coef
    and vertex_coef each at 0 and at 1 (the other at its preset value), trained as one grid; the trainers stay
    in memory, so a test reads their models and data directly."""
    from core.common.runs import RunDir
    from core.training.config import build_config
    from core.training.grid import Grid
    from core.training.shared import Shared
    from core.training.trainer import Trainer

    root = tmp_path_factory.mktemp("terms")
    common = {"preset": "personal", "users": "four-one-hot", "corpus_prompts": 400, "steps": 200, "eval_every": 200,
              "people_every": 0, "cache_dir": cache_root}
    keys = [(f, v) for f in ("population_coef", "vertex_coef") for v in (0.0, 1.0)]
    shared = Shared()
    trainers = [Trainer(build_config({**common, f: v}), RunDir(root / f"{f}-{v}").create(), log=lambda m: None,
                        shared=shared) for f, v in keys]
    Grid(trainers, log=lambda m: None).fit()
    return dict(zip(keys, trainers, strict=True))

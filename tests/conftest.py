"""Shared fixtures. Everything runs offline: no hub is ever contacted."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def minilm():
    """The bundled all-MiniLM-L6-v2, loaded once per test session."""
    from core.encoders import TextEncoder

    return TextEncoder.load()


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory):
    """One embedding cache for the whole session, so each corpus text is encoded at most once."""
    root = os.environ.get("PREFLENS_TEST_CACHE")
    return root or str(tmp_path_factory.mktemp("emb-cache"))


@pytest.fixture(scope="session")
def small_corpus():
    """400 questions of the offline corpus (seed 0): big enough to learn, small enough to embed."""
    from core.data import generate_table

    return generate_table(n_prompts=400, seed=0)


@pytest.fixture(scope="session")
def small_corpus_embeddings(small_corpus, minilm, cache_root):
    """float32 (400 * 4, 384): MiniLM embeddings of every (prompt, response) text, row q*4 + c."""
    from core.data.probes import all_texts
    from core.encoders import EmbeddingCache

    return EmbeddingCache(cache_root, minilm).get(all_texts(small_corpus))


LESSON_IDS = {"vpl-adaptive": "vpl-adaptive-20260101-000000-aaaaaa", "traditional": "traditional-20260101-000000-bbbbbb"}


@pytest.fixture(scope="session")
def lesson_runs_root(tmp_path_factory, cache_root, small_corpus_embeddings):
    """A runs root with a finished two-opposed vpl-adaptive run (400 questions, 150 steps) and a
    traditional run on the same data (20 steps), under generated-looking run ids."""
    from core.config import build_config
    from core.train import train

    root = tmp_path_factory.mktemp("lesson-runs")
    lesson = {"corpus_prompts": 400, "steps": 150, "eval_every": 25, "cache_dir": cache_root}
    train(build_config({"preset": "vpl-adaptive", **lesson}), root / LESSON_IDS["vpl-adaptive"], log=lambda m: None)
    train(build_config({"preset": "traditional", **lesson, "steps": 20}), root / LESSON_IDS["traditional"],
          log=lambda m: None)
    return root

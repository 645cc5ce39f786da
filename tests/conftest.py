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

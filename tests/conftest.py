"""Shared fixtures. Everything runs offline: no hub is ever contacted."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sys  # noqa: E402

import pytest  # noqa: E402

CORES = len(os.sched_getaffinity(0))


@pytest.fixture(autouse=True)
def every_core_for_torch():
    """Each test starts with torch on every core, as a fresh process would: a frozen-encoder Trainer built
    directly (train() puts the count back) sets this process's torch to one thread for its small heads, and
    every later test would run its transformer forwards on one core of an otherwise idle machine."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(CORES)

# runs several modules read, trained once per session (tests/fixtures_runs.py)
pytest_plugins = ["tests.fixtures_runs"]


@pytest.fixture(scope="session")
def minilm():
    """The bundled all-MiniLM-L6-v2, loaded once per test session."""
    from core.models.encoders import TextEncoder

    return TextEncoder.load()


@pytest.fixture(scope="session")
def cache_root():
    """The embedding cache scripts/setup.sh warmed (~/.cache/preflens/embeddings, or $PREFLENS_CACHE), or
    $PREFLENS_TEST_CACHE: each text is encoded at most once, across sessions too. Keyed by the encoder's
    weights (their content), so it holds only what that encoder computes; tests of the cache itself make
    their own."""
    from core.models.embedding_store import default_cache_root

    return os.environ.get("PREFLENS_TEST_CACHE") or str(default_cache_root())


@pytest.fixture(scope="session")
def small_corpus():
    """400 questions of the offline corpus (seed 0): big enough to learn, small enough to embed."""
    from core.data import generate_table

    return generate_table(n_prompts=400, seed=0)


@pytest.fixture(scope="session")
def small_corpus_embeddings(small_corpus, minilm, cache_root):
    """float32 (400 * 4, 384): MiniLM embeddings of every (prompt, response) text, row q*4 + c."""
    from core.data.probes import all_texts
    from core.models.embedding_store import EmbeddingCache

    return EmbeddingCache(cache_root, minilm).get(all_texts(small_corpus))


LESSON_IDS = {"vpl-adaptive": "vpl-adaptive-20260101-000000-aaaaaa", "traditional": "traditional-20260101-000000-bbbbbb"}


@pytest.fixture(scope="session")
def lesson_runs_root(tmp_path_factory, cache_root, small_corpus_embeddings):
    """A runs root with a finished two-opposed vpl-adaptive run (400 questions, 150 steps) and a
    traditional run on the same data (20 steps), under generated-looking run ids."""
    from core.training.config import build_config
    from core.training.launch import train

    root = tmp_path_factory.mktemp("lesson-runs")
    lesson = {"corpus_prompts": 400, "steps": 150, "eval_every": 25, "cache_dir": cache_root}
    train(build_config({"preset": "vpl-adaptive", **lesson}), root / LESSON_IDS["vpl-adaptive"], log=lambda m: None)
    train(build_config({"preset": "traditional", **lesson, "steps": 20}), root / LESSON_IDS["traditional"],
          log=lambda m: None)
    return root


# SmolLM2-135M-Instruct (the bundled GGUF, dequantized once into the judge cache) is the study's encoder and
# the persona / few-shot judge. Each form loads once per session here; child processes (the CLI and server
# tests) load their own.
@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2 as the study's text encoder (last-token pooling, 64 tokens), its weights loaded here (and the
    GGUF dequantized, on a cold machine) rather than inside a timed test. Tests that change its tokenizer
    put it back."""
    from core.models.encoders import TextEncoder

    enc = TextEncoder.load("bundled-smollm2", max_length=64)
    enc.model  # noqa: B018 - the property loads the weights
    return enc


@pytest.fixture(scope="session")
def smollm2_judge():
    """SmolLM2 as the local judge (``LocalJudge('default')``, batch 4: what ``make_judge('default')`` builds).
    Its prefix cache only holds key-value states of prompts it has already seen, so answers do not depend on
    which test ran before; tests that change ``reuse_prefix`` or ``batch_size`` put them back. It computes on
    every core: the suite runs one test at a time, so nothing else holds one (the judge's default of one
    thread is for a busy machine)."""
    from core.personas.judges import LocalJudge

    return LocalJudge("default", batch_size=4, threads=CORES)


@pytest.fixture
def default_judge_is_the_session_judge(monkeypatch, smollm2_judge):
    """``make_judge('default')`` / ``make_judge('bundled-smollm2')`` without options return the session's judge
    in this process (an in-process few-shot run), instead of loading SmolLM2 again; any other spec loads as
    before, and worker processes load their own."""
    from core.personas import judges

    real = judges.make_judge

    def make_judge(spec: str = "default", **kwargs):
        if spec in ("default", "bundled-smollm2") and not kwargs:
            return smollm2_judge
        return real(spec, **kwargs)

    monkeypatch.setattr(judges, "make_judge", make_judge)
    return smollm2_judge

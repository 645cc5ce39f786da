"""The offline corpus must be learnable (aspects readable from text) and contested (users disagree)."""

import numpy as np

from core.data import generate_rows, generate_table, non_dominated_mask
from core.data.corpus import main as corpus_main
from core.data.probes import embedding_probe, tfidf_probe
from core.data.table import ASPECTS
from core.users.tastes import contested_pairs, preset, user_pairs


def test_generation_is_deterministic_and_uses_the_ultrafeedback_schema(tmp_path):
    a, b = generate_rows(n_prompts=20, seed=4), generate_rows(n_prompts=20, seed=4)
    assert a == b and a != generate_rows(n_prompts=20, seed=5)
    comp = a[0]["completions"][0]
    assert set(comp) >= {"model", "principle", "custom_system_prompt", "response", "annotations",
                         "critique", "overall_score", "fine-grained_score"}
    assert set(comp["annotations"]) == set(ASPECTS)
    out = tmp_path / "c.jsonl"
    assert corpus_main(["--seed", "0", "--out", str(out), "--n-prompts", "30"]) == 0
    assert len(out.read_text().splitlines()) == 30


def test_prompts_are_distinct_and_tables_have_1500_questions():
    t = generate_table(n_prompts=1500, seed=0)
    assert len(t) == 1500 and len(set(t.prompts)) == 1500
    # within a question each aspect's four levels are distinct: single-aspect users never tie
    for k in range(4):
        assert (np.sort(t.ratings[:, :, k], axis=1)[:, 1:] != np.sort(t.ratings[:, :, k], axis=1)[:, :-1]).all()


def test_aspects_vary_independently():
    t = generate_table(n_prompts=1500, seed=0)
    _, corr = t.aspect_stats()
    off = corr.to_numpy()[~np.eye(4, dtype=bool)]
    assert np.abs(off).max() <= 0.4


def test_two_opposed_users_disagree_on_at_least_30_percent_of_pairs():
    t = generate_table(n_prompts=1500, seed=0)
    W = preset("two-opposed")
    n_all = len(t) * 6  # 4 completions -> 6 pairs per question
    pairs, _ = contested_pairs(t, W)
    assert len(pairs) / n_all >= 0.30
    assert all(len(p) == n_all for p in user_pairs(t, W))  # no ties for single-aspect users
    assert 0.2 < non_dominated_mask(t).mean() < 0.9  # the study's filter keeps a workable share


def test_tfidf_probe_reads_every_aspect_and_the_knobs_weaken_it():
    clear = tfidf_probe(generate_table(n_prompts=1500, seed=0))
    assert min(clear.values()) >= 0.7, clear
    faint = tfidf_probe(generate_table(n_prompts=1500, seed=0, signal=0.3))
    noisy = tfidf_probe(generate_table(n_prompts=1500, seed=0, rating_noise=0.6))
    for a in ASPECTS:
        assert faint[a] < clear[a] - 0.2, (a, faint[a], clear[a])
        assert noisy[a] < clear[a] - 0.2, (a, noisy[a], clear[a])


def test_minilm_probe_reads_every_aspect(small_corpus, small_corpus_embeddings):
    rho = embedding_probe(small_corpus, small_corpus_embeddings)
    assert min(rho.values()) >= 0.6, rho

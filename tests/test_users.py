import numpy as np
import pytest

from core.data import PreferenceTable
from core.users.tastes import (
    UserError,
    contested_pairs,
    disagreement_matrix,
    info_gain_select,
    preferred,
    preset,
    preset_groups,
    sample_contexts,
    user_pairs,
    user_scores,
    validate_users,
    validate_weights,
)


def _table(ratings):
    r = np.asarray(ratings, dtype=np.float32)
    q, c = r.shape[:2]
    return PreferenceTable([f"q{i}" for i in range(q)], [f"p{i}" for i in range(q)], ["s"] * q,
                           [[f"r{i}{j}" for j in range(c)] for i in range(q)], r)


def test_presets_have_the_studys_sizes_and_parameters():
    assert preset("two-opposed").tolist() == [[1, 0, 0, 0], [0, 1, 0, 0]]
    for name in ("random", "cluster"):
        W = preset(name, seed=3)
        assert W.shape == (100, 4)
        assert np.allclose(W.sum(1), 1) and (W >= 0).all()
        assert np.allclose(W[-1], 0.25)  # the uniform baseline user
        assert len(preset_groups(name)) == 100
    r = preset("random", seed=0)[:99]
    assert np.allclose(r.mean(0), 0.25, atol=0.05)  # Dirichlet(1,1,1,1) mean
    c = preset("cluster", seed=0)
    for rows, alpha in ((slice(0, 49), [2.5] * 4), (slice(49, 79), [0.7, 0.3, 6.0, 3.0]),
                        (slice(79, 99), [7.5, 0.5, 1.2, 0.8])):
        mean = np.asarray(alpha) / sum(alpha)
        assert np.allclose(c[rows].mean(0), mean, atol=0.08), (rows, c[rows].mean(0), mean)
    assert not np.allclose(preset("random", seed=0), preset("random", seed=1))
    assert np.allclose(preset("random", seed=5), preset("random", seed=5))


def test_weights_are_validated_and_normalized():
    assert np.allclose(validate_weights([2, 2, 0, 0]), [0.5, 0.5, 0, 0])
    with pytest.raises(UserError, match="'honesty' is negative"):
        validate_weights([1, -0.5, 0, 0])
    with pytest.raises(UserError, match="must have 4 numbers"):
        validate_weights([1, 2, 3])
    with pytest.raises(UserError, match="sum to 0"):
        validate_weights([0, 0, 0, 0])
    with pytest.raises(UserError, match="'truthfulness' is not a finite"):
        validate_weights([1, 0, 0, float("nan")])
    with pytest.raises(UserError, match="user 1:"):
        validate_users([[1, 0, 0, 0], [0, 0, -1, 1]])
    with pytest.raises(UserError, match="unknown preset"):
        preset("everyone")


def test_scores_labels_and_ties_by_hand():
    # one question, three completions; ratings over (help, honest, follow, truth)
    t = _table([[[5, 1, 3, 3], [1, 5, 3, 3], [3, 3, 3, float("nan")]]])
    W = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0.5, 0.5, 0, 0]])
    s = user_scores(t, W)
    assert s[0, 0].tolist() == [5, 1, 3] and s[1, 0].tolist() == [1, 5, 3]
    assert s[2, 0].tolist() == [3, 3, 3]  # truthfulness is N/A but weighs 0 for these users
    assert np.isnan(user_scores(t, [[0, 0, 0, 1]])[0, 0, 2])
    assert preferred(s).tolist() == [[0], [1], [-1]]  # the balanced user sees a three-way tie
    pairs = user_pairs(t, W)
    assert pairs[0].tolist() == [[0, 0, 1], [0, 0, 2], [0, 2, 1]]
    assert pairs[1].tolist() == [[0, 1, 0], [0, 2, 0], [0, 1, 2]]
    assert len(pairs[2]) == 0  # all ties dropped


def test_disagreement_matrix_by_hand_and_fast_for_100_users():
    top = np.array([[0, 1, -1], [0, 2, 1], [1, 1, 1]])
    D = disagreement_matrix(top)
    assert D.tolist() == [[0, 1, 1], [1, 0, 2], [1, 2, 0]]
    big = np.random.default_rng(0).integers(0, 4, size=(100, 1500))
    D = disagreement_matrix(big)
    assert D.shape == (100, 100) and (np.diag(D) == 0).all() and (D == D.T).all()
    i, j = 3, 17
    assert D[i, j] == int((big[i] != big[j]).sum())


def test_contested_pairs_keep_only_strict_disagreements():
    t = _table([[[5, 1, 0, 0], [1, 5, 0, 0], [5, 5, 0, 0]]])
    pairs, first = contested_pairs(t, [[1, 0, 0, 0], [0, 1, 0, 0]])
    # (0,1): users disagree -> kept; (0,2): user0 ties -> dropped; (1,2): user1 ties -> dropped
    assert pairs.tolist() == [[0, 0, 1]]
    assert first.tolist() == [[True], [False]]


def test_info_gain_matches_a_hand_computed_example():
    # 4 users x 3 questions, answers are each user's top completion
    top = np.array([[0, 0, 1], [0, 1, 1], [1, 0, 1], [1, 1, 0]])
    chosen, gains = info_gain_select(top, k=3)
    # step 1: q0 and q1 split 2/2 -> log 2; q2 splits 3/1 -> (3 log 4/3 + log 4)/4 = 0.562: pick q0
    # step 2: given q0, q1 separates everyone -> log 4; q2 -> (2 log 2 + 2 log 4)/4 = 1.040
    # step 3: only q2 is left and everyone is already apart -> log 4
    assert chosen == [0, 1, 2]
    assert np.allclose(gains, [np.log(2), np.log(4), np.log(4)])
    chosen, gains = info_gain_select(top, k=1, candidates=[2, 1])
    assert chosen == [1] and np.isclose(gains[0], np.log(2))


def test_contexts_never_use_the_querys_own_question_and_are_fixed_by_seed():
    pool_q = np.array([0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    queries = np.array([0, 1, 5])
    a = sample_contexts(queries, pool_q, 8, np.random.default_rng(0))
    b = sample_contexts(queries, pool_q, 8, np.random.default_rng(0))
    assert (a == b).all() and a.shape == (3, 8)
    for n, q in enumerate(queries):
        assert (pool_q[a[n]] != q).all()
        assert len(set(a[n].tolist())) == 8
    with pytest.raises(ValueError, match="pool too small"):
        sample_contexts(np.array([0]), np.array([0, 0, 1]), 2, np.random.default_rng(0))

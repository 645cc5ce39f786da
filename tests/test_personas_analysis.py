"""Analyses on tiny fixtures whose answers are computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.personas import analysis
from core.personas.simulate import combine_pairwise, compare_totals


def _rec(user, qid, choice, preferred="first", name=None, answers=None):
    return {"user": user, "name": name or f"u{user}", "occupation": f"o{user}", "group": "", "qid": qid,
            "choice": choice, "preferred": preferred, "answers": answers}


def test_pairwise_combination_classes():
    assert combine_pairwise("A", "B") == "first"  # A in base order, B (= base first) when swapped
    assert combine_pairwise("B", "A") == "second"
    assert combine_pairwise("A", "A") == "inconsistent"  # always the first position: pure position bias
    assert combine_pairwise(None, "A") == "invalid"
    assert compare_totals(3, 1) == "first" and compare_totals(0, 2) == "second"
    assert compare_totals(1, 1) == "tie" and compare_totals(None, 1) == "invalid"


def test_choice_distributions_and_preferred_share():
    recs = [_rec(0, "q1", "first"), _rec(0, "q2", "second", preferred="second"), _rec(0, "q3", "invalid"),
            _rec(1, "q1", "second"), _rec(1, "q2", "inconsistent", preferred="second"), _rec(1, "q3", "first")]
    df = analysis.results_frame(recs)
    per_user = analysis.choice_distribution(df, "name")
    assert per_user.loc["u0"].to_dict() == pytest.approx({"first": 1 / 3, "second": 1 / 3, "tie": 0,
                                                          "inconsistent": 0, "invalid": 1 / 3})
    per_q = analysis.choice_distribution(df, "qid")
    assert per_q.loc["q1", "first"] == 0.5 and per_q.loc["q2", "inconsistent"] == 0.5
    share = analysis.preferred_share(df)
    # valid: u0q1 agrees, u0q2 agrees, u1q1 disagrees, u1q3 agrees -> 3/4
    assert share["share"] == 0.75 and share["n_valid"] == 4 and share["n_items"] == 6
    assert share["per_question"].loc["q1"].tolist() == [1, 1]


def test_preference_matrix_and_cosine_by_hand():
    recs = [_rec(0, "q1", "first"), _rec(0, "q2", "first"),
            _rec(1, "q1", "first"), _rec(1, "q2", "second"),
            _rec(2, "q1", "invalid"), _rec(2, "q2", "invalid")]
    m, users, qids = analysis.preference_matrix(analysis.results_frame(recs))
    assert users == [0, 1, 2] and qids == ["q1", "q2"]
    assert m.tolist() == [[1, 1], [1, -1], [0, 0]]
    sim = analysis.cosine_similarity(m)
    assert sim[0, 1] == pytest.approx(0.0)  # (1*1 + 1*-1) / (sqrt2 * sqrt2)
    assert sim[0, 2] == 0 and sim[2, 2] == 1
    sim2 = analysis.cosine_similarity(np.array([[1, 1, 0], [1, 0, 0]]))
    assert sim2[0, 1] == pytest.approx(1 / math.sqrt(2))


def test_mutual_top_k_graph_and_components_by_hand():
    # users 0,1 very similar; 2,3 similar; 4 likes 0 but 0 prefers 1 (k=1): not mutual
    sim = np.array([
        [1.0, 0.9, 0.1, 0.0, 0.5],
        [0.9, 1.0, 0.2, 0.1, 0.3],
        [0.1, 0.2, 1.0, 0.8, 0.0],
        [0.0, 0.1, 0.8, 1.0, 0.2],
        [0.5, 0.3, 0.0, 0.2, 1.0],
    ])
    g = analysis.mutual_top_k_graph(sim, k=1, labels=list("abcde"))
    assert sorted(g.edges()) == [(0, 1), (2, 3)]
    assert analysis.components(g) == [[0, 1], [2, 3]]
    assert g.nodes[4]["label"] == "e"
    g2 = analysis.mutual_top_k_graph(sim, k=2)
    # top2: 0->{1,4} 1->{0,4} 2->{3,1} 3->{2,4} 4->{0,1}: mutual 0-1, 0-4, 1-4, 2-3
    assert sorted(g2.edges()) == [(0, 1), (0, 4), (1, 4), (2, 3)]
    assert analysis.components(g2) == [[0, 1, 4], [2, 3]]


def test_occupation_order_and_position_bias():
    order = analysis.occupation_order(["z", "y", "x"], ["pilot", "baker", "pilot"], ["b", "b", "a"])
    assert order == [2, 1, 0]
    recs = [_rec(0, "q1", "inconsistent", answers=["A", "A"]), _rec(0, "q2", "first", answers=["A", "B"]),
            _rec(0, "q3", "invalid", answers=[None, "A"])]
    pb = analysis.position_bias(recs)
    assert pb["valid_answers"] == 5 and pb["share_first_position"] == pytest.approx(4 / 5)
    assert pb["per_order"] == [1.0, pytest.approx(2 / 3)]
    # a run that read the letters from logits only (pairwise_method="logits") counts those instead
    logit_recs = [{**r, "logit_answers": r.pop("answers")} for r in recs]
    assert analysis.position_bias(logit_recs) == pb

"""The [[A, B, C, D]] grade parser and the A/B answer parser on messy, real-looking outputs."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from core.personas.parse import parse_choice, parse_scores

grades = st.lists(st.integers(-2, 2), min_size=4, max_size=4)
noise = st.text(alphabet=st.characters(blacklist_characters="[]"), max_size=80)
sep = st.sampled_from([",", ", ", " ,", " , ", ";"])
minus = st.sampled_from(["-", "\u2212"])


def _fmt(values, s, m, plus):
    out = []
    for v in values:
        if v < 0:
            out.append(f"{m}{-v}")
        else:
            out.append(f"+{v}" if (plus and v > 0) else str(v))
    return "[[" + s.join(out) + "]]"


@settings(max_examples=200, deadline=None)
@given(grades, noise, noise, sep, minus, st.booleans())
def test_grades_are_found_in_any_surrounding_text(values, before, after, s, m, plus):
    assert parse_scores(before + _fmt(values, s, m, plus) + after) == values


@settings(max_examples=100, deadline=None)
@given(grades, grades, noise)
def test_the_last_valid_block_wins_over_a_restated_format(first, last, mid):
    text = "Format: [[A, B, C, D]]. Draft " + _fmt(first, ", ", "-", False) + mid + " Final: " + _fmt(last, ", ", "-", False)
    assert parse_scores(text) == last


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-9, 9), min_size=1, max_size=6), noise)
def test_wrong_count_or_out_of_range_is_none_never_clipped(values, text):
    block = "[[" + ", ".join(str(v) for v in values) + "]]"
    expected = values if len(values) == 4 and all(-2 <= v <= 2 for v in values) else None
    assert parse_scores(text.replace("[", "").replace("]", "") + block) == expected


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_never_raises_on_arbitrary_text(text):
    out = parse_scores(text)
    assert out is None or (len(out) == 4 and all(-2 <= v <= 2 for v in out))
    assert parse_choice(text) in (None, "A", "B")


def test_messy_real_looking_outputs():
    assert parse_scores("Analysis: fine.\n\n**Final ratings:** [[ 2 , -1, 0 ,1 ]]") == [2, -1, 0, 1]
    assert parse_scores("[[2, 1, 0]] and [[1.0, 0, -2, 2]]") == [1, 0, -2, 2]
    assert parse_scores("[[1.5, 0, 0, 0]]") is None
    assert parse_scores("ratings: 1, 2, 0, 1") is None
    assert parse_scores("[[A, B, C, D]]") is None
    assert parse_scores("[[3, 0, 0, 0]]") is None


def test_choice_parser():
    assert parse_choice("[[B]]") == "B"
    assert parse_choice("I would pick Response A because it is shorter.") == "A"
    assert parse_choice("A") == "A"
    assert parse_choice("A good answer is B.") == "B"
    assert parse_choice("Both A and B are fine") is None
    assert parse_choice("[[A]] or [[B]]") is None
    assert parse_choice("I cannot decide.") is None

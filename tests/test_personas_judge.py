"""The real bundled judge (SmolLM2-135M GGUF): both modes on 2 stories x 2 questions, prefix reuse,
the packed logit path against the plain one, A/B probabilities, resume after an interrupted run, the
judge-quality probe. The judge is the session's (tests/conftest.py): SmolLM2 loads once per test session."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.data import generate_table
from core.personas import default_stories, prompts
from core.personas.parse import parse_choice, parse_scores
from core.personas.simulate import Cancelled, done_keys, pick_questions, run_simulation

pytestmark = pytest.mark.slow


@pytest.fixture
def judge(smollm2_judge):
    """The session's SmolLM2 judge (tests/conftest.py), shared with the few-shot and endpoint tests."""
    return smollm2_judge


@pytest.fixture(scope="module")
def questions():
    return pick_questions(generate_table(40, seed=3), 3, seed=3)


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


# The letter a judge names in the base order (A = first) and in the swapped order (A = second) -> the
# base-order choice: a judge that names the same letter both times is following the position, not a reply.
POSITIONAL = {("A", "B"): "first", ("B", "A"): "second", ("A", "A"): "inconsistent", ("B", "B"): "inconsistent"}


def _by_total(grades):
    """Two responses' grade lists -> which one totals more: written out here, independently of simulate.py."""
    if None in grades:
        return "invalid"
    a, b = (sum(g) for g in grades)
    return "tie" if a == b else "first" if a > b else "second"


def test_both_modes_on_two_stories_and_two_questions(judge, questions, tmp_path):
    # two questions (was three: 46 s of the suite, now about 30); the per-record assertions are unchanged
    stories, questions = default_stories()[:2], questions[:2]
    pw, sc = tmp_path / "pw", tmp_path / "sc"
    pw.mkdir()
    sc.mkdir()
    counts = run_simulation(judge, stories, questions, mode="pairwise", run_dir=pw, max_new_tokens=6)
    assert counts == {"total": 4, "done": 4, "skipped_existing": 0, "read_from": {"text": 4}}
    recs = _records(pw)
    assert len(recs) == 4 and len({r["key"] for r in recs}) == 4
    for r in recs:
        # SmolLM2-135M answers "A" or "A:" after 6 tokens: each reply (base order, then swapped) is read as a
        # letter, in its own order, and the two letters give the base-order choice
        assert len(r["raw"]) == 2 and r["answers"] == [parse_choice(t) for t in r["raw"]], r
        assert None not in r["answers"], r["raw"]
        assert r["choice"] == r["gen_choice"] == POSITIONAL[tuple(r["answers"])], r
    counts = run_simulation(judge, stories, questions, mode="scoring", run_dir=sc, max_new_tokens=16,
                            scoring_method="both")
    assert counts["read_from"] == {"logits": 4}
    recs = _records(sc)
    assert len(recs) == 4
    for r in recs:
        assert r["read_from"] == "logits"
        assert r["choice"] == r["logit_choice"] in ("first", "second", "tie")  # logits cannot fail to parse
        # the generated grades are the [[t, i, h, p]] blocks of the two replies (16 tokens of SmolLM2-135M hold
        # none: it writes prose or a single-bracket list), and the text choice follows their totals
        assert r["gen_scores"] == [parse_scores(t) for t in r["raw"]], r["raw"]
        assert r["gen_choice"] == _by_total(r["gen_scores"]), r
        e = np.array(r["logit_scores"])
        assert e.shape == (2, 4) and np.all(e >= -2) and np.all(e <= 2)
        assert 0 < min(min(m) for m in r["logit_mass"]) and max(max(m) for m in r["logit_mass"]) <= 1


def test_prefix_reuse_and_batching_do_not_change_answers(judge, questions):
    story = default_stories()[5]
    prefix = prompts.scoring_prefix(story)
    sufs = [prompts.scoring_suffix(q.prompt, q.first) for q in questions[:2]]
    cues = [prompts.logit_cue(d) for d in prompts.DIMENSIONS]
    old = judge.reuse_prefix, judge.batch_size
    try:
        judge.reuse_prefix, judge.batch_size = True, 2
        a = judge.rating_probs(prefix, sufs, cues)
        ga = judge.generate(prefix, sufs, 6)
        judge.reuse_prefix, judge.batch_size = False, 1
        b = judge.rating_probs(prefix, sufs, cues)
        gb = judge.generate(prefix, sufs, 6)
    finally:
        judge.reuse_prefix, judge.batch_size = old
    np.testing.assert_allclose(a.probs, b.probs, atol=2e-3)
    np.testing.assert_allclose(a.probs.sum(-1), 1.0, atol=1e-6)
    assert ga == gb
    # the packed tree-mask branches equal plain teacher forcing of each whole grade string, no cache
    import torch

    head, body = judge.split_template(prefix, sufs[1])
    cue = cues[2]
    naive = []
    for r in (-2, -1, 0, 1, 2):
        ctx = head + body
        full = judge.tokenizer.encode(f"{cue} {r}", add_special_tokens=False)
        stem = judge.tokenizer.encode(cue, add_special_tokens=False)
        k = next(i for i in range(len(full)) if i >= len(stem) or full[i] != stem[i])
        ids = torch.tensor([ctx + full])
        with torch.inference_mode(), judge._threads():
            lp = torch.log_softmax(judge.model(ids).logits[0].float(), -1)
        naive.append(float(sum(lp[len(ctx) + j - 1, full[j]] for j in range(k, len(full))).exp()))
    naive = np.array(naive)
    np.testing.assert_allclose(a.mass[1, 2], naive.sum(), rtol=2e-3)
    np.testing.assert_allclose(a.probs[1, 2], naive / naive.sum(), atol=2e-3)


def test_packed_path_gives_the_plain_paths_grades(judge, questions):
    """The packed path (several personas per forward pass, tries, cached prefixes) against the plain one:
    one prompt at a time, no prefix cache, each cue's grades scored as separate branches."""
    # two stories (was three: 37 s of the suite): 8 prompts, still two personas in each packed forward
    stories = default_stories()[:2]
    cues = [prompts.logit_cue(d) for d in prompts.DIMENSIONS]
    pairs = [(prompts.scoring_prefix(st), prompts.scoring_suffix(q.prompt, r))
             for st in stories for q in questions[:2] for r in (q.first, q.second)]
    old = judge.reuse_prefix, judge.batch_size
    try:
        judge.reuse_prefix, judge.batch_size = True, 8
        packed = judge.rating_probs_many(pairs, cues)
        judge.reuse_prefix, judge.batch_size = False, 1
        plain = [judge.rating_probs_unpacked(pre, [suf], cues) for pre, suf in pairs]
    finally:
        judge.reuse_prefix, judge.batch_size = old
    plain_exp = np.concatenate([r.expected for r in plain])
    plain_mass = np.concatenate([r.mass for r in plain])
    assert packed.expected.shape == (8, 4)
    np.testing.assert_allclose(packed.expected, plain_exp, atol=1e-4)
    np.testing.assert_allclose(packed.mass, plain_mass, rtol=1e-4)
    assert np.ptp(packed.expected) > 0.05  # the grades differ between prompts: a real comparison


def test_ab_probabilities_match_a_plain_forward(judge, questions):
    """choice_probs after the "[[" prefill equals softmax mass of the A/B tokens from one uncached forward."""
    import torch

    story = default_stories()[7]
    prefix = prompts.pairwise_prefix(story)
    sufs = [prompts.pairwise_suffix(q.prompt, q.first, q.second) for q in questions[:2]]
    res = judge.choice_probs(prefix, sufs, ("A", "B"), prefill=prompts.PAIRWISE_PREFILL)
    ids = judge.option_ids(("A", "B"))
    assert judge.tokenizer.encode(" A", add_special_tokens=False)[0] in ids[0]
    assert judge.tokenizer.encode("b", add_special_tokens=False)[0] in ids[1]
    for i, suf in enumerate(sufs):
        head, body = judge.split_template(prefix, suf)
        full = head + body + judge.tokenizer.encode(prompts.PAIRWISE_PREFILL, add_special_tokens=False)
        with torch.inference_mode(), judge._threads():
            p = torch.softmax(judge.model(torch.tensor([full])).logits[0, -1].double(), -1)
        a, b = float(p[ids[0]].sum()), float(p[ids[1]].sum())
        np.testing.assert_allclose(res.probs[i], [a / (a + b), b / (a + b)], atol=1e-4)
        np.testing.assert_allclose(res.mass[i], a + b, rtol=1e-3)


class RecordingJudge:
    """The real judge's choice_probs_many, keeping P(A) of every (prefix, suffix) prompt it was asked about."""

    supports_logits = True

    def __init__(self, inner):
        self.inner, self.p_a = inner, {}

    def choice_probs_many(self, pairs, *args, **kwargs):
        res = self.inner.choice_probs_many(pairs, *args, **kwargs)
        self.p_a.update({pair: float(p) for pair, p in zip(pairs, res.probs[:, 0], strict=True)})
        return res


def test_pairwise_from_logits_records_probabilities(judge, questions, tmp_path):
    """Each record's P(A) pair is the judge's P(A) for the base-order prompt (first shown as A) and for the
    prompt with the two replies actually swapped (second shown as A)."""
    stories = default_stories()[:2]
    recording = RecordingJudge(judge)
    counts = run_simulation(recording, stories, questions[:2], mode="pairwise", run_dir=tmp_path,
                            pairwise_method="logits", chunk=3)
    assert counts["read_from"] == {"logits": 4}
    recs = {r["key"]: r for r in _records(tmp_path)}
    assert len(recs) == 4 and len(recording.p_a) == 8  # 4 items, each asked in two distinct orders
    for u, story in enumerate(stories):
        prefix = prompts.pairwise_prefix(story)
        for q in questions[:2]:
            r = recs[f"{u}::{q.qid}"]
            assert r["read_from"] == "logits" and "raw" not in r  # nothing generated
            pa, pb = r["ab_probs"]
            base = recording.p_a[(prefix, prompts.pairwise_suffix(q.prompt, q.first, q.second))]
            swapped = recording.p_a[(prefix, prompts.pairwise_suffix(q.prompt, q.second, q.first))]
            assert (pa, pb) == pytest.approx((base, swapped), abs=1e-4), (u, q.qid)
            # the swap changes what the judge reads: measured |pa - pb| 0.019 to 0.039 on these four items
            assert abs(pa - pb) > 5e-3, (u, q.qid)
            assert r["p_first"] == pytest.approx(0.5 * (pa + 1 - pb), abs=2e-4)
            letters = tuple("A" if p > 0.5 else "B" for p in (pa, pb))
            assert r["choice"] == r["logit_choice"] == POSITIONAL[letters], r


class CountingJudge:
    def __init__(self, inner):
        self.inner, self.suffixes = inner, 0
        self.supports_logits = True

    def generate(self, prefix, suffixes, max_new_tokens):
        self.suffixes += len(suffixes)
        return self.inner.generate(prefix, suffixes, max_new_tokens)

    def rating_probs(self, prefix, suffixes, cues):
        self.suffixes += len(suffixes)
        return self.inner.rating_probs(prefix, suffixes, cues)


def test_interrupted_run_resumes_without_rescoring(judge, questions, tmp_path):
    stories = default_stories()[:2]
    counting = CountingJudge(judge)
    calls = {"n": 0}

    def stop_after_first_chunk():
        calls["n"] += 1
        return calls["n"] > 1

    with pytest.raises(Cancelled):
        run_simulation(counting, stories, questions, mode="scoring", run_dir=tmp_path, scoring_method="logits",
                       chunk=2, should_stop=stop_after_first_chunk)
    first = _records(tmp_path)
    assert len(first) == 2 and counting.suffixes == 4  # one chunk of 2 questions x 2 responses
    with open(tmp_path / "results.jsonl", "a") as fh:
        fh.write('{"key": "1::torn')  # a kill mid-write leaves a torn line; it must not count as done
    counting.suffixes = 0
    counts = run_simulation(counting, stories, questions, mode="scoring", run_dir=tmp_path, scoring_method="logits")
    assert counts == {"total": 6, "done": 6, "skipped_existing": 2, "read_from": {"logits": 4}}
    assert counting.suffixes == 2 * 4  # only the 4 remaining items, 2 responses each
    assert done_keys(tmp_path) == {f"{u}::{q.qid}" for u in range(2) for q in questions}
    from core.common.runs import read_jsonl

    recs, skipped = read_jsonl(tmp_path / "results.jsonl")
    assert skipped == 1 and recs[:2] == first


def test_quality_probe_reports_spearman_per_dimension(judge):
    from core.personas.quality import run_probe, verdict

    res = run_probe(judge, n_questions=2, seed=5)
    assert res["method"] == "logits" and res["n_responses"] == 8 and res["parse_failures"] == 0
    assert set(res["spearman"]) == {"truthfulness", "instruction_following", "helpfulness"}
    # the real judge's grades vary over the 8 responses, so every dimension gets a correlation (a judge whose
    # grades came back constant, or not at all, would get None)
    rhos = res["spearman"].values()
    assert None not in rhos, res
    assert 0 < res["rating_token_mass"] < 1
    # the verdict quotes the best dimension's correlation and reads it against the 0.3 bar
    best = max(rhos)
    assert f"best Spearman {best:.2f}" in verdict(res)
    assert ("barely tracks" in verdict(res)) == (best < 0.3)
    assert verdict({"spearman": {"truthfulness": None}}).startswith("The judge gave no usable grades")
    assert "barely tracks known quality (best Spearman 0.10" in verdict({"spearman": {"a": -0.8, "b": 0.1}})
    assert "tracks known quality on some dimensions (best Spearman 0.60)" in verdict({"spearman": {"a": -0.8, "b": 0.6}})


def test_quality_probe_correlates_each_dimension_with_its_own_true_rating():
    """The probe pairs the grades for each dimension with the corpus rating of that aspect, row by row: a
    judge that grades every response with its true ratings scores rho = 1 on each dimension (no model)."""
    from core.data import ASPECTS
    from core.personas.quality import run_probe

    table = generate_table(2, seed=5)
    truth = {table.responses[q][c]: table.ratings[q, c] for q in range(2) for c in range(table.n_completions)}
    aspect = {prompts.logit_cue(d): ASPECTS.index(a) for d, a in
              (("truthfulness", "truthfulness"), ("instruction_following", "instruction_following"),
               ("helpfulness", "helpfulness"))}

    class Oracle:
        def rating_probs(self, prefix, suffixes, cues):
            replies = [suf.split("REPLY:\n", 1)[1].split("\n\nRemember:", 1)[0] for suf in suffixes]
            grades = np.array([[truth[t][aspect[c]] for c in cues] for t in replies], dtype=float)
            return type("Grades", (), {"expected": grades, "mass": np.full_like(grades, 0.5), "source": "logits"})

    assert len(truth) == 8
    res = run_probe(Oracle(), n_questions=2, seed=5)
    assert res["spearman"] == {"truthfulness": 1.0, "instruction_following": 1.0, "helpfulness": 1.0}, res

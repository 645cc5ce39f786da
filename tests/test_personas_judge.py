"""The real bundled judge (SmolLM2-135M GGUF): both modes on 2 stories x 3 questions, prefix reuse,
the packed logit path against the plain one, A/B probabilities, resume after an interrupted run, the
judge-quality probe. The judge loads once for this module."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.data import generate_table
from core.personas import default_stories, prompts
from core.personas.simulate import Cancelled, done_keys, pick_questions, run_simulation

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def judge():
    from core.personas.judges import LocalJudge

    return LocalJudge("default", batch_size=4)


@pytest.fixture(scope="module")
def questions():
    return pick_questions(generate_table(40, seed=3), 3, seed=3)


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


def test_both_modes_on_two_stories_and_three_questions(judge, questions, tmp_path):
    stories = default_stories()[:2]
    pw, sc = tmp_path / "pw", tmp_path / "sc"
    pw.mkdir()
    sc.mkdir()
    counts = run_simulation(judge, stories, questions, mode="pairwise", run_dir=pw, max_new_tokens=6)
    assert counts == {"total": 6, "done": 6, "skipped_existing": 0, "read_from": {"text": 6}}
    recs = _records(pw)
    assert len(recs) == 6 and len({r["key"] for r in recs}) == 6
    for r in recs:
        assert r["choice"] in ("first", "second", "inconsistent", "invalid")
        assert len(r["raw"]) == 2 and r["answers"][0] in ("A", "B", None)
    counts = run_simulation(judge, stories, questions, mode="scoring", run_dir=sc, max_new_tokens=16,
                            scoring_method="both")
    assert counts["read_from"] == {"logits": 6}
    recs = _records(sc)
    assert len(recs) == 6
    for r in recs:
        assert r["read_from"] == "logits"
        assert r["choice"] == r["logit_choice"] in ("first", "second", "tie")  # logits cannot fail to parse
        assert r["gen_choice"] in ("first", "second", "tie", "invalid")
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
    stories = default_stories()[:3]
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
    assert packed.expected.shape == (12, 4)
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


def test_pairwise_from_logits_records_probabilities(judge, questions, tmp_path):
    stories = default_stories()[:2]
    counts = run_simulation(judge, stories, questions[:2], mode="pairwise", run_dir=tmp_path,
                            pairwise_method="logits", chunk=3)
    assert counts["read_from"] == {"logits": 4}
    for r in _records(tmp_path):
        assert r["read_from"] == "logits" and "raw" not in r  # nothing generated
        pa, pb = r["ab_probs"]
        assert 0 <= pa <= 1 and 0 <= pb <= 1
        assert r["p_first"] == pytest.approx(0.5 * (pa + 1 - pb), abs=2e-4)
        assert r["choice"] == r["logit_choice"] in ("first", "second", "inconsistent")


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
    from core.runs import read_jsonl

    recs, skipped = read_jsonl(tmp_path / "results.jsonl")
    assert skipped == 1 and recs[:2] == first


def test_quality_probe_reports_spearman_per_dimension(judge):
    from core.personas.quality import run_probe, verdict

    res = run_probe(judge, n_questions=2, seed=5)
    assert res["method"] == "logits" and res["n_responses"] == 8 and res["parse_failures"] == 0
    assert set(res["spearman"]) == {"truthfulness", "instruction_following", "helpfulness"}
    for v in res["spearman"].values():
        assert v is None or -1 <= v <= 1
    assert 0 < res["rating_token_mass"] < 1
    assert isinstance(verdict(res), str)

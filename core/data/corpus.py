"""The offline corpus: UltraFeedback-shaped rows whose texts carry the four aspect ratings.

Every response has four "slots" per aspect, each either good or bad; an aspect's level L (1..5)
means L-1 of its four slots are good:

    truthfulness           4 statements about the topic, true or visibly false (absurd claims)
    honesty                a confidence marker on each statement: hedged or falsely certain
    instruction_following  the prompt's 4 format rules (bullets, heading, closing line, no "!")
    helpfulness            4 extra sentences: useful on-topic detail or off-topic filler

Within a question, each aspect's four levels are four distinct values of 1..5 in random order,
so single-aspect users never tie and opposed users disagree on about half of the pairs; the
aspects are drawn independently of each other.

Two what-if knobs:
    signal        share of slots that follow the rating; the rest are a coin flip (1.0 = clear)
    rating_noise  share of stored ratings replaced by a uniform draw, unrelated to the text

    python -m core.data.corpus --seed 0 --out corpus.jsonl [--n-prompts 1500]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

from core.common.cli import cli_main
from core.data import corpus_text as T
from core.data.table import ASPECTS, PreferenceTable

N_SLOTS = 4  # slots per aspect; level L -> L-1 good slots


# every kind of question: (topic, prompt frame, heading rule, closing rule)
QUESTION_KINDS = list(itertools.product(range(len(T.TOPICS)), range(len(T.PROMPT_FRAMES)),
                                        range(len(T.HEADINGS)), range(len(T.CLOSINGS))))


def question(kind: tuple[int, int, int, int]) -> tuple[str, str, str, list, str, str]:
    """A question of this kind: (prompt, topic, subject, facts, heading, closing), what its answers are written from."""
    t, f, h, c = kind
    topic, subject, facts = T.TOPICS[t]
    heading, closing = T.HEADINGS[h], T.CLOSINGS[c]
    prompt = T.PROMPT_FRAMES[f].format(topic=topic) + " " + T.CONSTRAINTS.format(heading=heading, closing=closing)
    return prompt, topic, subject, facts, heading, closing


def generate_rows(n_prompts: int = 1500, seed: int = 0, signal: float = 1.0, rating_noise: float = 0.0) -> list[dict]:
    """Deterministic UltraFeedback-schema rows (``source`` = ``preflens_synth``)."""
    if n_prompts < 1:
        raise ValueError(f"n_prompts must be >= 1, got {n_prompts}")
    if not 0.0 <= signal <= 1.0:
        raise ValueError(f"signal must be in [0, 1], got {signal}")
    if not 0.0 <= rating_noise <= 1.0:
        raise ValueError(f"rating_noise must be in [0, 1], got {rating_noise}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(QUESTION_KINDS))
    rows = []
    for q in range(n_prompts):
        prompt, topic, subject, facts, heading, closing = question(QUESTION_KINDS[order[q % len(QUESTION_KINDS)]])
        repeat = q // len(QUESTION_KINDS)
        if repeat:
            prompt += f" (Variant {repeat + 1}.)"
        # levels[c, a]: 4 distinct values of 1..5 per aspect, independent across aspects
        levels = np.stack([rng.permutation(rng.choice(np.arange(1, 6), size=4, replace=False))
                           for _ in ASPECTS], axis=1)
        completions = []
        for k in range(4):
            text = _response(rng, levels[k], topic, subject, facts, heading, closing, signal)
            stored = levels[k].astype(int).copy()
            noisy = rng.random(len(ASPECTS)) < rating_noise
            stored[noisy] = rng.integers(1, 6, size=int(noisy.sum()))
            completions.append(_completion(k, text, stored))
        rows.append({
            "source": "preflens_synth",
            "instruction": prompt,
            "models": list(T.MODEL_NAMES),
            "correct_answers": [],
            "incorrect_answers": [],
            "completions": completions,
        })
    return rows


def _slots(rng: np.random.Generator, level: int, signal: float) -> np.ndarray:
    """Bool (N_SLOTS,): which slots are good. level-1 good slots, then signal-weighted coin flips."""
    good = np.zeros(N_SLOTS, dtype=bool)
    good[: level - 1] = True
    rng.shuffle(good)
    blur = rng.random(N_SLOTS) >= signal
    good[blur] = rng.random(int(blur.sum())) < 0.5
    return good


def _response(rng, level, topic, subject, facts, heading, closing, signal) -> str:
    help_l, honest_l, follow_l, truth_l = (int(x) for x in level)
    true_ok = _slots(rng, truth_l, signal)
    hedged = _slots(rng, honest_l, signal)
    useful = _slots(rng, help_l, signal)
    bullets, has_heading, has_closing, calm = _slots(rng, follow_l, signal)

    chosen = rng.choice(len(facts), size=N_SLOTS, replace=False)
    false_claims = rng.choice(len(T.FALSE_CLAIMS), size=N_SLOTS, replace=False)
    sentences = []
    for s in range(N_SLOTS):
        core = facts[chosen[s]] if true_ok[s] else f"{subject} {T.FALSE_CLAIMS[false_claims[s]]}"
        pool = T.CALIBRATED if hedged[s] else T.OVERCONFIDENT
        marker = pool[rng.integers(len(pool))]
        sentences.append(f"{marker} {_decapitalize(core)}")
    extras_useful = rng.choice(len(T.USEFUL), size=N_SLOTS, replace=False)
    extras_filler = rng.choice(len(T.FILLER), size=N_SLOTS, replace=False)
    for s in range(N_SLOTS):
        sentences.append(T.USEFUL[extras_useful[s]].format(topic=topic) if useful[s] else T.FILLER[extras_filler[s]])
    sentences = [sentences[i] for i in rng.permutation(len(sentences))]
    if not calm:  # rule "no exclamation marks" broken: shout at the end of a few sentences
        for i in rng.choice(len(sentences), size=3, replace=False):
            sentences[i] = sentences[i].rstrip(".:") + "!!!"
    body = "\n".join("- " + s for s in sentences) if bullets else " ".join(sentences)
    parts = ([heading] if has_heading else []) + [body] + ([closing] if has_closing else [])
    return "\n".join(parts)


def _decapitalize(sentence: str) -> str:
    """Lower-case the first word so a confidence marker can precede it; proper nouns stay."""
    first = sentence.split(" ", 1)[0]
    if first in T.PROPER_NOUNS:
        return sentence
    return sentence[0].lower() + sentence[1:]


def _completion(k: int, text: str, ratings: np.ndarray) -> dict:
    ann = {a: {"Rating": str(int(r)), "Rationale": f"Simulated {a.replace('_', ' ')} level {int(r)} of 5."}
           for a, r in zip(ASPECTS, ratings, strict=True)}
    mean = float(np.mean(ratings))
    return {
        "model": T.MODEL_NAMES[k],
        "principle": "helpfulness",
        "custom_system_prompt": "",
        "response": text,
        "annotations": ann,
        "critique": "",
        "overall_score": mean * 2.0,
        "fine-grained_score": mean,
    }


def generate_table(n_prompts: int = 1500, seed: int = 0, signal: float = 1.0, rating_noise: float = 0.0) -> PreferenceTable:
    """The corpus, read back through the same loader that reads real UltraFeedback."""
    from core.data.ultrafeedback import load_ultrafeedback

    rows = generate_rows(n_prompts=n_prompts, seed=seed, signal=signal, rating_noise=rating_noise)
    table = load_ultrafeedback(rows)
    table.report.update({"corpus": {"n_prompts": n_prompts, "seed": seed, "signal": signal, "rating_noise": rating_noise}})
    return table


def write_corpus(path: str | Path, **kwargs) -> int:
    rows = generate_rows(**kwargs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return len(rows)


@cli_main  # an --out that cannot be written: one "error: ..." line, exit status 2
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core.data.corpus", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output .jsonl path")
    ap.add_argument("--seed", type=int, default=0, help="random seed (same seed, same corpus)")
    ap.add_argument("--n-prompts", type=int, default=1500, help="number of questions (4 completions each)")
    ap.add_argument("--signal", type=float, default=1.0, help="share of text cues that follow the ratings (0..1)")
    ap.add_argument("--rating-noise", type=float, default=0.0, help="share of ratings replaced at random (0..1)")
    ap.add_argument("--dry-run", action="store_true", help="generate 10 prompts and print one row, write nothing")
    args = ap.parse_args(argv)
    if args.dry_run:
        rows = generate_rows(n_prompts=10, seed=args.seed, signal=args.signal, rating_noise=args.rating_noise)
        print(json.dumps(rows[0], indent=2))
        return 0
    t0 = time.perf_counter()
    n = write_corpus(args.out, n_prompts=args.n_prompts, seed=args.seed, signal=args.signal, rating_noise=args.rating_noise)
    print(f"wrote {n} prompts x 4 completions to {args.out} in {time.perf_counter() - t0:.2f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Judge-quality probe: can this judge rate at all?

On the offline corpus, whose per-aspect ratings are known, a judge grades every response of a few
questions with a neutral reviewer persona; the probe reports, per dimension, the Spearman
correlation between the judge's grades and the true ratings (truthfulness, instruction-following,
helpfulness; personal preference has no ground truth). Logit judges (and endpoints that return
logprobs) give expected grades (cannot fail to parse); the others give parsed grades, failures counted.

    python -m core.personas.quality --n-questions 12 [--judge default] [--out quality.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from scipy.stats import spearmanr

from core.common.cli import cli_main, report
from core.personas import prompts
from core.personas.parse import parse_scores
from core.personas.stories import Story

REVIEWER = Story(name="Reviewer", occupation="careful, impartial reviewer",
                 story="You check facts, follow instructions to the letter and value useful answers.")


def probe_items(n_questions: int, seed: int):
    from core.data import ASPECTS, generate_table

    table = generate_table(max(n_questions, 1), seed=seed)
    items, truth = [], []
    for q in range(min(n_questions, len(table))):
        for c in range(table.n_completions):
            items.append(prompts.scoring_suffix(table.prompts[q], table.responses[q][c]))
            truth.append([table.ratings[q, c, ASPECTS.index(a)] for a in
                          (prompts.DIMENSION_TO_ASPECT[d] for d in prompts.DIMENSIONS[:3])])
    return items, np.asarray(truth, dtype=float)


def spearman_per_dimension(scores: np.ndarray, truth: np.ndarray) -> dict[str, float | None]:
    """Spearman rho per judge dimension (first three columns), over rows where both are known."""
    out: dict[str, float | None] = {}
    for k, d in enumerate(prompts.DIMENSIONS[:3]):
        ok = ~np.isnan(scores[:, k]) & ~np.isnan(truth[:, k])
        x, y = scores[ok, k], truth[ok, k]
        if ok.sum() < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
            out[d] = None
        else:
            out[d] = round(float(spearmanr(x, y).statistic), 4)
    return out


def run_probe(judge, n_questions: int = 8, seed: int = 1234, max_new_tokens: int = 64) -> dict:
    items, truth = probe_items(n_questions, seed)
    prefix = prompts.scoring_prefix(REVIEWER)
    t0 = time.time()
    result: dict = {"judge": getattr(judge, "name", str(judge)), "n_responses": len(items), "seed": seed}
    rating = getattr(judge, "rating_probs", None)
    res = rating(prefix, items, [prompts.logit_cue(d) for d in prompts.DIMENSIONS[:3]]) if rating else None
    if res is not None:  # a local model's logits, or an endpoint's logprobs (None when it sends none)
        scores = res.expected
        result.update(method=res.source, spearman=spearman_per_dimension(scores, truth),
                      rating_token_mass=round(float(res.mass.mean()), 4), parse_failures=0)
    else:
        texts = judge.generate(prefix, items, max_new_tokens)
        parsed = [parse_scores(t) for t in texts]
        scores = np.array([p[:3] if p else [np.nan] * 3 for p in parsed], dtype=float)
        result.update(method="generate", spearman=spearman_per_dimension(scores, truth),
                      parse_failures=sum(p is None for p in parsed))
    result["seconds"] = round(time.time() - t0, 2)
    return result


def verdict(result: dict, threshold: float = 0.3) -> str:
    """One honest sentence for the page."""
    rhos = [v for v in (result.get("spearman") or {}).values() if v is not None]
    if not rhos:
        return "The judge gave no usable grades on the probe: do not read anything into its choices."
    best = max(rhos)
    if best < threshold:
        return (f"The judge barely tracks known quality (best Spearman {best:.2f} < {threshold}): "
                "structure in its simulated preferences is likely noise.")
    return f"The judge tracks known quality on some dimensions (best Spearman {best:.2f})."


@cli_main  # an expected error (a judge that cannot be loaded offline, ...): one "error: ..." line, exit status 2
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.personas.quality", description="Judge-quality probe.")
    p.add_argument("--judge", default="default")
    p.add_argument("--n-questions", type=int, default=8)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--out", default=None, help="write the result as JSON here")
    args = p.parse_args(argv)
    from core.personas.judges import make_judge

    try:
        judge = make_judge(args.judge)
    except (ValueError, RuntimeError) as err:  # an unknown judge, or a bundled one that is not installed
        return report(err)
    result = run_probe(judge, args.n_questions, args.seed)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

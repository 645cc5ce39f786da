"""The normalized preference table every other part of PrefLens reads.

One row per question; every question has exactly ``n_completions`` (default 4) responses, each
rated on the four UltraFeedback aspects. Arrays, not objects, so user-level work (labels,
disagreement) stays vectorized:

    ratings: float32 (n_questions, n_completions, 4), NaN where the source said "N/A"
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Order of the aspect axis everywhere in PrefLens (user weight vectors use the same order).
ASPECTS: tuple[str, ...] = ("helpfulness", "honesty", "instruction_following", "truthfulness")


@dataclass
class PreferenceTable:
    """Questions with rated completions, normalized from UltraFeedback-shaped rows."""

    qids: list[str]  # stable id per question
    prompts: list[str]
    sources: list[str]
    responses: list[list[str]]  # [question][completion]
    ratings: np.ndarray  # float32 (n_questions, n_completions, 4); NaN = N/A
    models: list[list[str]] = field(default_factory=list)  # generating model per completion
    report: dict = field(default_factory=dict)  # what loading skipped/dropped, and why

    def __post_init__(self) -> None:
        n = len(self.prompts)
        if not (len(self.qids) == len(self.sources) == len(self.responses) == n):
            raise ValueError("PreferenceTable: qids, prompts, sources and responses differ in length")
        if self.ratings.shape[:1] != (n,) or self.ratings.ndim != 3 or self.ratings.shape[2] != len(ASPECTS):
            raise ValueError(f"PreferenceTable: ratings must be (n_questions, n_completions, 4), got {self.ratings.shape}")
        if not self.models:
            self.models = [[""] * self.n_completions for _ in range(n)]

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def n_completions(self) -> int:
        return int(self.ratings.shape[1])

    def subset(self, index) -> PreferenceTable:
        """Rows picked by an integer index array or a boolean mask."""
        idx = np.arange(len(self))[np.asarray(index)]
        return PreferenceTable(
            qids=[self.qids[i] for i in idx],
            prompts=[self.prompts[i] for i in idx],
            sources=[self.sources[i] for i in idx],
            responses=[self.responses[i] for i in idx],
            ratings=self.ratings[idx],
            models=[self.models[i] for i in idx],
            report=dict(self.report),
        )

    def texts(self, q: int, c: int) -> str:
        """The text a reward model reads for completion c of question q: prompt, then response."""
        return join_prompt_response(self.prompts[q], self.responses[q][c])

    def to_pandas(self):
        """Long format: one row per (question, completion), one column per aspect."""
        import pandas as pd

        rows = []
        for q in range(len(self)):
            for c in range(self.n_completions):
                row = {"qid": self.qids[q], "source": self.sources[q], "completion": c,
                       "model": self.models[q][c], "prompt": self.prompts[q], "response": self.responses[q][c]}
                row.update({a: float(self.ratings[q, c, k]) for k, a in enumerate(ASPECTS)})
                rows.append(row)
        return pd.DataFrame(rows)

    def aspect_stats(self):
        """Per-aspect mean, std, share missing, and the aspect-aspect Pearson matrix."""
        import pandas as pd

        flat = self.ratings.reshape(-1, len(ASPECTS))
        stats = pd.DataFrame({
            "mean": np.nanmean(flat, axis=0),
            "std": np.nanstd(flat, axis=0),
            "missing": np.isnan(flat).mean(axis=0),
        }, index=list(ASPECTS))
        ok = ~np.isnan(flat).any(axis=1)
        corr = pd.DataFrame(np.corrcoef(flat[ok].T), index=list(ASPECTS), columns=list(ASPECTS))
        return stats, corr


def join_prompt_response(prompt: str, response: str) -> str:
    """One fixed way to join a prompt and a response into the text an encoder reads."""
    return f"Question: {prompt}\nAnswer: {response}"

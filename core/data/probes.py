"""Probes that prove the corpus is learnable: can a linear model read each aspect off the text?

Split by question (70% train / 30% test, so no prompt is on both sides), fit one ridge regression
per aspect, and report the Spearman correlation between predicted and stored ratings on the test
questions. Used by the tests, the bench and the Users page.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr

from core.data.table import ASPECTS, PreferenceTable


def _split(n_questions: int, seed: int, train_share: float = 0.7) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n_questions)
    k = int(round(train_share * n_questions))
    return np.sort(perm[:k]), np.sort(perm[k:])


def _fit_eval(features_by_q, table: PreferenceTable, seed: int, alpha: float) -> dict[str, float]:
    """features_by_q(question index array) -> (n_rows, F) for every completion of those questions."""
    from sklearn.linear_model import Ridge

    tr, te = _split(len(table), seed)
    xtr, xte = features_by_q(tr), features_by_q(te)
    c = table.n_completions
    out = {}
    for k, a in enumerate(ASPECTS):
        ytr, yte = table.ratings[tr, :, k].reshape(-1), table.ratings[te, :, k].reshape(-1)
        ok_tr, ok_te = ~np.isnan(ytr), ~np.isnan(yte)
        model = Ridge(alpha=alpha).fit(xtr[ok_tr], ytr[ok_tr])
        pred = model.predict(xte[ok_te])
        out[a] = float(spearmanr(pred, yte[ok_te]).statistic)
    assert xtr.shape[0] == len(tr) * c
    return out


def tfidf_probe(table: PreferenceTable, seed: int = 0, alpha: float = 1.0) -> dict[str, float]:
    """Spearman per aspect of TF-IDF (word 1-2 grams, and '!' / '-' kept) + ridge on held-out questions."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = [table.texts(q, c) for q in range(len(table)) for c in range(table.n_completions)]
    tr, _ = _split(len(table), seed)
    c = table.n_completions
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, token_pattern=r"(?u)\b\w+\b|[!\-:]")
    vec.fit([texts[q * c + j] for q in tr for j in range(c)])

    def feats(qs):
        return vec.transform([texts[q * c + j] for q in qs for j in range(c)])

    return _fit_eval(feats, table, seed, alpha)


def embedding_probe(table: PreferenceTable, embeddings: np.ndarray, seed: int = 0, alpha: float = 1.0) -> dict[str, float]:
    """Same probe on precomputed embeddings, float (n_questions * n_completions, D), row q*C + c."""
    c = table.n_completions
    emb = np.asarray(embeddings, dtype=np.float32).reshape(len(table), c, -1)

    def feats(qs):
        return emb[qs].reshape(len(qs) * c, -1)

    return _fit_eval(feats, table, seed, alpha)


def all_texts(table: PreferenceTable) -> list[str]:
    """The texts the probes and the reward models read, row q*C + c."""
    return [table.texts(q, c) for q in range(len(table)) for c in range(table.n_completions)]

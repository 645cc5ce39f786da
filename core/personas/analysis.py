"""Analyses of persona results (seed Figures 18-23): choice distributions, agreement with the
dataset, user-user cosine similarity, and the mutual top-k neighbour graph.

Everything works on plain records (dicts from results.jsonl) or small numpy arrays, so each
function can be checked by hand on a tiny fixture.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import pandas as pd

CATEGORIES = ("first", "second", "tie", "inconsistent", "invalid")


def results_frame(records: list[dict], choice_field: str = "choice") -> pd.DataFrame:
    """One row per item: user, name, occupation, group, qid, choice, preferred, agrees (+1/-1/0)."""
    rows = []
    for r in records:
        choice = r.get(choice_field, "invalid") or "invalid"
        if choice in ("first", "second"):
            agrees = 1 if choice == r.get("preferred") else -1
        else:
            agrees = 0
        rows.append({"user": r["user"], "name": r.get("name", str(r["user"])), "occupation": r.get("occupation", ""),
                     "group": r.get("group", ""), "qid": r["qid"], "choice": choice,
                     "preferred": r.get("preferred"), "agrees": agrees})
    return pd.DataFrame(rows, columns=["user", "name", "occupation", "group", "qid", "choice", "preferred", "agrees"])


def choice_distribution(df: pd.DataFrame, by: str) -> pd.DataFrame:
    """Share of each choice category per ``by`` ('name' for users, 'qid' for questions); rows sum to 1."""
    if df.empty:
        return pd.DataFrame(columns=list(CATEGORIES))
    counts = pd.crosstab(df[by], df["choice"]).reindex(columns=list(CATEGORIES), fill_value=0)
    return counts.div(counts.sum(axis=1), axis=0)


def preferred_share(df: pd.DataFrame) -> dict:
    """How often a valid choice picks the dataset's preferred response, overall and per question."""
    valid = df[df["agrees"] != 0]
    per_q = valid.groupby("qid")["agrees"].agg(lambda s: int((s > 0).sum())).rename("chose_preferred")
    per_q = pd.concat([per_q, valid.groupby("qid")["agrees"].agg(lambda s: int((s < 0).sum())).rename("chose_other")],
                      axis=1)
    share = float((valid["agrees"] > 0).mean()) if len(valid) else float("nan")
    return {"share": share, "n_valid": int(len(valid)), "n_items": int(len(df)), "per_question": per_q}


def preference_matrix(df: pd.DataFrame) -> tuple[np.ndarray, list, list]:
    """(users x questions) matrix of +1 (chose the dataset's preferred), -1 (the other), 0 (no valid choice)."""
    pivot = df.pivot_table(index="user", columns="qid", values="agrees", aggfunc="first", fill_value=0)
    return pivot.to_numpy(dtype=float), list(pivot.index), list(pivot.columns)


def cosine_similarity(matrix: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity; a row of zeros has similarity 0 with everyone (and 1 with itself)."""
    m = np.asarray(matrix, dtype=float)
    norms = np.linalg.norm(m, axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    unit = m / safe[:, None]
    sim = unit @ unit.T
    np.fill_diagonal(sim, 1.0)
    return sim


def top_k_neighbours(sim: np.ndarray, k: int) -> list[set[int]]:
    """For each row, the indices of its k most similar others (ties broken by lower index).

    A NaN similarity (undefined: e.g. two human raters with too few items in common) never makes a
    neighbour, so a row may get fewer than k. One stable argsort for the whole matrix.
    """
    s = np.array(sim, dtype=float)
    s[np.isnan(s)] = -np.inf
    np.fill_diagonal(s, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")[:, :max(0, int(k))]
    keep = np.isfinite(np.take_along_axis(s, order, axis=1))
    return [set(row[ok].tolist()) for row, ok in zip(order, keep, strict=True)]


def mutual_top_k_graph(sim: np.ndarray, k: int = 5, labels: list | None = None) -> nx.Graph:
    """Undirected graph: i -- j iff each is among the other's top-k most similar users."""
    n = sim.shape[0]
    top = top_k_neighbours(sim, k)
    g = nx.Graph()
    for i in range(n):
        g.add_node(i, label=labels[i] if labels is not None else str(i))
    for i in range(n):
        for j in top[i]:
            if i < j and i in top[j]:
                g.add_edge(i, j, weight=float(sim[i, j]))
    return g


def components(g: nx.Graph, min_size: int = 2) -> list[list[int]]:
    """Connected components with at least ``min_size`` nodes, largest first, nodes sorted."""
    comps = [sorted(c) for c in nx.connected_components(g) if len(c) >= min_size]
    return sorted(comps, key=lambda c: (-len(c), c[0]))


def occupation_order(names: list[str], occupations: list[str], groups: list[str] | None = None) -> list[int]:
    """Indices ordering users by (group, occupation, name) so related occupations sit together."""
    groups = groups or [""] * len(names)
    return sorted(range(len(names)), key=lambda i: (groups[i], occupations[i], names[i]))


def position_bias(records: list[dict]) -> dict:
    """Pairwise records: share of answers naming the response shown first (A), per order and overall
    (the generated letters, or the likelier letter where a run read them from logits only)."""
    per = [[0, 0], [0, 0]]  # per order: [said A, valid]
    for r in records:
        for o, a in enumerate(r.get("answers") or r.get("logit_answers") or []):  # generated, else from logits
            if a in ("A", "B") and o < 2:
                per[o][1] += 1
                per[o][0] += a == "A"
    said_a, valid = per[0][0] + per[1][0], per[0][1] + per[1][1]
    return {"share_first_position": said_a / valid if valid else float("nan"), "valid_answers": valid,
            "per_order": [p[0] / p[1] if p[1] else float("nan") for p in per]}

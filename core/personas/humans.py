"""Real human ratings beside simulated personas: the persona analyses, run on a long ratings table.

``python -m core.personas.humans --ratings FILE --user COL --item COL --rating COL [--group COL] --out DIR``

The input is one rating per row (CSV/TSV, JSONL or Parquet, picked by suffix), with an optional
column naming each user's group (an occupation, say). Written to DIR:

- ``similarity.csv``: user pairs with at least ``min_overlap`` co-rated items, their overlap and
  similarity (Pearson over the co-rated items, or cosine of per-user-centred ratings over them);
- ``groups.csv``: per group, mean within-group and between-group similarity and pair counts;
- ``graph.json``: the mutual top-k similarity graph (networkx node-link data, with a layout);
- ``summary.json``: the counts, the within/between means, the permutation p-value and the args.

Everything is vectorized: the similarities are a handful of (users x items) matrix products and the
permutations are batched, so 10,000+ ratings from hundreds of users take well under a second.
Reading and checking the table is core/personas/ratings.py (re-exported here).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
import numpy as np
import pandas as pd

from core.common.cli import cli_main
from core.common.runs import now_iso, write_json_atomic
from core.personas import analysis
from core.personas.ratings import READERS, HumansError, Ratings, planted_ratings, read_ratings, read_table

__all__ = ["METRICS", "OUTPUT_FILES", "READERS", "Analysis", "HumansError", "Ratings", "analyse", "group_table",
           "group_test", "load_output", "main", "neighbour_graph", "planted_ratings", "rating_matrix",
           "read_ratings", "read_table", "similarity", "write_outputs"]

METRICS = ("pearson", "cosine")
OUTPUT_FILES = ("similarity.csv", "groups.csv", "graph.json", "summary.json")
MAX_CELLS = 200_000_000  # users x items of the dense rating matrix (1.6 GB as float64)
SUMMARY_KIND = "humans"


@dataclass
class Analysis:
    users: list[str]
    groups: list[str]  # per user
    sim: np.ndarray  # (U, U), NaN where undefined or below the overlap; NaN diagonal
    overlap: np.ndarray  # (U, U) co-rated item counts
    group_stats: dict
    group_table: pd.DataFrame
    graph: nx.Graph
    isolated: list[dict]
    seconds: dict = field(default_factory=dict)


# ---------------------------------------------------------------- similarity

def rating_matrix(r: Ratings) -> tuple[np.ndarray, list[str], list[str], list[str]]:
    """Dense (users x items) ratings with NaN where unrated; user ids, item ids, each user's group."""
    ucodes, users = pd.factorize(r.frame["user"], sort=True)
    icodes, items = pd.factorize(r.frame["item"], sort=True)
    if len(users) * len(items) > MAX_CELLS:
        raise HumansError(f"{len(users)} users x {len(items)} items is too large for the dense rating matrix "
                          f"(limit {MAX_CELLS:,} cells); filter the table first")
    R = np.full((len(users), len(items)), np.nan)
    R[ucodes, icodes] = r.frame["rating"].to_numpy()
    groups = r.frame.groupby("user", sort=True)["group"].first().reindex(users).tolist()
    return R, [str(u) for u in users], [str(i) for i in items], [str(g) for g in groups]


def similarity(R: np.ndarray, metric: str = "pearson", min_overlap: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """User-user similarity over co-rated items, and the overlap counts.

    ``pearson``: the correlation over the items both rated (each pair's own means on its overlap).
    ``cosine``: cosine of ratings centred by each user's mean over all their ratings, on the overlap.
    Pairs with fewer than ``min_overlap`` co-rated items, or with no variation on them, get NaN;
    so does the diagonal.
    """
    if metric not in METRICS:
        raise HumansError(f"metric: {metric!r} is not one of {', '.join(METRICS)}")
    M = ~np.isnan(R)
    Mf = M.astype(float)
    counts = Mf.sum(axis=1)
    means = np.divide(np.nansum(R, axis=1), counts, out=np.zeros(len(R)), where=counts > 0)
    X = np.where(M, R - means[:, None], 0.0)  # centring first keeps the sums below well conditioned
    X2 = X * X
    n = Mf @ Mf.T
    sxy = X @ X.T
    sxx = X2 @ Mf.T  # [u, v]: sum of u's squared centred ratings over the items u and v share
    with np.errstate(divide="ignore", invalid="ignore"):
        if metric == "pearson":
            sx = X @ Mf.T
            safe_n = np.where(n > 0, n, 1.0)
            cov = sxy - sx * sx.T / safe_n
            vx = sxx - sx * sx / safe_n
            vy = vx.T
        else:
            cov, vx, vy = sxy, sxx, sxx.T
        tol = 1e-9 * np.maximum(1.0, np.maximum(sxx, sxx.T))
        ok = (n >= min_overlap) & (vx > tol) & (vy > tol)
        sim = np.where(ok, cov / np.sqrt(np.where(ok, vx * vy, 1.0)), np.nan)
    np.fill_diagonal(sim, np.nan)
    return np.clip(sim, -1.0, 1.0), n.astype(np.int64)


def isolated_users(sim: np.ndarray, overlap: np.ndarray, users: list[str], min_overlap: int) -> list[dict]:
    """Users with no defined similarity to anyone, each with the largest overlap they have and why."""
    out = []
    ov = overlap.copy()
    np.fill_diagonal(ov, -1)
    for i in np.flatnonzero(~np.isfinite(sim).any(axis=1)):
        best = int(ov[i].max()) if len(ov) > 1 else 0
        why = (f"shares at most {best} rated item(s) with any other user (needs {min_overlap})" if best < min_overlap
               else "ratings do not vary on the items shared with others")
        out.append({"user": users[i], "max_overlap": best, "reason": why})
    return out


# ---------------------------------------------------------------- groups

class _GroupSums:
    """Within-group similarity sums and pair counts for many labellings at once, as matrix products.

    With S the similarity matrix (undefined entries and the diagonal as 0), C its 0/1 defined-mask and
    H a labelling's (users x groups) one-hot matrix, the within-group sum over pairs is
    sum(H * (S @ H)) / 2, and likewise the count with C. A batch of labellings stacks its H's side by
    side, so a thousand shuffles cost a few BLAS calls instead of a Python loop."""

    def __init__(self, sim: np.ndarray, n_groups: int):
        defined = np.isfinite(sim)
        np.fill_diagonal(defined, False)  # a user is no pair with themself (persona matrices carry 1s there)
        self.SC = np.concatenate([np.where(defined, sim, 0.0), defined.astype(float)])  # (2U, U)
        self.U, self.G = sim.shape[0], n_groups
        self.total_s = float(self.SC[: self.U].sum()) / 2
        self.total_n = float(self.SC[self.U:].sum()) / 2

    def batch_size(self) -> int:
        return max(1, 4_000_000 // max(1, self.U * self.G))  # keeps H and S @ H near 32 MB each

    def within(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """codes: (B, U) group indices; the (B,) within-group similarity sums and pair counts."""
        b = codes.shape[0]
        H = np.zeros((self.U, b * self.G))
        H[np.broadcast_to(np.arange(self.U), codes.shape), codes + self.G * np.arange(b)[:, None]] = 1.0
        P = self.SC @ H  # (2U, B*G)
        s = (P[: self.U] * H).sum(axis=0).reshape(b, self.G).sum(axis=1) / 2
        n = (P[self.U:] * H).sum(axis=0).reshape(b, self.G).sum(axis=1) / 2
        return s, np.rint(n)

    def difference(self, codes: np.ndarray) -> np.ndarray:
        """(B,) mean within-group minus mean between-group similarity (NaN where either side is empty)."""
        s, n = self.within(codes)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where((n > 0) & (n < self.total_n), s / n - (self.total_s - s) / (self.total_n - n), np.nan)


def group_test(sim: np.ndarray, groups: list[str], permutations: int = 1000, seed: int = 0) -> dict:
    """Mean within-group vs between-group similarity over the defined pairs, and a one-sided
    permutation p-value: the share of label shuffles whose within-minus-between difference is at
    least the observed one, counted as (1 + hits) / (1 + shuffles)."""
    codes = pd.factorize(pd.Series(groups))[0].astype(np.int64)
    sums = _GroupSums(sim, int(codes.max()) + 1)
    s_w, n_w = (float(x[0]) for x in sums.within(codes[None, :]))
    n_b = sums.total_n - n_w
    within = s_w / n_w if n_w else None
    between = (sums.total_s - s_w) / n_b if n_b else None
    out = {"within_mean": within, "between_mean": between, "within_pairs": int(n_w), "between_pairs": int(n_b),
           "difference": None, "p_value": None, "permutations": 0, "note": None}
    if within is None or between is None:
        out["note"] = ("no between-group pairs: one group only" if between is None
                       else "no within-group pairs with a defined similarity")
        return out
    observed = float(sums.difference(codes[None, :])[0])
    out["difference"] = within - between
    if permutations <= 0:
        out["note"] = "no permutations asked for"
        return out
    rng = np.random.default_rng(seed)
    hits = valid = 0
    step = sums.batch_size()
    for start in range(0, permutations, step):
        b = min(step, permutations - start)
        stats = sums.difference(rng.permuted(np.tile(codes, (b, 1)), axis=1))
        ok = np.isfinite(stats)
        valid += int(ok.sum())
        hits += int((stats[ok] >= observed - 1e-9).sum())
    out.update(p_value=(1 + hits) / (1 + valid), permutations=valid)
    return out


def group_table(sim: np.ndarray, groups: list[str], isolated: list[dict], users: list[str]) -> pd.DataFrame:
    """One row per group: users, isolated users, within/between pair counts and mean similarities."""
    labels = np.asarray(groups)
    defined = np.isfinite(sim)
    np.fill_diagonal(defined, False)
    S = np.where(defined, sim, 0.0)
    iso = {d["user"] for d in isolated}
    rows = []
    for g in sorted(set(groups)):
        m = labels == g
        n_w, s_w = defined[m][:, m].sum() / 2, S[m][:, m].sum() / 2
        n_b, s_b = defined[m][:, ~m].sum(), S[m][:, ~m].sum()
        rows.append({"group": g, "users": int(m.sum()),
                     "isolated_users": sum(1 for u, lg in zip(users, groups, strict=True) if lg == g and u in iso),
                     "within_pairs": int(n_w), "within_mean": float(s_w / n_w) if n_w else np.nan,
                     "between_pairs": int(n_b), "between_mean": float(s_b / n_b) if n_b else np.nan})
    return pd.DataFrame(rows, columns=["group", "users", "isolated_users", "within_pairs", "within_mean",
                                       "between_pairs", "between_mean"])


def neighbour_graph(sim: np.ndarray, users: list[str], groups: list[str], k: int = 5, seed: int = 0) -> nx.Graph:
    """The mutual top-k graph (analysis.mutual_top_k_graph) with each node's user, group and a spring
    layout (seeded) stored as x, y, so every reader draws the same picture."""
    g = analysis.mutual_top_k_graph(sim, k=k, labels=users)
    pos = nx.spring_layout(g, seed=seed) if len(g) else {}
    for n in g.nodes:
        g.nodes[n].update(user=users[n], group=groups[n], x=round(float(pos[n][0]), 5),
                          y=round(float(pos[n][1]), 5))
    for _, _, d in g.edges(data=True):
        d["similarity"] = round(float(d.pop("weight")), 6)
    return g


# ---------------------------------------------------------------- pipeline

def _check_options(metric: str, min_overlap: int, top_k: int, permutations: int) -> None:
    if metric not in METRICS:
        raise HumansError(f"--metric: {metric!r} is not one of {', '.join(METRICS)}")
    floor = 2 if metric == "pearson" else 1
    if min_overlap < floor:
        raise HumansError(f"--min-overlap: {min_overlap} is below {floor} ({metric} needs at least {floor} "
                          "co-rated items)")
    if top_k < 1:
        raise HumansError(f"--top-k: {top_k} must be at least 1")
    if permutations < 0:
        raise HumansError(f"--permutations: {permutations} must be 0 or more")


def analyse(r: Ratings, metric: str = "pearson", min_overlap: int = 5, top_k: int = 5, permutations: int = 1000,
            seed: int = 0, log=lambda msg: None) -> Analysis:
    """Similarities, the group test and the graph for validated ratings; stage seconds in ``.seconds``."""
    _check_options(metric, min_overlap, top_k, permutations)
    sec = {}
    t = time.perf_counter()
    R, users, _, groups = rating_matrix(r)
    sec["matrix"] = time.perf_counter() - t
    t = time.perf_counter()
    sim, overlap = similarity(R, metric, min_overlap)
    iso = isolated_users(sim, overlap, users, min_overlap)
    sec["similarity"] = time.perf_counter() - t
    log(f"similarity: {int(np.isfinite(sim).sum()) // 2:,} user pairs defined ({sec['similarity']:.2f} s)")
    t = time.perf_counter()
    if r.group_column is None:
        stats = {"within_mean": None, "between_mean": None, "within_pairs": 0, "between_pairs": 0,
                 "difference": None, "p_value": None, "permutations": 0, "note": "no --group column given"}
    else:
        stats = group_test(sim, groups, permutations, seed)
    table = group_table(sim, groups, iso, users)
    sec["groups"] = time.perf_counter() - t
    log(f"groups: {len(set(groups))} group(s), {stats['permutations']} permutations ({sec['groups']:.2f} s)")
    t = time.perf_counter()
    graph = neighbour_graph(sim, users, groups, top_k, seed)
    sec["graph"] = time.perf_counter() - t
    log(f"graph: {graph.number_of_edges()} mutual top-{top_k} edges ({sec['graph']:.2f} s)")
    return Analysis(users=users, groups=groups, sim=sim, overlap=overlap, group_stats=stats, group_table=table,
                    graph=graph, isolated=iso, seconds=sec)


def similarity_frame(a: Analysis, min_overlap: int) -> pd.DataFrame:
    """The user pairs meeting the overlap (u < v): users, groups, overlap and similarity (empty if undefined)."""
    i, j = np.triu_indices(len(a.users), 1)
    keep = a.overlap[i, j] >= min_overlap
    i, j = i[keep], j[keep]
    u, g = np.asarray(a.users), np.asarray(a.groups)
    return pd.DataFrame({"user_a": u[i], "user_b": u[j], "group_a": g[i], "group_b": g[j],
                         "overlap": a.overlap[i, j], "similarity": np.round(a.sim[i, j], 6)})


def summary(r: Ratings, a: Analysis, args: dict) -> dict:
    i, j = np.triu_indices(len(a.users), 1)
    g = a.graph
    same = [g.nodes[x]["group"] == g.nodes[y]["group"] for x, y in g.edges]
    return {
        "kind": SUMMARY_KIND, "created": now_iso(), "source": r.source,
        "users": len(a.users), "items": r.items, "ratings": len(r.frame), "rows": r.n_rows,
        "duplicates_averaged": r.n_duplicates, "groups": len(set(a.groups)), "group_column": r.group_column,
        "missing_group_values": r.n_missing_group,
        "pairs": len(i), "pairs_meeting_overlap": int((a.overlap[i, j] >= args["min_overlap"]).sum()),
        "pairs_with_similarity": int(np.isfinite(a.sim[i, j]).sum()),
        "mean_similarity": float(np.nanmean(a.sim[i, j])) if np.isfinite(a.sim[i, j]).any() else None,
        **{k: a.group_stats[k] for k in ("within_mean", "between_mean", "difference", "p_value", "permutations",
                                        "within_pairs", "between_pairs")},
        "group_note": a.group_stats["note"],
        "graph_edges": g.number_of_edges(),
        "graph_edges_within_group_share": (sum(same) / len(same)) if same else None,
        "isolated_users_count": len(a.isolated), "isolated_users": a.isolated[:100],
        "seconds": {k: round(v, 4) for k, v in a.seconds.items()},
        "args": args,
    }


def write_outputs(out: str | Path, r: Ratings, a: Analysis, args: dict) -> dict:
    """Write the four files into ``out`` (created); returns the summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    similarity_frame(a, args["min_overlap"]).to_csv(out / "similarity.csv", index=False)
    a.group_table.to_csv(out / "groups.csv", index=False)
    data = nx.node_link_data(a.graph, edges="edges")
    data["graph"] = {"k": args["top_k"], "metric": args["metric"], "layout_seed": args["seed"]}
    write_json_atomic(out / "graph.json", data)
    s = summary(r, a, args)
    write_json_atomic(out / "summary.json", s)
    return s


def load_output(folder: str | Path) -> dict:
    """Read a humans output folder back: summary (dict), groups (DataFrame), graph (networkx)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HumansError(f"{folder}: no such folder")
    missing = [f for f in ("summary.json", "groups.csv", "graph.json") if not (folder / f).is_file()]
    if missing:
        raise HumansError(f"{folder}: not a humans output folder (missing {', '.join(missing)})")
    try:
        s = json.loads((folder / "summary.json").read_text())
        graph = nx.node_link_graph(json.loads((folder / "graph.json").read_text()), edges="edges")
        groups = pd.read_csv(folder / "groups.csv", dtype={"group": str})
    except (OSError, ValueError, KeyError, pd.errors.ParserError) as e:
        raise HumansError(f"{folder}: cannot read its outputs: {e}") from None
    if not isinstance(s, dict) or s.get("kind") != SUMMARY_KIND:
        raise HumansError(f"{folder}/summary.json: not written by core.personas.humans")
    return {"path": str(folder), "summary": s, "groups": groups, "graph": graph}


# ---------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m core.personas.humans",
                                description="User-user similarity, group test and neighbour graph for a long table "
                                            "of real human ratings (the persona analyses, on people).")
    p.add_argument("--ratings", required=True, help="CSV/TSV, JSONL or Parquet file, one rating per row")
    p.add_argument("--user", required=True, help="column holding the user id")
    p.add_argument("--item", required=True, help="column holding the item id")
    p.add_argument("--rating", required=True, help="column holding the numeric rating")
    p.add_argument("--group", help="optional column with each user's group (e.g. occupation)")
    p.add_argument("--min-overlap", type=int, default=5, help="co-rated items a pair needs (default 5)")
    p.add_argument("--top-k", type=int, default=5, help="neighbours per user in the mutual top-k graph (default 5)")
    p.add_argument("--metric", choices=METRICS, default="pearson", help="similarity (default pearson)")
    p.add_argument("--permutations", type=int, default=1000, help="group-label shuffles for the p-value (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the permutations and the graph layout")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--dry-run", action="store_true", help="read and check the input, print its counts, write nothing")
    return p


@cli_main  # an expected error (an --out that cannot be written, ...): one "error: ..." line, exit status 2
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def log(msg: str) -> None:
        print(f"[humans] {msg}", file=sys.stderr, flush=True)

    try:
        _check_options(args.metric, args.min_overlap, args.top_k, args.permutations)
        t = time.perf_counter()
        r = read_ratings(args.ratings, args.user, args.item, args.rating, args.group)
        read_s = time.perf_counter() - t
        n_groups = r.frame["group"].nunique()
        log(f"read {len(r.frame):,} ratings: {r.users} users, {r.items} items, {n_groups} group(s) "
            f"({read_s:.2f} s)" + (f"; {r.n_duplicates} duplicate rows averaged" if r.n_duplicates else ""))
        if args.dry_run:
            print(f"dry run: would write {', '.join(OUTPUT_FILES)} to {args.out} "
                  f"({r.users * (r.users - 1) // 2:,} user pairs, {args.permutations} permutations)")
            return 0
        a = analyse(r, args.metric, args.min_overlap, args.top_k, args.permutations, args.seed, log)
        a.seconds = {"read": read_s, **a.seconds}
        t = time.perf_counter()
        s = write_outputs(args.out, r, a, {k: v for k, v in vars(args).items()})
        log(f"wrote {', '.join(OUTPUT_FILES)} to {args.out} ({time.perf_counter() - t:.2f} s)")
    except HumansError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if s["isolated_users_count"]:
        first = s["isolated_users"][0]
        print(f"note: {s['isolated_users_count']} user(s) have no similarity with anyone and sit alone in the "
              f"graph, e.g. {first['user']!r}: {first['reason']} (listed in summary.json)", file=sys.stderr)
    fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    print(f"{s['users']} users, {s['items']} items, {s['ratings']} ratings; {s['pairs_meeting_overlap']:,} pairs "
          f"share >= {args.min_overlap} items; mean similarity {fmt(s['mean_similarity'])}; within-group "
          f"{fmt(s['within_mean'])} vs between {fmt(s['between_mean'])}, permutation p = {fmt(s['p_value'])}"
          + (f" ({s['group_note']})" if s["group_note"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

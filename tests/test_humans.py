"""Real human ratings (core.personas.humans): similarity by hand, planted groups found and a shuffled
control not, every reader, named errors for bad input, and the CLI as a real child process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.personas import humans
from core.personas.humans import HumansError, analyse, planted_ratings, read_ratings

REPO = Path(__file__).resolve().parents[1]
COLS = {"user": "user", "item": "item", "rating": "rating"}


def _planted(seed: int = 1) -> pd.DataFrame:
    # 36 users in 3 groups; a group shares a taste over 60 items, each user rates 30 of them with noise
    return planted_ratings(n_users=36, n_groups=3, n_items=60, per_user=30, noise=1.0, seed=seed)


def _write(df: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_parquet(path)
    return path


@pytest.fixture(scope="module")
def planted_csv(tmp_path_factory) -> Path:
    return _write(_planted(), tmp_path_factory.mktemp("humans") / "ratings.csv")


def test_planted_groups_are_more_similar_within_than_between(planted_csv):
    r = read_ratings(planted_csv, **COLS, group="group")
    assert (r.users, r.items, len(r.frame)) == (36, 60, 36 * 30)
    a = analyse(r, permutations=500, seed=0)
    st = a.group_stats
    assert st["within_mean"] > st["between_mean"] + 0.3, st
    assert st["p_value"] < 0.01 and st["permutations"] == 500
    # the same numbers per group, and the mutual top-k graph mostly links users of one group
    assert (a.group_table["within_mean"] > a.group_table["between_mean"] + 0.3).all()
    edges = list(a.graph.edges)
    same = [a.graph.nodes[i]["group"] == a.graph.nodes[j]["group"] for i, j in edges]
    assert len(edges) >= 20 and np.mean(same) > 0.8


def test_shuffled_group_labels_are_not_significant(planted_csv):
    # the taste structure stays; the labels no longer follow it. Under that null the p-value is about
    # uniform, so over 20 shuffles it is rarely small (about 1 in 20 below 0.05 by chance).
    r = read_ratings(planted_csv, **COLS, group="group")
    R, users, _, groups = humans.rating_matrix(r)
    sim, _ = humans.similarity(R, "pearson", 5)
    rng = np.random.default_rng(7)
    stats = [humans.group_test(sim, list(rng.permutation(groups)), permutations=300, seed=s) for s in range(20)]
    p = np.array([st["p_value"] for st in stats])
    assert np.median(p) > 0.2 and (p < 0.05).sum() <= 3, np.round(p, 3)
    gap = np.array([st["within_mean"] - st["between_mean"] for st in stats])
    assert np.abs(gap).max() < 0.15, gap
    assert humans.group_test(sim, groups, permutations=300)["p_value"] < 0.01  # the real labels, same data


def test_similarity_matches_a_pair_by_pair_computation():
    rng = np.random.default_rng(3)
    R = rng.integers(1, 6, size=(6, 12)).astype(float)
    R[rng.random(R.shape) < 0.4] = np.nan
    R[5, :] = np.nan
    R[5, :3] = [1, 2, 3]  # user 5 shares at most 3 items with anyone
    means = np.nanmean(R, axis=1)
    for metric in ("pearson", "cosine"):
        sim, n = humans.similarity(R, metric, min_overlap=4)
        for u in range(6):
            for v in range(6):
                both = ~np.isnan(R[u]) & ~np.isnan(R[v])
                if u == v:
                    assert np.isnan(sim[u, v])
                    continue
                assert n[u, v] == both.sum()
                if both.sum() < 4:
                    assert np.isnan(sim[u, v])
                    continue
                x, y = R[u, both], R[v, both]
                if metric == "pearson":
                    want = np.corrcoef(x, y)[0, 1]
                else:
                    x, y = x - means[u], y - means[v]
                    want = x @ y / np.sqrt((x @ x) * (y @ y))
                assert sim[u, v] == pytest.approx(want, abs=1e-9), (metric, u, v)
    assert np.isnan(sim[5]).all()


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_every_reader_gives_the_same_table(tmp_path, suffix):
    df = _planted().head(600)
    r = read_ratings(_write(df, tmp_path / f"r{suffix}"), **COLS, group="group")
    assert (len(r.frame), r.users, r.items) == (600, 20, df["item"].nunique())
    assert r.frame["rating"].sum() == df["rating"].sum()
    assert set(r.frame["group"]) == {"g0", "g1", "g2"}


def test_duplicates_are_averaged_and_ids_kept_as_text(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("uid,movie,stars\n007,a,4\n007,a,2\n008,a,5\n")
    r = read_ratings(path, "uid", "movie", "stars")
    assert r.n_duplicates == 1 and set(r.frame["user"]) == {"007", "008"}
    assert r.frame.set_index("user").loc["007", "rating"] == 3.0


def _error(path, **kw) -> str:
    with pytest.raises(HumansError) as e:
        read_ratings(path, **{**COLS, **kw})
    return str(e.value)


GOOD = "user,item,rating,job\nu1,a,4,nurse\nu2,a,5,nurse\nu2,b,five,nurse\n"
# (file name, its text, read_ratings arguments, what the error must name)
BAD_INPUTS = [
    ("good.csv", GOOD, {"rating": "score"}, ["'score'", "--rating", "columns present: user, item, rating, job"]),
    ("good.csv", GOOD, {"group": "occupation"}, ["'occupation'", "columns present"]),
    ("good.csv", GOOD, {}, ["line 4", "'five'", "'rating'"]),
    ("empty.csv", "", {}, ["empty"]),
    ("header.csv", "user,item,rating\n", {}, ["no ratings"]),
    ("empty.jsonl", "", {}, ["empty"]),
    ("r.xlsx", "x", {}, ["'.xlsx'", ".csv", ".parquet"]),
    ("bad.jsonl", '{"user": "u1", "item": "a", "rating": 3}\n{"user": "u2", "item": \n', {}, ["line 2"]),
    ("blank.csv", "user,item,rating\nu1,a,3\nu2,a,\n", {}, ["line 3", "is empty"]),
    ("groups.csv", "user,item,rating,job\nu1,a,4,nurse\nu1,b,5,pilot\nu2,a,3,nurse\n", {"group": "job"},
     ["'u1'", "'nurse'", "'pilot'"]),
    ("one.csv", "user,item,rating\nu1,a,4\nu1,b,3\n", {}, ["at least two"]),
    ("fake.parquet", "user,item,rating\n", {}, ["fake.parquet"]),
]


@pytest.mark.parametrize("name, text, kw, named", BAD_INPUTS,
                         ids=[f"{n}-{'-'.join(kw) or 'read'}" for n, _, kw, _ in BAD_INPUTS])
def test_bad_inputs_raise_named_errors(tmp_path, name, text, kw, named):
    (tmp_path / name).write_text(text)
    msg = _error(tmp_path / name, **kw)
    assert all(part in msg for part in named), msg


def test_bad_analysis_settings_name_their_option(tmp_path):
    r = read_ratings(_write(_planted().head(300), tmp_path / "ok.csv"), **COLS)
    with pytest.raises(HumansError, match="--min-overlap"):
        analyse(r, min_overlap=1)
    with pytest.raises(HumansError, match="--top-k"):
        analyse(r, top_k=0)


def test_a_user_with_no_overlap_is_reported_not_fatal(tmp_path):
    df = _planted()
    loner = pd.DataFrame({"user": "loner", "item": ["x1", "x2", "x3"], "rating": [1, 5, 3], "group": "g0"})
    path = _write(pd.concat([df, loner]), tmp_path / "r.csv")
    r = read_ratings(path, **COLS, group="group")
    a = analyse(r, permutations=50)
    assert [d["user"] for d in a.isolated] == ["loner"]
    assert a.isolated[0]["max_overlap"] == 0 and "needs 5" in a.isolated[0]["reason"]
    assert "loner" in a.graph.nodes[a.users.index("loner")]["user"] and a.graph.degree[a.users.index("loner")] == 0
    s = humans.write_outputs(tmp_path / "out", r, a, {"min_overlap": 5, "top_k": 5, "metric": "pearson", "seed": 0})
    assert s["isolated_users_count"] == 1 and s["isolated_users"][0]["user"] == "loner"
    assert s["users"] == 37 and s["p_value"] < 0.05
    assert pd.read_csv(tmp_path / "out" / "groups.csv").set_index("group").loc["g0", "isolated_users"] == 1


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core.personas.humans", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_cli_writes_the_four_files_and_names_bad_input(tmp_path, planted_csv):
    out = tmp_path / "out"
    common = ["--ratings", str(planted_csv), "--user", "user", "--item", "item", "--rating", "rating",
              "--group", "group", "--permutations", "200", "--top-k", "4", "--seed", "3", "--out", str(out)]
    dry = _cli(*common, "--dry-run")
    assert dry.returncode == 0 and "dry run" in dry.stdout and not out.exists()
    done = _cli(*common)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(humans.OUTPUT_FILES)
    s = json.loads((out / "summary.json").read_text())
    assert (s["users"], s["items"], s["ratings"]) == (36, 60, 1080)
    assert s["pairs_meeting_overlap"] == len(pd.read_csv(out / "similarity.csv")) > 0
    assert s["within_mean"] > s["between_mean"] and s["p_value"] < 0.01 and s["permutations"] == 200
    assert s["args"]["top_k"] == 4 and s["args"]["seed"] == 3 and s["args"]["metric"] == "pearson"
    assert f"within-group {s['within_mean']:.3f}" in done.stdout
    loaded = humans.load_output(out)
    g = loaded["graph"]
    assert g.number_of_edges() == s["graph_edges"] and all({"group", "x", "y", "user"} <= set(d)
                                                            for _, d in g.nodes(data=True))
    assert max(dict(g.degree).values()) <= 4
    assert list(loaded["groups"]["group"]) == ["g0", "g1", "g2"]

    bad = _cli(*common[:6], "--rating", "stars", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and not (tmp_path / "bad").exists()
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "'stars'" in lines[0], bad.stderr


def test_group_test_by_hand_ignores_the_diagonal():
    sim = np.array([[1.0, 0.8, 0.1, -0.1],
                    [0.8, 1.0, 0.0, 0.2],
                    [0.1, 0.0, 1.0, 0.6],
                    [-0.1, 0.2, 0.6, 1.0]])
    st = humans.group_test(sim, ["a", "a", "b", "b"], permutations=3000, seed=0)
    assert st["within_mean"] == pytest.approx(0.7) and st["between_mean"] == pytest.approx(0.05)
    assert (st["within_pairs"], st["between_pairs"]) == (2, 4)
    # of the 3 ways to split 4 users 2 + 2, the true one has the largest gap: p is about 1/3
    assert 0.28 < st["p_value"] < 0.39
    nan_diag = sim.copy()
    np.fill_diagonal(nan_diag, np.nan)
    assert humans.group_test(nan_diag, ["a", "a", "b", "b"], permutations=3000, seed=0) == st
    table = humans.group_table(sim, ["a", "a", "b", "b"], [], list("wxyz")).set_index("group")
    assert table.loc["a", "within_mean"] == pytest.approx(0.8) and table.loc["b", "between_mean"] == pytest.approx(0.05)
    one = humans.group_test(sim, ["a"] * 4, permutations=10)
    assert one["p_value"] is None and "one group" in one["note"]


def test_without_a_group_column_there_is_no_group_test(tmp_path):
    r = read_ratings(_write(_planted(), tmp_path / "r.csv"), **COLS)
    a = analyse(r, metric="cosine", permutations=100)
    s = humans.write_outputs(tmp_path / "out", r, a, {"min_overlap": 5, "top_k": 5, "metric": "cosine", "seed": 0})
    assert s["within_mean"] is None and s["p_value"] is None and "--group" in s["group_note"]
    assert s["groups"] == 1 and s["mean_similarity"] == pytest.approx(np.nanmean(a.sim))

"""Reading a long table of human ratings for core.personas.humans: one rating per row, in CSV/TSV,
JSONL or Parquet (picked by suffix), checked so that every problem is a HumansError naming the file,
row, column or value; and a generator of such tables with planted groups (tests, benchmarks, demos)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

READERS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
           ".pq": "parquet"}
MISSING_GROUP = "(missing)"
NO_GROUP = "all"


class HumansError(ValueError):
    """Bad ratings input or options; the message names the file, row, column or value at fault."""


@dataclass
class Ratings:
    """A validated long table (columns user, item, rating, group; one row per user-item) and its counts."""

    frame: pd.DataFrame
    source: str
    n_rows: int  # rows in the file
    n_duplicates: int  # (user, item) rows beyond the first, averaged into one rating
    n_missing_group: int = 0
    group_column: str | None = None

    @property
    def users(self) -> int:
        return int(self.frame["user"].nunique())

    @property
    def items(self) -> int:
        return int(self.frame["item"].nunique())


def _read_jsonl(path: Path) -> tuple[pd.DataFrame, list[int]]:
    records, lines = [], []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise HumansError(f"{path.name}, line {n}: not valid JSON ({e})") from None
            if not isinstance(obj, dict):
                raise HumansError(f"{path.name}, line {n}: expected a JSON object, got {type(obj).__name__}")
            records.append(obj)
            lines.append(n)
    return pd.DataFrame(records), lines


def read_table(path: str | Path) -> tuple[pd.DataFrame, callable]:
    """The raw table and a function naming row i (0-based) for messages ('line 7' / 'data row 7')."""
    path = Path(path)
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise HumansError(f"{path.name}: unknown suffix {path.suffix or '(none)'!r}; use one of "
                          + ", ".join(sorted(READERS)))
    if not path.is_file():
        raise HumansError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise HumansError(f"{path.name}: the file is empty (no ratings)")
    try:
        if kind in ("csv", "tsv"):
            df = pd.read_csv(path, sep="\t" if kind == "tsv" else ",", dtype=str, skipinitialspace=True)
            return df, lambda i: f"line {i + 2}"  # line 1 is the header
        if kind == "jsonl":
            df, lines = _read_jsonl(path)
            return df, lambda i: f"line {lines[i]}"
        df = pd.read_parquet(path)
        return df, lambda i: f"row {i + 1}"
    except HumansError:
        raise
    except pd.errors.EmptyDataError:
        raise HumansError(f"{path.name}: the file is empty (no ratings)") from None
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise HumansError(f"{path.name}: cannot read as {kind}: {str(e).splitlines()[0]}") from None
    except Exception as e:  # noqa: BLE001 - pyarrow raises its own types for a file that is not Parquet
        raise HumansError(f"{path.name}: cannot read as {kind}: {type(e).__name__}: {e}") from None


def _ids(col: pd.Series, name: str, column: str, where, source: str) -> pd.Series:
    bad = col.isna() | (col.astype(str).str.strip() == "")
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise HumansError(f"{source}, {where(i)}: the {name} column {column!r} is empty"
                          + (f" (and {int(bad.sum()) - 1} more rows)" if bad.sum() > 1 else ""))
    return col.astype(str).str.strip()


def read_ratings(path: str | Path, user: str, item: str, rating: str, group: str | None = None) -> Ratings:
    """Read and validate a long ratings table; raises HumansError naming what is wrong."""
    path = Path(path)
    raw, where = read_table(path)
    src = path.name
    if raw.empty:
        raise HumansError(f"{src}: no ratings (the table has no rows)")
    present = ", ".join(map(str, raw.columns))
    for role, col in (("--user", user), ("--item", item), ("--rating", rating), ("--group", group)):
        if col is not None and col not in raw.columns:
            raise HumansError(f"{src}: no column {col!r} (asked for by {role}); columns present: {present}")
    users = _ids(raw[user], "user", user, where, src)
    items = _ids(raw[item], "item", item, where, src)
    values = pd.to_numeric(raw[rating], errors="coerce").astype(float)
    bad = ~np.isfinite(values.to_numpy())
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        v = raw[rating].iloc[i]
        empty = v is None or (isinstance(v, float) and np.isnan(v))
        what = "the value is empty" if empty else f"{v!r} is not a number"
        more = f" (and {int(bad.sum()) - 1} more rows)" if bad.sum() > 1 else ""
        raise HumansError(f"{src}, {where(i)}: rating column {rating!r}: {what}{more}")
    frame = pd.DataFrame({"user": users, "item": items, "rating": values.to_numpy()})
    n_missing = 0
    if group is not None:
        g = raw[group]
        missing = g.isna() | (g.astype(str).str.strip() == "")
        n_missing = int(missing.sum())
        frame["group"] = g.astype(str).str.strip().where(~missing, MISSING_GROUP)
        per_user = frame.groupby("user", sort=True)["group"].nunique()
        if (per_user > 1).any():
            u = per_user.index[per_user.to_numpy() > 1][0]
            vals = sorted(frame.loc[frame["user"] == u, "group"].unique())
            raise HumansError(f"{src}: user {u!r} has {len(vals)} values in group column {group!r}: "
                              + ", ".join(map(repr, vals[:5])) + "; a user must belong to one group")
    else:
        frame["group"] = NO_GROUP
    n_rows = len(frame)
    frame = frame.groupby(["user", "item"], as_index=False, sort=True).agg(rating=("rating", "mean"),
                                                                           group=("group", "first"))
    out = Ratings(frame=frame, source=str(path), n_rows=n_rows, n_duplicates=n_rows - len(frame),
                  n_missing_group=n_missing, group_column=group)
    if out.users < 2:
        raise HumansError(f"{src}: only {out.users} user in column {user!r}; similarity needs at least two")
    return out


def planted_ratings(n_users: int = 300, n_groups: int = 5, n_items: int = 200, per_user: int = 50,
                    noise: float = 1.0, taste: float = 1.0, seed: int = 0) -> pd.DataFrame:
    """A long table with planted groups, for tests, benchmarks and demos: each group has a taste vector
    over the items (N(0, taste)), a user's rating of an item is 3 + their group's taste + N(0, noise),
    rounded and clipped to 1..5, on ``per_user`` items drawn at random. Columns user, item, rating, group."""
    rng = np.random.default_rng(seed)
    tastes = rng.normal(0.0, taste, size=(n_groups, n_items))
    group_of = np.arange(n_users) % n_groups
    items = np.argsort(rng.random((n_users, n_items)), axis=1)[:, :per_user]
    users = np.repeat(np.arange(n_users), per_user)
    flat = items.ravel()
    ratings = np.clip(np.rint(3 + tastes[group_of[users], flat] + rng.normal(0.0, noise, flat.size)), 1, 5)
    return pd.DataFrame({"user": [f"u{u:04d}" for u in users], "item": [f"i{i:04d}" for i in flat],
                         "rating": ratings.astype(int), "group": [f"g{g}" for g in group_of[users]]})

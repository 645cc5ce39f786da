"""Load UltraFeedback-shaped data (hub id or local JSON / JSONL / Parquet) into a PreferenceTable.

Strict by default: the first bad row raises :class:`DataError` naming the row and the field.
With ``lenient=True`` bad rows are skipped and counted in ``table.report`` instead. Nothing is
ever silently coerced into a wrong number: a rating is "1".."5" (or an int 1..5) or "N/A".
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from core.data.table import ASPECTS, PreferenceTable

HUB_ID = "openbmb/UltraFeedback"
FILE_SUFFIXES = (".json", ".jsonl", ".parquet")
DEFAULT_DROP_SOURCES = ("truthful_qa",)  # the dataset card flags it as contaminated


class DataError(ValueError):
    """A row that does not fit the UltraFeedback schema; names the row (0-based) and field."""

    def __init__(self, row: int | None, field: str, problem: str):
        self.row, self.field, self.problem = row, field, problem
        where = f"row {row}" if row is not None else "file"
        super().__init__(f"{where}, field '{field}': {problem}")


class HubUnavailableError(RuntimeError):
    """The dataset hub cannot be reached (offline machine or HF_HUB_OFFLINE set)."""


def load_ultrafeedback(
    source: str | os.PathLike | Iterable[dict],
    *,
    lenient: bool = False,
    drop_sources: Iterable[str] = DEFAULT_DROP_SOURCES,
    n_completions: int = 4,
    split: str = "train",
    limit: int | None = None,
) -> PreferenceTable:
    """Read UltraFeedback rows from a hub id, a local file, or an iterable of dicts.

    Args:
        source: ``"openbmb/UltraFeedback"`` (or another hub id), a path to a .json / .jsonl /
            .parquet file in the same schema, or rows already in memory.
        lenient: skip bad rows (counted in ``table.report["skipped"]``) instead of raising.
        drop_sources: rows whose ``source`` is listed are dropped and counted.
        n_completions: completions every kept question must have (UltraFeedback has 4).
        limit: stop after this many rows read (for quick looks at the real data).
    """
    rows = _iter_source(source, split=split)
    drop = set(drop_sources)
    qids, prompts, sources, responses, models, ratings = [], [], [], [], [], []
    skipped: Counter = Counter()
    dropped: Counter = Counter()
    examples: list[str] = []
    n_read = 0
    for i, row in enumerate(rows):
        if limit is not None and i >= limit:
            break
        n_read += 1
        try:
            parsed = _parse_row(i, row, n_completions)
        except DataError as err:
            if not lenient:
                raise
            skipped[err.field.split("[")[0].split(".")[0] + ": " + _kind(err.problem)] += 1
            if len(examples) < 5:
                examples.append(str(err))
            continue
        src, prompt, resp, mods, rat = parsed
        if src in drop:
            dropped[src] += 1
            continue
        qids.append(_qid(prompt, i))
        prompts.append(prompt)
        sources.append(src)
        responses.append(resp)
        models.append(mods)
        ratings.append(rat)
    arr = np.asarray(ratings, dtype=np.float32).reshape(-1, n_completions, len(ASPECTS))
    report = {
        "rows_read": n_read,
        "questions": len(prompts),
        "skipped": dict(skipped),
        "skipped_total": int(sum(skipped.values())),
        "skipped_examples": examples,
        "dropped_sources": dict(dropped),
    }
    return PreferenceTable(qids, prompts, sources, responses, arr, models, report)


def _kind(problem: str) -> str:
    return problem.split(":")[0].split("(")[0].strip()[:40]


def _qid(prompt: str, row: int) -> str:
    return f"q{row:06d}-" + hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:8]


def _parse_rating(row: int, field: str, value) -> float:
    if isinstance(value, list):  # older copies: a one-item list around the aspect record
        if len(value) != 1:
            raise DataError(row, field, f"expected a one-item list, got {len(value)} items")
        value = value[0]
    if not isinstance(value, dict) or "Rating" not in value:
        raise DataError(row, field + ".Rating", "missing (expected an object with a 'Rating')")
    r = value["Rating"]
    if isinstance(r, str):
        s = r.strip()
        if s.upper() in ("N/A", "NA"):
            return float("nan")
        if s.isdigit():
            r = int(s)
        else:
            raise DataError(row, field + ".Rating", f"not a rating: {r!r} (expected '1'..'5' or 'N/A')")
    if isinstance(r, bool) or not isinstance(r, int | float) or float(r) != int(r):
        raise DataError(row, field + ".Rating", f"not a rating: {r!r} (expected '1'..'5' or 'N/A')")
    if not 1 <= int(r) <= 5:
        raise DataError(row, field + ".Rating", f"rating {r!r} is outside 1..5")
    return float(r)


def _parse_row(i: int, row, n_completions: int):
    if isinstance(row, BadLine):
        raise DataError(i, "<row>", row.problem)
    if not isinstance(row, dict):
        raise DataError(i, "<row>", f"not a JSON object: got {type(row).__name__}")
    prompt = row.get("instruction")
    if prompt is None:
        raise DataError(i, "instruction", "missing")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(i, "instruction", "must be a non-empty string")
    src = row.get("source", "unknown")
    if not isinstance(src, str):
        raise DataError(i, "source", "must be a string")
    comps = row.get("completions")
    if comps is None:
        raise DataError(i, "completions", "missing")
    if not isinstance(comps, list | tuple) and hasattr(comps, "tolist"):  # parquet gives arrays
        comps = comps.tolist()
    if not isinstance(comps, list | tuple):
        raise DataError(i, "completions", f"must be a list, got {type(comps).__name__}")
    if len(comps) != n_completions:
        raise DataError(i, "completions", f"wrong number of completions: expected {n_completions}, got {len(comps)}")
    responses, models, ratings = [], [], []
    for c, comp in enumerate(comps):
        f = f"completions[{c}]"
        if not isinstance(comp, dict):
            raise DataError(i, f, "not an object")
        resp = comp.get("response")
        if not isinstance(resp, str):
            raise DataError(i, f + ".response", "missing" if resp is None else "must be a string")
        ann = comp.get("annotations")
        if not isinstance(ann, dict):
            raise DataError(i, f + ".annotations", "missing" if ann is None else "must be an object")
        rat = []
        for a in ASPECTS:
            if a not in ann or ann[a] is None:
                raise DataError(i, f"{f}.annotations.{a}", "missing")
            rat.append(_parse_rating(i, f"{f}.annotations.{a}", _plain(ann[a])))
        responses.append(resp)
        models.append(str(comp.get("model", "")))
        ratings.append(rat)
    return src, prompt, responses, models, ratings


def _plain(v):
    """Parquet hands nested values back as numpy arrays; turn them into lists."""
    if hasattr(v, "tolist") and not isinstance(v, dict):
        return v.tolist()
    return v


def _iter_source(source, *, split: str) -> Iterator:
    if not isinstance(source, str | os.PathLike):
        yield from source
        return
    path = Path(source)
    looks_like_file = path.suffix.lower() in FILE_SUFFIXES or path.exists()
    if looks_like_file:
        if not path.exists():
            raise FileNotFoundError(f"No such data file: {path}. Give a .json, .jsonl or .parquet file, or a hub id.")
        yield from _iter_file(path)
        return
    yield from _iter_hub(str(source), split)


def _iter_file(path: Path) -> Iterator:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            yield from batch.to_pylist()
        return
    if suffix not in (".json", ".jsonl"):
        raise DataError(None, "<file>", f"unsupported file type {suffix!r}: use .json, .jsonl or .parquet")
    with path.open("r", encoding="utf-8") as fh:
        first = fh.read(1)
        while first and first.isspace():
            first = fh.read(1)
        fh.seek(0)
        if suffix == ".json" and first == "[":
            try:
                data = json.load(fh)
            except json.JSONDecodeError as err:
                raise DataError(None, "<file>", f"not JSON: {err.msg} at line {err.lineno}") from None
            yield from data
            return
        # JSON lines: one object per line (a .json file holding lines is read the same way)
        for line in fh:
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as err:
                yield BadLine(f"not JSON: {err.msg} (column {err.colno})")


class BadLine:
    """A line of a JSON-lines file that did not parse; reported with its row number."""

    def __init__(self, problem: str):
        self.problem = problem


def _iter_hub(hub_id: str, split: str) -> Iterator:
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise HubUnavailableError(
            f"Cannot load {hub_id!r} from the hub: this machine is offline (HF_HUB_OFFLINE=1). "
            "Download the dataset elsewhere and pass a local .jsonl/.parquet path, or use the "
            "built-in offline corpus (python -m core.data.corpus --out corpus.jsonl)."
        )
    try:
        import datasets

        ds = datasets.load_dataset(hub_id, split=split)
    except Exception as err:  # network, auth, missing dataset: one clear message
        raise HubUnavailableError(
            f"Could not load {hub_id!r} (split {split!r}) through the datasets library: "
            f"{type(err).__name__}: {err}. If the hub is unreachable, pass a local file or use the "
            "offline corpus (python -m core.data.corpus)."
        ) from err
    yield from ds


BINARIZED_HUB_IDS = ("HuggingFaceH4/ultrafeedback_binarized", "argilla/ultrafeedback-binarized-preferences-cleaned")


def load_binarized(source, *, split: str = "train_prefs", lenient: bool = False):
    """Binarized UltraFeedback (prompt / chosen / rejected): for the non-personalized baseline only.

    These variants carry no per-aspect ratings, so no user can be simulated on them. ``chosen`` and
    ``rejected`` may be strings or chat transcripts (lists of {role, content}); the last assistant
    turn is used. Returns a pandas DataFrame with columns prompt, chosen, rejected.
    """
    import pandas as pd

    out, skipped = [], 0
    for i, row in enumerate(_iter_source(source, split=split)):
        try:
            if isinstance(row, BadLine):
                raise DataError(i, "<row>", row.problem)
            if not isinstance(row, dict):
                raise DataError(i, "<row>", "not a JSON object")
            rec = {}
            for f in ("prompt", "chosen", "rejected"):
                v = row.get(f)
                if isinstance(v, list | tuple):
                    turns = [t.get("content") for t in v if isinstance(t, dict) and t.get("role") == "assistant"]
                    v = turns[-1] if turns else None
                if not isinstance(v, str) or not v.strip():
                    raise DataError(i, f, "missing or not text")
                rec[f] = v
            out.append(rec)
        except DataError:
            if not lenient:
                raise
            skipped += 1
    df = pd.DataFrame(out, columns=["prompt", "chosen", "rejected"])
    df.attrs["skipped"] = skipped
    return df

"""Cached data loaders and URL-backed state shared by the pages."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import streamlit as st

from core.data import PreferenceTable, generate_table, load_ultrafeedback
from core.users.tastes import UserError, preset, validate_users

CORPUS_DEFAULTS = {"seed": 0, "n": 1500, "signal": 1.0, "noise": 0.0}


@st.cache_data(show_spinner="Generating the offline corpus…", max_entries=8)
def corpus(seed: int, n: int, signal: float, noise: float) -> PreferenceTable:
    return generate_table(n_prompts=int(n), seed=int(seed), signal=float(signal), rating_noise=float(noise))


@st.cache_data(show_spinner="Reading the uploaded file…", max_entries=4)
def uploaded_table(name: str, data: bytes, lenient: bool) -> PreferenceTable:
    """Load an uploaded UltraFeedback file through the same loader (and errors) as the CLI."""
    suffix = Path(name).suffix.lower()
    with tempfile.NamedTemporaryFile(suffix=suffix, delete=False) as fh:
        fh.write(data)
        path = fh.name
    try:
        return load_ultrafeedback(path, lenient=lenient)
    finally:
        Path(path).unlink(missing_ok=True)


def qp_get(key: str, default, cast=str):
    """A typed query parameter, falling back to the default on absence or garbage."""
    raw = st.query_params.get(key)
    if raw is None:
        return default
    try:
        return cast(raw)
    except (TypeError, ValueError):
        return default


def encode_users(W: np.ndarray) -> str:
    return ";".join(",".join(f"{x:.4g}" for x in row) for row in W)


def decode_users(text: str) -> np.ndarray:
    """A link's ``users=``: one row of comma-separated weights a user, rows separated by ';'. A UserError
    (a ValueError) names the row that is not numbers, or the user and aspect that do not validate."""
    rows = []
    for i, row in enumerate(r for r in text.split(";") if r.strip()):
        try:
            rows.append([float(x) for x in row.split(",")])
        except ValueError:
            raise UserError(f"user {i}: {row.strip()!r} is not numbers separated by commas") from None
    return validate_users(rows)


def read_users_link() -> tuple[str, int, np.ndarray, str | None]:
    """(preset name or 'custom', seed, weights (U, 4), problem) from the URL. ``problem`` is None, or says
    why the link's users could not be read; then the users are the two-opposed preset."""
    name = qp_get("preset", "two-opposed")
    seed = qp_get("useed", 0, int)
    if name == "custom":
        raw = st.query_params.get("users", "")
        try:
            return name, seed, decode_users(raw), None
        except ValueError as err:
            shown = raw if len(raw) <= 80 else raw[:77] + "..."
            why = f"users={shown} is not a list of weight vectors ({err})" if raw else f"the link has no users= ({err})"
    else:
        try:
            return name, seed, preset(name, seed=seed), None
        except ValueError as err:
            why = f"preset={name} is not a user preset ({err})"
    return "two-opposed", seed, preset("two-opposed"), (
        f"This link's users could not be read: {why}. Showing the two-opposed preset instead; "
        "choose a preset or apply edits on the Users page to replace them.")


def current_users(warn: bool = True) -> tuple[str, int, np.ndarray]:
    """(preset name or 'custom', seed, weights (U, 4)) from the URL, defaulting to two-opposed. A link whose
    users cannot be read also falls back to two-opposed and, with ``warn``, says why on the page."""
    name, seed, W, problem = read_users_link()
    if problem and warn:
        st.warning(problem, icon="⚠️")
    return name, seed, W


def run_label(run: dict) -> str:
    """A run's label in pickers: name and id only, never its state or progress.

    The browser keeps a select widget's choice as the option label, so a label that changes while a run
    goes queued -> running -> succeeded would silently empty the selection (and its charts) at that moment.
    The state lives in the runs table instead.
    """
    rid = run.get("run_id", "?")
    name = run.get("label") or run.get("method") or run.get("mode")
    return f"{name} · {rid}" if name and name != rid else rid

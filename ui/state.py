"""Cached data loaders and URL-backed state shared by the pages."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import streamlit as st

from core.data import PreferenceTable, generate_table, load_ultrafeedback
from core.users import preset, validate_users

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
    return validate_users([[float(x) for x in row.split(",")] for row in text.split(";") if row.strip()])


def current_users() -> tuple[str, int, np.ndarray]:
    """(preset name or 'custom', seed, weights (U, 4)) from the URL, defaulting to two-opposed."""
    name = qp_get("preset", "two-opposed")
    seed = qp_get("useed", 0, int)
    if name == "custom":
        try:
            return name, seed, decode_users(st.query_params.get("users", ""))
        except ValueError:
            name = "two-opposed"
    try:
        return name, seed, preset(name, seed=seed)
    except ValueError:
        return "two-opposed", seed, preset("two-opposed")


def run_label(run: dict) -> str:
    """A run's label in pickers: name and id only, never its state or progress.

    The browser keeps a select widget's choice as the option label, so a label that changes while a run
    goes queued -> running -> succeeded would silently empty the selection (and its charts) at that moment.
    The state lives in the runs table instead.
    """
    rid = run.get("run_id", "?")
    name = run.get("label") or run.get("method") or run.get("mode")
    return f"{name} · {rid}" if name and name != rid else rid

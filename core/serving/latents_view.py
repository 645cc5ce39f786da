"""What the Latent page draws, as arrays (no streamlit here): the probe latents of a step, the run's users'
weights per point, and the people scored at that step (core.users.people) stacked for one shared t-SNE.

Files of a run's ``latents/`` folder (written by core.training.trainer):

    step-N.npz                      probe set: mu (n, L), user (n,), question (n,)
    people-trained-step-N.npz       the run's own users, read from their own choices (vpl runs only)
    people-outside-step-N.npz       people outside training, same layout:
        mu (P*R, L) person-major readings, person (P*R,), weights (P, 4), names (P,), kinds (P,),
        accuracy (P,) (NaN where a person has no strict pair)

Every reader here tolerates a missing, half-written or foreign file: it is skipped, never raised.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.data.table import ASPECTS

STEP_RE = re.compile(r"^step-(\d+)\.npz$")
PEOPLE_RE = re.compile(r"^people-(trained|outside)-step-(\d+)\.npz$")
SOURCES = ("trained", "outside")  # the order people rows are stacked in
SHORT = {"helpfulness": "help", "honesty": "hon", "instruction_following": "instr", "truthfulness": "truth"}


def latent_files(run_path: str | Path) -> dict[int, str]:
    """step -> path of the probe latents file, sorted by step."""
    out = {}
    try:
        for p in (Path(run_path) / "latents").iterdir():
            m = STEP_RE.match(p.name)
            if m:
                out[int(m.group(1))] = str(p)
    except OSError:
        pass
    return dict(sorted(out.items()))


def people_files(run_path: str | Path) -> dict[int, dict[str, str]]:
    """step -> {"trained": path, "outside": path} (either may be absent), sorted by step; {} for runs
    written before people were scored, and for runs without a latent (traditional)."""
    out: dict[int, dict[str, str]] = {}
    try:
        for p in (Path(run_path) / "latents").iterdir():
            m = PEOPLE_RE.match(p.name)
            if m:
                out.setdefault(int(m.group(2)), {})[m.group(1)] = str(p)
    except OSError:
        pass
    return {s: dict(sorted(out[s].items(), key=lambda kv: SOURCES.index(kv[0]))) for s in sorted(out)}


def run_weights(config: dict | None) -> np.ndarray | None:
    """float (U, 4): the run's users from its config.json (a preset name with ``user_seed``, or a weight
    list), as core.users.tastes.load_users builds them; None when the config does not say."""
    from core.users.tastes import preset, validate_users

    if not isinstance(config, dict) or "users" not in config:
        return None
    users = config["users"]
    try:
        if isinstance(users, str):
            return preset(users, seed=int(config.get("user_seed", 0) or 0))
        return validate_users(users)
    except (TypeError, ValueError):
        return None


def probe_weights(user: np.ndarray, W: np.ndarray | None) -> np.ndarray | None:
    """float (n, 4): each probe point's user's weights; None when a user index is not in ``W``."""
    user = np.asarray(user)
    if W is None or len(user) == 0 or user.min() < 0 or user.max() >= len(W):
        return None
    return np.asarray(W, float)[user.astype(np.int64)]


@dataclass
class People:
    """One row per reading of a person, from both people files of one step (trained first)."""

    step: int
    mu: np.ndarray  # (N, L)
    person: np.ndarray  # (N,) index into that file's people
    source: np.ndarray  # (N,) "trained" | "outside"
    weights: np.ndarray  # (N, 4) the person's own weights
    name: np.ndarray  # (N,) str
    kind: np.ndarray  # (N,) str: trained | one-hot | blend | uniform | dirichlet | population
    accuracy: np.ndarray  # (N,) the person's accuracy on all pairs of the test questions (NaN possible)
    skipped: int = 0  # unreadable files of this step

    def __len__(self) -> int:
        return len(self.mu)

    @property
    def n_people(self) -> int:
        return len({(s, int(p)) for s, p in zip(self.source, self.person, strict=True)})


def _read_people(path: str) -> dict | None:
    try:
        with np.load(path) as z:
            d = {k: np.asarray(z[k]) for k in ("mu", "person", "weights", "names", "kinds", "accuracy")}
    except Exception:  # noqa: BLE001 - half-written or foreign file: skipped and counted
        return None
    mu, person, P = d["mu"], d["person"].astype(np.int64), len(d["names"])
    if (mu.ndim != 2 or len(mu) == 0 or len(person) != len(mu) or not np.isfinite(mu).all()
            or d["weights"].shape != (P, len(ASPECTS)) or len(d["kinds"]) != P or len(d["accuracy"]) != P
            or person.min() < 0 or person.max() >= P):
        return None
    return {**d, "mu": mu.astype(np.float64), "person": person}


def load_people(files: dict[str, str] | None, step: int = -1) -> People | None:
    """The people rows of one step (``files`` as in ``people_files(run)[step]``), or None when there are
    none readable. Each row carries its person's own weights, name, kind and accuracy."""
    parts, skipped = [], 0
    for source in SOURCES:
        path = (files or {}).get(source)
        if path is None:
            continue
        d = _read_people(path)
        if d is None:
            skipped += 1
            continue
        parts.append((source, d))
    if not parts or len({d["mu"].shape[1] for _, d in parts}) != 1:
        return None
    col = {k: [] for k in ("mu", "person", "source", "weights", "name", "kind", "accuracy")}
    for source, d in parts:
        p = d["person"]
        col["mu"].append(d["mu"])
        col["person"].append(p)
        col["source"].append(np.full(len(p), source))
        col["weights"].append(np.asarray(d["weights"], float)[p])
        col["name"].append(np.asarray(d["names"]).astype(str)[p])
        col["kind"].append(np.asarray(d["kinds"]).astype(str)[p])
        col["accuracy"].append(np.asarray(d["accuracy"], float)[p])
    return People(step=step, skipped=skipped, **{k: np.concatenate(v) for k, v in col.items()})


def weights_text(w: np.ndarray) -> str:
    """'help 0.70 · hon 0.10 · instr 0.15 · truth 0.05'."""
    return " · ".join(f"{SHORT[a]} {float(x):.2f}" for a, x in zip(ASPECTS, w, strict=True))


def people_hover(people: People) -> list[str]:
    """One hover line per people row: name, kind, weights, accuracy."""
    out = []
    for n, k, w, a in zip(people.name, people.kind, people.weights, people.accuracy, strict=True):
        acc = "n/a" if not np.isfinite(a) else f"{a:.3f}"
        out.append(f"{n} ({k})<br>{weights_text(w)}<br>accuracy on all test pairs {acc}")
    return out


def tsne_2d(mu: np.ndarray, perplexity: float, seed: int) -> np.ndarray:
    """(n, 2) t-SNE of ``mu`` with perplexity capped at (n - 1) / 3 (sklearn needs it below n)."""
    from sklearn.manifold import TSNE

    perp = float(min(perplexity, max(1.0, (len(mu) - 1) / 3)))
    return TSNE(n_components=2, perplexity=perp, random_state=int(seed), init="pca",
                learning_rate="auto").fit_transform(np.asarray(mu, float))

"""Where the benches leave their figures: bench/out/<name>-<time>.json (ignored by git)."""

from __future__ import annotations

import json
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def write_result(name: str, data: dict, path: str | Path | None = None) -> Path:
    """Write ``data`` as bench/out/<name>-<YYYYmmdd-HHMMSS>.json (or at ``path``, a bench's ``--out``) and
    return the path."""
    path = Path(path) if path else OUT / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path

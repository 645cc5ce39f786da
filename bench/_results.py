"""Where the benches leave their figures: bench/out/<name>-<time>.json (ignored by git)."""

from __future__ import annotations

import json
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def write_result(name: str, data: dict) -> Path:
    """Write ``data`` as bench/out/<name>-<YYYYmmdd-HHMMSS>.json and return the path."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(data, indent=2))
    return path

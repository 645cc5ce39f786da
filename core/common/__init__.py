"""What every stage shares: the run-directory contract, command-line endings, progress, bundled models."""

from pathlib import Path

# the folder holding core/: child processes run `python -m core.X` from it
REPO_ROOT = Path(__file__).resolve().parents[2]

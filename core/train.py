"""`python -m core.train`: train a reward model into a run directory (the code: core.training.trainer)."""

from core.training.trainer import main

if __name__ == "__main__":
    raise SystemExit(main())

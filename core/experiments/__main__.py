"""`python -m core.experiments`: compare methods over seeds and tabulate runs (the code: core.experiments.compare)."""

from core.experiments.compare import main

if __name__ == "__main__":
    raise SystemExit(main())

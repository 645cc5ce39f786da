"""`python -m core.gridjob`: a grid of runs trained in one process, as a job (the code: core.experiments.gridjob)."""

from core.experiments.gridjob import main

if __name__ == "__main__":
    raise SystemExit(main())

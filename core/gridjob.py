"""`python -m core.gridjob`: a grid of runs trained in one process, as a job (the code: core.jobs.gridjob)."""

from core.jobs.gridjob import main

if __name__ == "__main__":
    raise SystemExit(main())

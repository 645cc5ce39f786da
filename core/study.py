"""`python -m core.study`: the study's decoder-only + LoRA setting as a job (the code: core.experiments.study)."""

from core.experiments.study import main

if __name__ == "__main__":
    raise SystemExit(main())

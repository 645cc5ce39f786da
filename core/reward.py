"""`python -m core.reward`: score answers with a finished run, for a user read from their choices (the code: core.serving.run_reward)."""

from core.serving.run_reward import main

if __name__ == "__main__":
    raise SystemExit(main())

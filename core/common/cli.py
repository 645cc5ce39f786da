"""How the command lines (``python -m core.train``, ``core.experiments.gridjob``, ``core.experiments.compare``, ...) end.

An *expected* error, one that bad input or the machine causes rather than a bug, ends a command with one
line ``error: <message>`` on stderr and exit status 2, and no Python traceback: the message already says
what to fix. Anything else still raises, so a bug shows its traceback. A run directory records the failure
in its status.json either way (core.train and the job entry points do that before the error reaches here).

    @cli_main
    def main(argv: list[str] | None = None) -> int:
        ...

Expected are ``OSError`` (a missing or unwritable file or folder, a full embedding cache
(``core.models.embedding_store.CacheFullError``), a model that cannot be loaded offline) and the project's own input
errors listed in ``EXPECTED``. They are recognised by module and class name, so that this module imports
none of the (heavy) modules that define them, and so that ``python -m core.gridjob``'s own ``GridError``,
defined in ``__main__`` there, counts too.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

EXIT_EXPECTED = 2

# (module, class) of the errors whose message is the whole story for the person at the terminal
EXPECTED: frozenset[tuple[str, str]] = frozenset({
    ("core.training.config", "ConfigError"),
    ("core.training.distributed", "LaunchError"),
    ("core.users.tastes", "UserError"),
    ("core.data.ultrafeedback", "DataError"),
    ("core.data.ultrafeedback", "HubUnavailableError"),
    ("core.experiments.gridjob", "GridError"),
    ("core.experiments.compare", "UsersArgError"),
    ("core.experiments.study", "StudyError"),
    ("core.experiments.study", "StudyStopped"),
    ("core.jobs.manager", "JobError"),
    ("core.serving.run_reward", "RewardModelError"),
    ("core.personas.ratings", "HumansError"),
    ("core.personas.openai_judge", "JudgeRequestError"),
})
_NAMES = frozenset(name for _, name in EXPECTED)


def is_expected(err: BaseException) -> bool:
    """True for an error a command line should report in one line (see the module docstring)."""
    for cls in type(err).__mro__:
        if cls is OSError:
            return True
        module, name = getattr(cls, "__module__", ""), cls.__qualname__
        if (module, name) in EXPECTED or (module == "__main__" and name in _NAMES):
            return True
    return False


def report(err: BaseException, file=None) -> int:
    """Print ``error: <message>`` (one line) to stderr; returns the exit status for it, 2."""
    message = " ".join(str(err).split()) or type(err).__name__
    print(f"error: {message}", file=file or sys.stderr, flush=True)
    return EXIT_EXPECTED


def cli_main(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a ``main(argv) -> int``: an expected error it raises becomes ``report(err)`` (exit status 2)."""

    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except Exception as err:
            if not is_expected(err):
                raise
            return report(err)

    return run

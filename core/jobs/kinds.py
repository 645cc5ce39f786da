"""The built-in job kinds: the one place that lists them (core.jobs.manager imports this on first look-up).

Adding a kind is one entry below: a name, the CLI module (``python -m MODULE --config FILE --run-dir
DIR``, writing the run-dir contract of core.common.runs) and a validator given as a lazy
``"package.module:function"`` string, so that importing this file imports no feature. A validator
takes the submitted dict and returns ``(full config dict, label, run-id prefix)``, or just the validated
dict / pydantic model (label and prefix are then the kind's name); it raises ValueError naming the field.
"""

from __future__ import annotations

from core.jobs.manager import JobKind, register_kind


def validate_train(raw: dict) -> tuple[dict, str, str]:
    """core.training.config.build_config (raises ConfigError naming the field); label like ``vpl-s0``."""
    from core.training.config import build_config

    cfg = build_config(raw)
    name = cfg.preset or cfg.method
    return cfg.model_dump(mode="json"), f"{name}-s{cfg.seed}", name


BUILTIN_KINDS = (
    JobKind("train", "core.train", "core.jobs.kinds:validate_train"),
    JobKind("personas", "core.personas", "core.personas.config:validate_config"),
    JobKind("study", "core.study", "core.experiments.study:validate_study_job", members="runs"),  # a grid too (core.training.grid)
    JobKind("grid", "core.gridjob", "core.experiments.gridjob:validate_grid_job", members="runs"),
)

for _kind in BUILTIN_KINDS:
    register_kind(_kind)

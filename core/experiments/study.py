"""The study's own setting: a decoder-only LM with LoRA as the query encoder (seed §3.4, Table 1).

    python -m core.experiments study --size tiny|full [--users two-opposed|four-one-hot] --out DIR
        [--seeds 0 1 2] [--workers N] [--device auto|cpu|cuda] [--dry-run]
    python -m core.study --config study.json --run-dir DIR      # the same, as a background job

The grid: methods traditional, vpl, vpl-adaptive (plus ``personal`` once that preset exists) x seeds,
each trained with SmolLM2-135M (the bundled decoder-only model, GPT-2-sized) + LoRA on its attention
projections, at the study's lr 1e-4 and batch 4 x 8. It writes ``DIR/runs/<method>-s<seed>/``
(ordinary run directories, shown by the Results page) and ``DIR/table.csv`` / ``table.json`` with an
``encoder`` column.

Sizes:
- ``tiny``: a pipeline check that fits 2 CPU cores in a few minutes (CI runs it): 60 questions, 4
  steps, the last 16 tokens of each text (and of each segment), batch 1 x 2. Its accuracies mean nothing;
  longer texts made its personal group too big for a 2-core machine (docs/results/study-setting.md).
- ``full``: 1500 questions, 256 tokens, batch 4 x 8, ``FULL_STEPS`` steps; sized from per-step times
  measured on an H200 (``MEASURED`` below) to finish within 10 minutes on one H100-class GPU.

``--dry-run`` measures one optimizer step, one evaluation batch and the encoder's load on the chosen
device and prints the wall-time estimate of the chosen size there; on a machine without CUDA it also
prints the estimate from the CUDA figures recorded in ``MEASURED``.

On a CPU, a study (dry run or not) first estimates the memory one step of its grid holds (``step_memory``:
the measured per-token figures under "memory" below, no model loaded) and refuses at once, naming that
figure, the machine's and how to lower it, where it exceeds the machine's memory (``full`` does on a CPU:
each step of three or four runs goes through SmolLM2 as one backward pass).
``PREFLENS_MEMORY_BYTES`` stands in for the machine's memory (tests, or to leave room for other work).

Seams, if it grows: the config and job entry (``StudyConfig``, ``validate_study_job``), running
(``run_study``, ``_run_parallel``) and the memory estimate (``step_memory``, ``check_memory``); the last
two start at section lines below.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.common import REPO_ROOT
from core.common.cli import cli_main
from core.common.runs import RunDir
from core.training.config import field_problems

USER_SETS = ("two-opposed", "four-one-hot")  # user presets (core.users.tastes)
STUDY_ENCODER = {"encoder": "bundled-smollm2", "query_encoder": "lora", "lr": 1e-4, "batch_size": 4, "grad_accum": 8}
FULL_STEPS = 250
SIZES: dict[str, dict] = {
    "tiny": {"corpus_prompts": 60, "max_train_per_user": 16, "max_test_per_user": 6, "pool_size": 8, "n_demos": 2,
             "max_length": 16, "batch_size": 1, "grad_accum": 2, "steps": 4, "eval_every": 4, "probe_per_user": 6},
    "full": {"corpus_prompts": 1500, "max_test_per_user": 128, "max_length": 256, "steps": FULL_STEPS,
             "eval_every": 25},
}
# Figures measured with `--dry-run --device cuda` on a GPU (SmolLM2-shaped weights, `full` settings:
# 256 tokens, batch 4 x 8, fused micro-batches, cuDNN attention off), used to print a CUDA estimate on
# machines without one. step_s: s per optimizer step; eval_pair_s: s per test pair; setup_s: per run;
# encode_rate: frozen texts/s.
MEASURED: dict[str, dict] = {
    "NVIDIA H200": {"note": "2026-11-27, torch 2.11 + cu130, one process", "step_s": 0.149,
                    "eval_pair_s": 0.426 / 256, "setup_s": 9.1, "encode_rate": 647.0},
}


class StudyError(ValueError):
    """A study request that does not validate; the message names the field."""


class StudyMemoryError(StudyError):
    """A study whose step would not fit this machine's memory; the message names both figures and the way down."""


class StudyConfig(BaseModel):
    """A study job's config (``kind: study``); saved as config.json in the job's run directory."""

    model_config = ConfigDict(extra="forbid")

    size: Literal["tiny", "full"] = Field("tiny", description="'tiny' (CPU pipeline check) or 'full' (GPU-sized).")
    users: Literal["two-opposed", "four-one-hot"] = Field("two-opposed", description="Which user set to train on.")
    methods: list[str] | None = Field(None, description="Presets to run (default: traditional, vpl, vpl-adaptive, and personal where it exists).")
    seeds: list[int] = Field([0, 1, 2], min_length=1, max_length=10, description="Seeds, one run per method and seed.")
    workers: int = Field(0, ge=0, le=16, description="0 = auto = 1: every run in one process, stepped together (core.training.grid: set-up once, stacked heads and LoRA adapters). N > 1: N child processes, one run each (the way before the grid).")
    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu' or 'cuda[:N]'.")
    overrides: dict = Field({}, description="Extra TrainConfig fields for every run, e.g. {'steps': 100}.")


def default_methods() -> list[str]:
    from core.training.config import PRESETS

    return ["traditional", "vpl", "vpl-adaptive"] + (["personal"] if "personal" in PRESETS else [])


def validate_study(raw: dict) -> StudyConfig:
    raw = {k: v for k, v in dict(raw).items() if k != "kind"}
    try:
        cfg = StudyConfig(**raw)
    except ValidationError as err:
        raise StudyError(field_problems(err)) from None
    for m in cfg.methods or []:
        if m.startswith("fewshot-"):
            raise StudyError(f"methods: {m!r} is not a trained method")
    run_configs(cfg)  # every run's TrainConfig must validate too, before anything starts
    return cfg


def resolved_workers(cfg: StudyConfig) -> int:
    """0 = auto = 1: every run in one process, stepped together (core.training.grid); N > 1: N child processes."""
    return cfg.workers or 1


def validate_study_job(raw: dict) -> tuple[dict, str, str]:
    """The job layer's validator: (config dict, label like 'study-tiny-two-opposed', run-id prefix)."""
    cfg = validate_study(raw)
    return cfg.model_dump(mode="json"), f"study-{cfg.size}-{cfg.users}", "study"


def run_configs(cfg: StudyConfig) -> dict[str, dict]:
    """{'<method>-s<seed>': validated TrainConfig as a dict} for the grid."""
    from core.training.config import PRESETS, ConfigError, build_config

    out = {}
    for method in cfg.methods or default_methods():
        size = {**STUDY_ENCODER, **SIZES[cfg.size]}
        if PRESETS.get(method, {}).get("grad_accum") == 1:
            # a preset that wants one micro-batch a step (personal; a contrastive term, for one, needs
            # same-user pairs inside the batch) gets the same pairs per step as one batch
            size = {**size, "batch_size": size["batch_size"] * size["grad_accum"], "grad_accum": 1}
        for seed in cfg.seeds:
            raw = {"preset": method, **size, "users": cfg.users,
                   "device": cfg.device, **cfg.overrides, "seed": seed}
            try:
                out[f"{method}-s{seed}"] = build_config(raw).model_dump(mode="json")
            except ConfigError as err:
                raise StudyError(f"{method}: {err}") from None
    return out


# ---------------------------------------------------------------------------------------------- running
def run_study(cfg: StudyConfig, out: str | Path, *, log: Callable[[str], None] = print,
              progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Train the grid into out/runs/ (finished runs are kept, partial ones resume) and write the table."""
    from core.experiments.tables import run_row, summarize, write_table

    out = Path(out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    configs = run_configs(cfg)
    (out / "study.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=2))
    todo = [name for name in configs if RunDir(out / "runs" / name).status().get("state") != "succeeded"]
    log(f"study {cfg.size} / {cfg.users}: {len(configs)} runs ({len(configs) - len(todo)} already done), "
        f"encoder {STUDY_ENCODER['encoder']} + {STUDY_ENCODER['query_encoder']}")
    done = len(configs) - len(todo)
    if progress:
        progress(done, len(configs))
    if todo:
        from core.training.config import TrainConfig
        from core.training.launch import warm_cache

        log(f"frozen embeddings ready in {warm_cache(TrainConfig(**configs[todo[0]]), log=lambda m: None):.1f}s")
    workers = resolved_workers(cfg)
    if workers <= 1 and todo:  # one process: members step together (core.training.grid), progress in steps
        from core.training.config import TrainConfig
        from core.training.launch import train_grid

        cfgs = [TrainConfig(**configs[name]) for name in todo]
        total = sum(c.steps for c in cfgs)
        steps = [0] * len(cfgs)

        def on_step(i, step, _steps):
            steps[i] = step
            if progress and step % 5 == 0:
                progress(sum(steps), total)

        from core.models.encoders import TOKENS

        t0 = time.perf_counter()
        before = dict(TOKENS)
        train_grid(cfgs, [out / "runs" / name for name in todo], log=lambda m: None, on_step=on_step, summary=log)
        wall = time.perf_counter() - t0
        n, grad, nograd = TOKENS["params"], TOKENS["grad"] - before["grad"], TOKENS["no_grad"] - before["no_grad"]
        if n and wall > 0:
            # 6N a trained token (the usual count; LoRA skips the base's weight gradients, so the chip did ~4N)
            # and 2N an evaluated one, over the whole grid's wall time (set-up and evaluations included)
            log(f"encoder work: {grad / 1e6:.1f}M trained + {nograd / 1e6:.1f}M evaluated tokens of a "
                f"{n / 1e6:.0f}M-parameter model in {wall:.1f}s: {(6 * grad + 2 * nograd) * n / wall / 1e12:.1f} "
                f"TFLOP/s achieved at 6N a trained token ({(4 * grad + 2 * nograd) * n / wall / 1e12:.1f} at 4N)")
        for name in todo:
            state = RunDir(out / "runs" / name).status().get("state")
            if state != "succeeded":
                raise StudyStopped(f"{name} ended {state}")
            row = run_row(out / "runs" / name)
            log(f"{name}: accuracy {row['accuracy']:.3f}")
        log(f"{len(todo)} runs as one grid in {time.perf_counter() - t0:.1f}s")
        if progress:
            progress(total, total)
    elif todo:
        _run_parallel({n: configs[n] for n in todo}, out, workers, log, progress, done, len(configs))
    rows = [run_row(out / "runs" / name) for name in configs]
    rows = [r for r in rows if r is not None]
    table = summarize(rows)
    write_table(table, out)
    import pandas as pd

    pd.DataFrame(rows).to_csv(out / "runs.csv", index=False)
    return table


class StudyStopped(RuntimeError):
    """A run of the grid was cancelled or failed; the study stops there (finished runs are kept)."""


_CHILDREN: list[subprocess.Popen] = []


def _run_parallel(configs: dict[str, dict], out: Path, workers: int, log, progress, done: int, total: int) -> None:
    """Each run as ``python -m core.train`` in a child process, ``workers`` at a time."""
    pending = list(configs)
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    # one CPU share per child: torch's default of every core per process makes N children thrash
    threads = max(1, (os.cpu_count() or 1) // workers)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    repo = str(REPO_ROOT)
    try:
        while pending or running:
            while pending and len(running) < workers:
                name = pending.pop(0)
                run = RunDir(out / "runs" / name).create()
                cfg_path = run.path / "train-config.json"
                cfg_path.write_text(json.dumps(configs[name]))
                with open(run.path / "log.txt", "ab") as fh:
                    proc = subprocess.Popen([sys.executable, "-m", "core.train", "--config", str(cfg_path),
                                             "--run-dir", str(run.path)], cwd=repo, stdout=fh,
                                            stderr=subprocess.STDOUT, env=env)
                _CHILDREN.append(proc)
                running[name] = (proc, time.perf_counter())
            time.sleep(0.5)
            for name, (proc, t0) in list(running.items()):
                if proc.poll() is None:
                    continue
                running.pop(name)
                _CHILDREN.remove(proc)
                state = RunDir(out / "runs" / name).status().get("state")
                if state != "succeeded":
                    raise StudyStopped(f"{name} ended {state} (exit {proc.returncode}); see {out / 'runs' / name / 'log.txt'}")
                done += 1
                from core.experiments.tables import run_row

                log(f"{name}: accuracy {run_row(out / 'runs' / name)['accuracy']:.3f} ({time.perf_counter() - t0:.1f}s)")
                if progress:
                    progress(done, total)
    finally:
        for proc in list(_CHILDREN):  # cancel or failure: stop the rest (each checkpoints on SIGTERM)
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in list(_CHILDREN):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
            _CHILDREN.remove(proc)


# ---------------------------------------------------------------------------------------------- memory
# The peak memory of one step of the study on a CPU (float32, no autocast), from the run configs alone:
#
#     peak = BASE_BYTES + MODEL_BYTES x models + TOKEN_BYTES x tokens of the largest step
#
# The grid steps its groups one after another, so the largest group's forward + backward sets the peak: a
# stacked LoRA group sends every member's whole step through the base model as one pass, each text counted
# at max_length tokens, plus its segments with segment_pool. ``models``: one base model per group, plus one
# per kind of features the runs encode into the frozen cache on a cold start. The constants were measured
# (docs/results/study-setting.md, "The memory estimate").
TOKEN_BYTES = 1.7e6
MODEL_BYTES = 0.55e9  # SmolLM2-135M in float32
BASE_BYTES = 1.2e9  # python, torch, the trainers' data and heads
SEGMENTS_PER_TEXT, SEGMENT_TOKENS = 10, 35
MEMORY_ENCODERS = ("bundled-smollm2",)  # what the figures were measured on; a study on another encoder is not checked
MEMORY_ENV = "PREFLENS_MEMORY_BYTES"
GB = 1e9


def _text_tokens(c: dict) -> int:
    """Tokens one text costs a trained forward: max_length, plus its segments with segment_pool."""
    return c["max_length"] + (SEGMENTS_PER_TEXT * min(c["max_length"], SEGMENT_TOKENS) if c["segment_pool"] else 0)


def step_memory(cfg: StudyConfig) -> dict | None:
    """Estimated peak bytes of one step of the study on a CPU (see "memory" above), from its configs alone (no
    model loaded); None where the figures do not apply (no trained query encoder, or another encoder).
    Also the step that sets the peak: its runs, pairs a run and tokens, and ``fixed_bytes`` beside them."""
    from core.training.stacked import LORA_GROUP_TOKENS, STACK_FIELDS

    configs = run_configs(cfg)
    trained = {n: c for n, c in configs.items() if c["query_encoder"] != "frozen"}
    if not trained or any(c["encoder"] not in MEMORY_ENCODERS for c in configs.values()):
        return None
    feature_kinds = len({c["segment_pool"] for c in configs.values()})  # frozen encoders a cold cache loads
    workers = resolved_workers(cfg)
    steps = []  # (run names stepped together, pairs a run, tokens)
    if workers > 1:  # one `core.train` child a run, `workers` at once; micro-batches one at a time unless fused
        for n, c in trained.items():
            pairs = c["batch_size"] * (c["grad_accum"] if c["fused_accumulation"] else 1)
            steps.append(([n], pairs, pairs * 2 * _text_tokens(c)))
        names, pairs, tokens = max(steps, key=lambda s: s[2])
        at_once = min(workers, len(trained))  # each child: its trained encoder and (cold cache) a frozen one
        models = 2 + (3 if trained[names[0]]["query_encoder"] == "full" else 0)
        fixed = at_once * (BASE_BYTES + MODEL_BYTES * models)
        peak = fixed + at_once * TOKEN_BYTES * tokens
    else:  # core.training.grid: LoRA runs stacked as plan_groups forms the groups, full fine-tuning a run at a time
        groups: dict[tuple, list[str]] = {}
        for n, c in trained.items():
            key = ("full", n) if c["query_encoder"] == "full" else tuple(json.dumps(c.get(f)) for f in STACK_FIELDS) + (
                c["grad_strategy"] != "sum", c["lora_r"], c["lora_alpha"])
            groups.setdefault(key, []).append(n)
        models = feature_kinds
        for members in groups.values():
            c = trained[members[0]]
            if c["query_encoder"] == "full":  # its own model, its gradient and AdamW's two moments
                models += 4
                pairs = c["batch_size"] * (c["grad_accum"] if c["fused_accumulation"] else 1)
                steps.append((members, pairs, pairs * 2 * _text_tokens(c)))
                continue
            pairs = c["batch_size"] * c["grad_accum"]
            size = max(1, LORA_GROUP_TOKENS // (pairs * 2 * c["max_length"]))  # core.training.stacked.plan_groups
            for i in range(0, len(members), size):
                models += 1
                steps.append((members[i:i + size], pairs, len(members[i:i + size]) * pairs * 2 * _text_tokens(c)))
        names, pairs, tokens = max(steps, key=lambda s: s[2])
        fixed = BASE_BYTES + MODEL_BYTES * models
        peak = fixed + TOKEN_BYTES * tokens
    c = trained[names[0]]
    return {"bytes": int(peak), "fixed_bytes": int(fixed), "tokens": tokens, "names": names, "pairs": pairs,
            "max_length": c["max_length"], "segments": bool(c["segment_pool"]), "workers": workers}


def machine_memory() -> dict:
    """{'total', 'available' (bytes), 'source'}: physical memory (or a cgroup's lower limit) and what the kernel's
    MemAvailable leaves now; ``PREFLENS_MEMORY_BYTES`` (bytes, or GB with a G suffix) stands in for both."""
    raw = os.environ.get(MEMORY_ENV, "").strip()
    if raw:
        try:
            value = float(raw[:-1]) * GB if raw[-1:].upper() == "G" else float(raw)
        except ValueError:
            raise StudyError(f"{MEMORY_ENV}: not a number of bytes (got {raw!r}; e.g. 8e9 or 8G)") from None
        return {"total": int(value), "available": int(value), "source": MEMORY_ENV}
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    available, source = total, "physical"
    with contextlib.suppress(OSError, StopIteration, ValueError, IndexError), open("/proc/meminfo") as fh:
        available = int(next(ln for ln in fh if ln.startswith("MemAvailable:")).split()[1]) * 1024
    with contextlib.suppress(OSError, ValueError):  # a container's own limit (cgroup v2; "max" = none)
        limit = int(Path("/sys/fs/cgroup/memory.max").read_text())
        if limit < total:
            total, source = limit, "cgroup memory.max"
            available = min(available, limit - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    return {"total": int(total), "available": int(min(available, total)), "source": source}


def check_memory(cfg: StudyConfig, log: Callable[[str], None] = print) -> dict | None:
    """Before anything is loaded: StudyMemoryError where one step of the study on a CPU would need more memory than
    the machine has (its message names both, and how to lower the step); a warning line where it needs more than
    is free right now. A GPU run is not checked (core.training.grid sizes its LoRA groups for one). Returns the estimate
    (None: not checked)."""
    if cfg.device == "auto":
        import torch

        if torch.cuda.is_available():
            return None
    elif not cfg.device.startswith("cpu"):
        return None
    est = step_memory(cfg)
    if est is None:
        return None
    mem = machine_memory()
    need, machine = est["bytes"], f"{mem['total'] / GB:.1f} GB ({mem['source']})"
    if need > mem["total"]:
        methods = ", ".join(sorted({n.rsplit("-s", 1)[0] for n in est["names"]}))
        runs = len(est["names"])
        who = (f"{min(est['workers'], runs)} workers, each a run" if est["workers"] > 1
               else f"{runs} run{'s' * (runs > 1)} ({methods}) stacked")
        seg = f" + ~{SEGMENTS_PER_TEXT * min(est['max_length'], SEGMENT_TOKENS)} of segments" if est["segments"] else ""
        fit = max(0, int((mem["total"] - est["fixed_bytes"]) / TOKEN_BYTES))
        raise StudyMemoryError(
            f"`--size {cfg.size}` on CPU needs about {need / GB:.0f} GB for one step ({who} x {est['pairs']} pairs x 2 "
            f"texts x ({est['max_length']} tokens{seg}) = {est['tokens']} tokens through SmolLM2 at ~"
            f"{TOKEN_BYTES / 1e6:.1f} MB a token for the backward pass, plus {est['fixed_bytes'] / GB:.1f} GB of "
            f"models), more than this machine's {machine}; nothing was loaded. About {fit} tokens a step fit here. "
            f"To lower it: `--size tiny` (the CPU pipeline check); fewer runs (--methods, --seeds); fewer tokens a "
            f"run (--set batch_size=N grad_accum=N max_length=N); or a GPU (--device cuda)")
    if need > mem["available"]:
        log(f"warning: one step needs about {need / GB:.1f} GB and only {mem['available'] / GB:.1f} GB of this "
            f"machine's {machine} are free now: other processes may be pushed out, or this one killed")
    return est


# ---------------------------------------------------------------------------------------------- dry run
def estimate(cfg: StudyConfig, log: Callable[[str], None] = print) -> dict:
    """Measure the grid as it will run (core.training.grid: every run's step in one round, stacked heads and LoRA
    adapters) on cfg.device, on a 60-question corpus (a round's cost does not depend on corpus size), plus
    one evaluation batch and the frozen encoding rate; count the study's real pairs and texts and
    extrapolate its wall time. Without CUDA it also prints the figures recorded on a GPU (``MEASURED``)."""
    import numpy as np
    import torch

    from core.training.config import TrainConfig
    from core.training.dataset import build, used_text_ids
    from core.training.grid import Grid
    from core.training.shared import Shared
    from core.training.trainer import Trainer, load_table, resolve_device
    from core.users.tastes import load_users

    configs = run_configs(cfg)
    first = TrainConfig(**next(c for c in configs.values() if c["method"] == "vpl"))
    data = build(load_table(first), load_users(first), seed=first.seed, test_share=first.test_share,
                 contested_only=first.contested_only, pool_size=first.pool_size, n_demos=first.n_demos,
                 max_train_per_user=first.max_train_per_user, max_test_per_user=first.max_test_per_user)
    n_texts, test_pairs = len(used_text_ids(data)), len(data.test)
    small = {"corpus_prompts": 60, "max_train_per_user": 32, "max_test_per_user": 32, "pool_size": 20}
    cuda = resolve_device(first.device).type == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        shared = Shared()
        trainers = [Trainer(TrainConfig(**{**c, **small}), RunDir(Path(tmp) / name).create(), log=lambda m: None,
                            shared=shared, adapters_later=True) for name, c in configs.items()]
        grid = Grid(trainers, log=lambda m: None)
        setup_s = time.perf_counter() - t0
        tr = trainers[0]
        sync = torch.cuda.synchronize if tr.device.type == "cuda" else (lambda: None)
        texts = [tr.data.texts[i] for i in used_text_ids(tr.data)][:64]
        t0 = time.perf_counter()
        tr.encoder.encode(texts)
        sync()
        encode_rate = len(texts) / (time.perf_counter() - t0)  # texts/s, frozen

        def one_round():
            for g in grid.groups:
                g.step(list(range(len(g.trainers))))

        one_round()  # warm-up (allocations, kernels)
        sync()
        n = 3 if cuda else 1
        t0 = time.perf_counter()
        for _ in range(n):
            one_round()
        sync()
        round_s = (time.perf_counter() - t0) / n
        idx = np.arange(min(32, len(tr.data.test)))
        with torch.no_grad():
            tr.model.eval()
            t0 = time.perf_counter()
            tr.forward(tr.data.test, idx, train=False)
            sync()
            eval_pair_s = (time.perf_counter() - t0) / max(1, len(idx))
        device = str(tr.device) + (f" ({torch.cuda.get_device_name(tr.device)})" if tr.device.type == "cuda"
                                   else f" ({torch.get_num_threads()} threads)")
    evals = first.steps // first.eval_every + 1
    eval_s = eval_pair_s * test_pairs * len(configs)  # every run's evaluation, one after another
    encode_s = n_texts / encode_rate
    total = setup_s + first.steps * round_s + evals * eval_s + encode_s
    figures = {"device": device, "size": cfg.size, "users": cfg.users, "runs": len(configs),
               "groups": len(grid.groups), "round_s": round(round_s, 4), "step_s": round(round_s / len(configs), 4),
               "eval_s": round(eval_s, 3), "setup_s": round(setup_s, 2), "steps": first.steps, "evals": evals,
               "test_pairs": test_pairs, "texts": n_texts, "encode_s": round(encode_s, 1),
               "grid_total_min": round(total / 60, 2)}
    if tr.device.type == "cpu":  # this process's peak so far: set-up and the measured rounds (ru_maxrss: KiB)
        import resource

        figures["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB, 2)
    log(f"measured on {device}: one round of the grid ({len(configs)} runs in {len(grid.groups)} stacked groups, "
        f"each run one optimizer step of batch {first.batch_size} x {first.grad_accum}, {first.max_length} tokens) "
        f"{round_s:.3f} s; every run's evaluation {eval_s:.2f} s ({test_pairs} test pairs each); {setup_s:.1f} s "
        f"set-up; {encode_rate:.0f} texts/s frozen encoding")
    log(f"estimate for `{cfg.size}` / {cfg.users} as one grid ({len(configs)} runs x {first.steps} steps, {evals} "
        f"evaluations each, {n_texts} texts to encode once): {total / 60:.1f} min")
    if not device.startswith("cuda"):
        if not MEASURED:
            log("no CUDA measurement is recorded yet: run `--dry-run --device cuda` on a GPU machine")
        for name, m in MEASURED.items():
            if "round_s" in m:
                per = m["setup_s"] + first.steps * m["round_s"] * len(configs) / m["runs"] + evals * m["eval_s"]
                log(f"recorded on {name} ({m['note']}): a round of {m['runs']} runs {m['round_s']:.3f} s, so `{cfg.size}` "
                    f"/ {cfg.users} would take about {(per + n_texts / m['encode_rate']) / 60:.1f} min there")
            else:
                per = m["setup_s"] + first.steps * m["step_s"] + evals * m["eval_pair_s"] * test_pairs
                log(f"recorded on {name} ({m['note']}): {m['step_s']:.3f} s per step of one run, so `{cfg.size}` / "
                    f"{cfg.users} would take about {(per * len(configs) + n_texts / m['encode_rate']) / 60:.1f} min "
                    "there one run after another")
    return figures


# ---------------------------------------------------------------------------------------------- CLI
def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--size", choices=list(SIZES), default="tiny", help="tiny (CPU, CI) or full (GPU-sized)")
    ap.add_argument("--users", choices=list(USER_SETS), default="two-opposed", help="user set")
    ap.add_argument("--methods", nargs="+", help="presets (default: traditional vpl vpl-adaptive [+ personal])")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="one run per method and seed")
    ap.add_argument("--seed", type=int, help="shorthand for --seeds SEED")
    ap.add_argument("--workers", type=int, default=0, help="0 = one process for the whole grid (core.training.grid); N > 1: N child processes, one run each")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    ap.add_argument("--set", nargs="*", default=[], help="TrainConfig overrides for every run, key=value (JSON values)")
    ap.add_argument("--dry-run", action="store_true", help="measure one step here and print the wall-time estimate")


def config_from_args(args) -> StudyConfig:
    from core.experiments.tables import parse_set

    return validate_study({"size": args.size, "users": args.users, "methods": args.methods,
                           "seeds": [args.seed] if args.seed is not None else args.seeds, "workers": args.workers,
                           "device": args.device, "overrides": parse_set(args.set)})


def cli(args, out: str | None) -> int:
    """Shared by ``python -m core.experiments study`` (``out``) and the job entry point."""
    try:
        cfg = config_from_args(args)
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.dry_run and not out:
        print("error: --out is required unless --dry-run", file=sys.stderr)
        return 2
    try:  # before any model loads: a step that cannot fit is refused here, not by the OOM killer
        memory = check_memory(cfg, log=lambda m: print(m, file=sys.stderr, flush=True))
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        figures = estimate(cfg, log=lambda m: print(m, flush=True))
        if memory is not None:
            figures["memory_estimate_gb"] = round(memory["bytes"] / GB, 1)
            print(f"memory: estimated {memory['bytes'] / GB:.1f} GB for one step of the grid, peak RSS "
                  f"measured {figures.get('peak_rss_gb', 0):.1f} GB", flush=True)
        print(json.dumps(figures))
        return 0
    table = run_study(cfg, out, log=lambda m: print(m, flush=True))
    for r in table:
        print(json.dumps(r))
    return 0


@cli_main  # an expected error (a full cache, a missing file, ...): one "error: ..." line, exit status 2
def main(argv: list[str] | None = None) -> int:
    """Job entry point: ``python -m core.study --config FILE --run-dir DIR`` (the run dir gets the table)."""
    ap = argparse.ArgumentParser(prog="python -m core.study", description="Run the study's grid as a job.")
    ap.add_argument("--config", required=True, help="JSON StudyConfig")
    ap.add_argument("--run-dir", required=True, help="the job's run directory (runs/ and table.* go here)")
    args = ap.parse_args(argv)
    run = RunDir(args.run_dir).create()
    try:
        cfg = validate_study(json.loads(Path(args.config).read_text()))
    except (StudyError, json.JSONDecodeError, OSError) as err:
        run.mark_final("failed", error=f"config: {err}")
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        check_memory(cfg)
    except StudyError as err:
        run.mark_final("failed", error=f"memory: {err}")
        print(f"error: {err}", file=sys.stderr)
        return 2
    run.mark_running(kind="study")

    def on_term(*_):
        raise StudyStopped("cancelled")

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_term)
    try:
        run_study(cfg, run.path, log=lambda m: print(m, flush=True),
                  progress=lambda d, t: run.set_progress(d, t))
    except StudyStopped as err:
        cancelled = "cancelled" in str(err)
        run.mark_final("cancelled" if cancelled else "failed", error=str(err))
        return 0 if cancelled else 1
    except BaseException as err:
        run.mark_final("failed", error=f"{type(err).__name__}: {err}")
        raise
    run.mark_final("succeeded")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Training's front door: ``train`` one run, or ``train_grid`` many in one process, into run directories.

    from core.training.launch import train
    train(build_config({"preset": "personal"}), "checkpoints/demo")   # a grid of one

The run directory is the only output: config.json, status.json, metrics.jsonl (one record per
evaluation), latents/step-N.npz, model.safetensors + train_state.pt (resume), log.txt. Rerunning on a
folder with a checkpoint resumes from it and reaches the same numbers as an uninterrupted run. SIGTERM /
SIGINT stop every run at a checkpoint (``cancelled``); an error marks them ``failed``, traceback kept.
The command line over this is core/train.py.
"""

from __future__ import annotations

import signal
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from core.common.runs import RunDir
from core.training import distributed
from core.training.config import ConfigError, TrainConfig, build_config
from core.training.grid import Cancelled, Grid
from core.training.shared import ENCODER_FIELDS, PEOPLE_FIELDS, Shared
from core.training.trainer import Trainer


def warm_cache(cfg: TrainConfig, log: Callable[[str], None] = print, show_progress: bool | str = False) -> float:
    """Build cfg's data and encode every text it reads with the frozen encoder (filling the on-disk
    cache), without training or writing a run. Returns the seconds it took."""
    import tempfile

    t0 = time.perf_counter()
    # a plain traditional run on the same data and encoder reads the same texts (a method's own fields, such
    # as personal's population term, would not validate on a btl config)
    keep = set(PEOPLE_FIELDS + ENCODER_FIELDS + ("cache_dir",))
    btl = build_config({k: v for k, v in cfg.model_dump().items() if k in keep} | {"method": "btl"})
    with tempfile.TemporaryDirectory() as tmp:
        Trainer(btl, RunDir(tmp).create(), log=log, show_progress=show_progress)
    return time.perf_counter() - t0


def _cancel_now():
    """SIGTERM before the trainers exist (still loading data or encoding): stop as a cancel."""
    raise Cancelled("cancelled during setup")


def train(cfg: TrainConfig, run_dir: str | Path, *, stop_after: int | None = None,
          log: Callable[[str], None] = print, show_progress: bool | str = False,
          on_step: Callable[[int, int], None] | None = None) -> list[dict]:
    """Train into run_dir (created if needed); returns this session's evaluation records.

    ``show_progress``: bars on a terminal, plain lines elsewhere (see Trainer); ``on_step(step, steps)``
    after every optimizer step (a caller's own progress, e.g. a comparison's). A grid of one."""
    return train_grid([cfg], [run_dir], stop_after=stop_after, log=log, show_progress=show_progress,
                      on_step=None if on_step is None else (lambda i, step, steps: on_step(step, steps)))[0]


def train_grid(cfgs: list[TrainConfig], run_dirs: list[str | Path], *, stop_after: int | None = None,
               log: Callable[[str], None] = print, show_progress: bool | str = False,
               on_step: Callable[[int, int, int], None] | None = None,
               summary: Callable[[str], None] | None = None) -> list[list[dict]]:
    """Train many runs in one process (core.training.grid), each into its own run directory; returns each run's
    evaluation records of this session. ``on_step(i, step, steps)`` after every optimizer step of run i.

    Every run dir gets its config, status and metrics as if trained alone; a member whose status.json asks
    for a cancel stops on its own (checkpointed, ``cancelled``); SIGTERM / SIGINT stop them all."""
    if len(cfgs) != len(run_dirs) or not cfgs:
        raise ValueError("train_grid: give one run directory per config (and at least one)")
    if distributed.world_from_env() > 1:  # started by torchrun or srun: one run across ranks
        if len(cfgs) != 1:
            raise distributed.LaunchError("ranks: a grid of many runs trains in one process; start one run per "
                                          "launch across ranks")
        check_distributable(cfgs[0])
        ranks = distributed.start(cfgs[0], run_dirs[0])
        try:
            if not ranks.main:  # its own copy of the run's files; the run's folder is rank 0's
                log, show_progress, run_dirs = (lambda m: None), False, [ranks.scratch]
            return _train_grid(cfgs, run_dirs, stop_after=stop_after, log=log, show_progress=show_progress,
                               on_step=on_step, summary=summary, ranks=ranks)
        finally:
            distributed.finish()
    return _train_grid(cfgs, run_dirs, stop_after=stop_after, log=log, show_progress=show_progress, on_step=on_step,
                       summary=summary)


def check_distributable(cfg: TrainConfig) -> None:
    """What one run across ranks cannot do the same as one process: say which field."""
    if cfg.grad_strategy != "sum":
        raise ConfigError(f"grad_strategy: {cfg.grad_strategy!r} combines every user's gradient in one process; "
                          "across ranks only 'sum' (DDP's average) is the same run")
    if cfg.contrastive_coef:
        raise ConfigError("contrastive_coef: the contrastive term compares the pairs of one micro-batch, which "
                          "ranks split; set it to 0 to train across ranks")


def _train_grid(cfgs, run_dirs, *, stop_after, log, show_progress, on_step, summary, ranks=None):
    # Trainer and Grid set torch's process-wide thread count for their steps; a notebook or a caller that trains
    # several runs in turn gets its own back (a LoRA run after a frozen one would otherwise train on one core)
    threads = torch.get_num_threads()
    runs = []
    for cfg, d in zip(cfgs, run_dirs, strict=True):
        run = RunDir(d).create()
        if run.config() not in (None, cfg.model_dump(mode="json")) and (run.path / "train_state.pt").exists():
            raise ConfigError(f"config: the run directory {run.path} holds a checkpoint of a different config; "
                              "use a new folder")
        runs.append(run)
    for cfg, run in zip(cfgs, runs, strict=True):
        run.write_config(cfg.model_dump(mode="json"))
        # a resumed run starts afresh: an old cancel request must not cancel it again
        run.mark_running(kind="train", method=cfg.preset or cfg.method, cancel_requested=None, stopped_early=None,
                         ranks=None if ranks is None else {"world": ranks.world, "device": ranks.device.type,
                                                           "backend": "nccl" if ranks.device.type == "cuda" else "gloo"})
    trainers: list[Trainer] = []
    prev = {}

    def stop_all(*_):
        if not trainers:
            _cancel_now()
        for t in trainers:
            t.request_stop()

    def member_end(t: Trainer, how: str) -> None:
        snap = t.progress.close()
        if how == "cancelled":
            t.run.mark_final("cancelled", error="cancelled by the user", progress=snap)
        elif t.stopped_early is not None:  # learned before its last step: done, with the step it kept
            t.run.mark_final("succeeded", progress={**snap, "fraction": 1.0}, stopped_early=t.stopped_early)
        elif t.step >= t.cfg.steps:
            t.run.mark_final("succeeded", progress={**snap, "fraction": 1.0})
        else:
            t.run.mark_final("cancelled", error=f"stopped after step {t.step} (resumable)", progress=snap)

    try:
        if hasattr(signal, "SIGTERM"):
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    prev[sig] = signal.signal(sig, stop_all)
                except ValueError:  # not the main thread (e.g. inside a notebook worker)
                    pass
        shared = Shared()
        for i, (cfg, run) in enumerate(zip(cfgs, runs, strict=True)):
            member_log = log if len(cfgs) == 1 else (lambda m, name=run.path.name: log(f"[{name}] {m}"))
            t = Trainer(cfg, run, log=member_log, show_progress=show_progress if len(cfgs) == 1 else False,
                        shared=shared, adapters_later=ranks is None)
            if on_step is not None:
                t.callbacks["on_step"].append(lambda t, i=i: on_step(i, t.step, t.cfg.steps))
            trainers.append(t)
        return Grid(trainers, log=summary or log).fit(stop_after=stop_after, on_member_end=member_end)
    except Cancelled as err:
        for run in runs:
            run.mark_final("cancelled", error=str(err), if_state=("queued", "running"))
        log(f"cancelled: {err}")
        return [[] for _ in runs]
    except BaseException as err:
        error = f"{type(err).__name__}: {err}\n{traceback.format_exc()[-2000:]}"
        lost = ""
        if ranks is not None:  # any rank that fails says so in the run's own status, naming a lost peer
            lost = ranks.lost_ranks()
            error = f"rank {ranks.rank} of {ranks.world}" + (f"; lost {lost}" if lost else "") + f": {error}"
            runs = runs + [RunDir(ranks.run_dir)] if not ranks.main else runs
        for run in runs:
            run.mark_final("failed", error=error, if_state=("queued", "running"))
        if ranks is not None and not isinstance(err, distributed.LaunchError) and (
                lost or isinstance(err, distributed.dist.DistError)):
            # a collective that failed: one line naming the lost peer, not a traceback through DDP
            raise distributed.PeerLostError(error.split("\n")[0]) from err
        raise
    finally:
        for t in trainers:
            if t.progress is not None:
                t.progress.close()  # a bar left open would garble the terminal
        for sig, handler in prev.items():
            signal.signal(sig, handler)
        torch.set_num_threads(threads)



"""One training loop for many runs in one process: a single run is a grid of one (docs/architecture.md §4).

    core.training.launch.train_grid(cfgs, run_dirs)        # python -m core.experiments compare ... uses it

Each member is a run (``core.training.member.Member``; ``core.training.trainer.Trainer`` is one) with its own run directory,
config, sampler, noise generator, optimizer, evaluations and checkpoints. What the grid adds:

- **setup once**: members share the corpus, data splits, people, frozen encoder and embedding matrix
  wherever their configs agree (core.training.shared);
- **stacked heads**: members whose models have the same shapes step as one vmapped group
  (core.training.stacked);
- **solo members**: runs that train their query encoder (LoRA, full) step through ``Trainer.train_step``
  in the same loop;
- **groups side by side**: on a CPU, when every group is small heads on cached embeddings, each group
  steps (and evaluates its members when due) in its own thread with one intra-op thread: their ops are too
  small for intra-op threads to keep several cores busy. Files, callbacks and logs stay on the loop's thread.

Same seed and config give the same batches, noise and initial weights as the run trained alone; the
results agree up to floating-point summation order (tests/test_grid.py). A member is cancelled on its own
by ``cancel_requested`` in its status.json (core.jobs.manager writes it), checkpointing first; SIGTERM stops all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from core.training import distributed
from core.training.member import Member
from core.training.stacked import StackedGroup, plan_groups

CANCEL_CHECK_S = 1.0  # how often the loop reads the members' status.json for a cancel request


class Cancelled(Exception):
    """Raised inside the loop after SIGTERM/SIGINT, once every member's state is checkpointed."""


class Grid:
    """The loop: step every active member, evaluate and checkpoint each on its own schedule.

    ``on_member_end(trainer, state)`` is called when a member leaves the loop (succeeded / cancelled)."""

    def __init__(self, trainers: list[Member], *, log: Callable[[str], None] = print):
        self.trainers = trainers
        self.log = log
        self.groups = plan_groups(trainers)
        self.histories: dict[int, list[dict]] = {id(t): [] for t in trainers}
        self._last_cancel_check = 0.0
        self.workers = 1  # groups stepped side by side, each in its own thread
        self._threads_before = torch.get_num_threads()  # put back when the loop ends
        if trainers[0].device.type == "cpu" and len(trainers) > 1 and not any(t.cfg.cpu_threads for t in trainers):
            cores = distributed.cores()
            heads = all(isinstance(g, StackedGroup) and g.encoder is None for g in self.groups)
            if heads and len(self.groups) > 1 and cores > 1:
                # small heads on cached embeddings: their ops are too small to keep several cores busy
                # with intra-op threads, so each group gets one thread and the groups run side by side
                self.workers = min(cores, len(self.groups))
                torch.set_num_threads(1)
            else:  # one group, or a transformer in the step: large ops, every core on each
                torch.set_num_threads(cores)

    def fit(self, stop_after: int | None = None, on_member_end: Callable | None = None) -> list[list[dict]]:
        pool = ThreadPoolExecutor(self.workers) if self.workers > 1 else None
        try:
            return self._fit(pool, stop_after, on_member_end)
        finally:
            if pool:
                pool.shutdown(wait=True, cancel_futures=True)
                torch.set_num_threads(self._threads_before)

    def _fit(self, pool, stop_after, on_member_end) -> list[list[dict]]:
        for t in self.trainers:
            t.start(show_progress=t.show_progress if len(self.trainers) == 1 else False)
        first = [t for t in self.trainers if t.step == 0]  # the step-0 evaluations (references included)
        records = list(pool.map(lambda t: t.evaluate(), first)) if pool else [t.evaluate() for t in first]
        for t, record in zip(first, records, strict=True):
            self._keep(t, t.record_eval(record))
        for g in self.groups:
            if isinstance(g, StackedGroup):
                g.adam.link()  # a resume loaded each member's optimizer state: back into the stacks
        active = {id(t) for t in self.trainers if t.step < t.cfg.steps}
        # a run resumed after early stopping had decided (but before it finished) finishes now
        self._end_round(active, on_member_end, stop_after)
        t_fit, n_steps = time.perf_counter(), 0
        # the costliest groups first, so the threads finish a round together
        order = sorted(self.groups, key=lambda g: -len(g.trainers) * (2 if getattr(g, "per_user", False) else 1))
        while active:
            running = []
            for g in order:
                members = [i for i, t in enumerate(g.trainers) if id(t) in active]
                if members:
                    job = (g, members)
                    running.append((job, pool.submit(self._advance, *job) if pool else None))
            for (g, members), fut in running:
                losses, records = fut.result() if fut else self._advance(g, members)
                for i, loss in zip(members, losses, strict=True):  # callbacks and files: this thread only
                    t = g.trainers[i]
                    for cb in t.callbacks["on_step"]:
                        cb(t)
                    t.progress.set(t.step, train_loss=loss)
                    if i in records:
                        self._keep(t, t.record_eval(records[i]))
            n_steps += 1
            self._end_round(active, on_member_end, stop_after)
        wall = time.perf_counter() - t_fit
        if n_steps:
            self.log(f"grid: {len(self.trainers)} runs in {len(self.groups)} group(s)"
                     f"{f' on {self.workers} threads' if self.workers > 1 else ''}, {n_steps} rounds in {wall:.1f}s "
                     f"({wall / n_steps:.3f}s a round: every member's step, and its evaluation when due)")
        return [self.histories[id(t)] for t in self.trainers]

    def _keep(self, t, record: dict | None) -> None:
        """A member's evaluation record for its history (None: a rank other than 0, which does not evaluate)."""
        if record is not None:
            self.histories[id(t)].append(record)

    @staticmethod
    def _advance(g, members: list[int]) -> tuple[list[float], dict[int, dict]]:
        """One step of a group's members and the evaluations it makes due (any thread: computes only)."""
        losses = g.step(members)
        records = {}
        for i in members:
            t = g.trainers[i]
            if t.step % t.cfg.eval_every == 0 or t.step == t.cfg.steps:
                records[i] = t.evaluate()
        return losses, records

    def _end_round(self, active: set, on_member_end: Callable | None, stop_after: int | None) -> None:
        """Checkpoint and retire members that are done, cancelled or stopped; raises Cancelled on a stop."""
        stop_all = any(t.stop_requested for t in self.trainers if id(t) in active)
        cancel = self._cancel_requests(active)
        for t in self.trainers:
            if id(t) not in active:
                continue
            if stop_all:
                t.save_checkpoint()
            elif id(t) in cancel:
                t.save_checkpoint()
                active.discard(id(t))
                if on_member_end:
                    on_member_end(t, "cancelled")
            elif t.should_stop_early:  # learned: its best evaluation's model becomes the run's
                self._keep(t, t.finish_early())
                active.discard(id(t))
                if on_member_end:
                    on_member_end(t, "ended")
            elif t.step >= t.cfg.steps or (stop_after is not None and t.step >= stop_after):
                if t.step < t.cfg.steps:
                    t.save_checkpoint()
                active.discard(id(t))
                if on_member_end:
                    on_member_end(t, "ended")
        if stop_all:
            raise Cancelled(f"stopped at step {max(t.step for t in self.trainers)}")

    def _cancel_requests(self, active: set) -> set:
        """Members whose status.json asks for a cancel (checked at most once a second)."""
        now = time.monotonic()
        if len(self.trainers) == 1 or now - self._last_cancel_check < CANCEL_CHECK_S:
            return set()
        self._last_cancel_check = now
        return {id(t) for t in self.trainers if id(t) in active and t.run.status().get("cancel_requested")}

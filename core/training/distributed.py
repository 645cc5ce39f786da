"""One run across many processes: data parallel training with torch.distributed (docs/distributed.md).

    torchrun --nproc_per_node=2 -m core.train --preset personal --run-dir checkpoints/ddp

Every rank builds the same data and model, samples the same global batch and trains on its share of it
(``shard``); DistributedDataParallel averages the gradients, and each rank's loss is scaled so that the
average is the gradient of the global batch's mean loss: the steps are a one-process run's up to summation
order. The layout comes from the environment torchrun (or submitit's helper under Slurm, core.jobs.slurm)
exports: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT. Backend gloo on CPU, NCCL on CUDA.

Rank 0 alone evaluates and writes the run directory; it tells the others when early stopping ends the run.
The others read the run's checkpoint from a private copy (a resume) and write nothing of the run's. A rank that
finds a peer gone marks the run ``failed``, naming it, so a dead rank 0 does not leave the run ``running``.
Collectives time out after PREFLENS_DIST_TIMEOUT_S seconds (default 1800).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

# default collective timeout: a peer that hangs fails the run after this long (a dead one at once: its socket
# closes). Long, since the others wait in a collective while rank 0 evaluates.
TIMEOUT_S = 1800.0
STORE_PREFIX = "preflens/rank/"
BEAT_S = 1.0  # how often a rank writes its sign of life to the store


class LaunchError(RuntimeError):
    """A launch the ranks cannot train together: the message names what is wrong."""


class PeerLostError(LaunchError):
    """A collective failed because a peer rank is gone (or stopped answering within the timeout)."""


@dataclass
class Ranks:
    """This process's place in the run: rank of world, local rank on its node, and the run's real folder."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    run_dir: Path | None = None
    scratch: Path | None = None  # rank > 0: where this rank's own copy of the run's files lives
    _store: object = field(default=None, repr=False)
    _last_beat: float = field(default=float("-inf"), repr=False)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> np.ndarray:
        """This rank's rows of a global batch of n (every world-th, from its rank)."""
        return np.arange(self.rank, n, self.world)

    def main_says(self, flag: bool) -> bool:
        """Rank 0's flag, on every rank (early stopping: rank 0 alone evaluates, so it alone knows)."""
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.broadcast(t, 0)
        return bool(t.item() > 0)

    @contextlib.contextmanager
    def all_cores(self, wanted: bool):
        """On a CPU, rank 0 evaluates with the node's every core while the others wait for it (``wanted``: where
        one process would use them too; a frozen-encoder run keeps its one thread)."""
        before = torch.get_num_threads()
        if wanted and self.device.type == "cpu":
            torch.set_num_threads(cores())
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def beat(self, step: int, state: str = "training") -> None:
        """This rank's last sign of life in the rendezvous store, read by a peer that loses it; a network round
        trip, so at most once a second."""
        now = time.monotonic()
        if self._store is not None and now - self._last_beat >= BEAT_S:
            self._last_beat = now
            try:
                self._store.set(f"{STORE_PREFIX}{self.rank}", json.dumps(
                    {"pid": os.getpid(), "host": socket.gethostname(), "step": step, "state": state}))
            except Exception:  # noqa: BLE001 - the store went with a dead peer: the failure says so
                pass

    def lost_ranks(self) -> str:
        """The peers that are gone, as far as this rank can tell ("" when it cannot): processes on this host
        that no longer exist, or rank 0 when the rendezvous store it hosted is gone."""
        if self._store is None:
            return ""
        gone = []
        for r in range(self.world):
            if r == self.rank:
                continue
            try:
                self._store.set_timeout(timedelta(seconds=2))
                info = json.loads(self._store.get(f"{STORE_PREFIX}{r}"))
            except Exception:  # noqa: BLE001 - the store answers no more
                return "rank 0 (the rendezvous store went with it)" if self.rank != 0 else ""
            if info.get("host") != socket.gethostname():
                continue
            if not _alive(int(info["pid"])):
                gone.append(f"rank {r} (pid {info['pid']}, last seen after step {info.get('step')})")
        return ", ".join(gone)


def cores() -> int:
    """The cores this process may run on (its affinity, where the OS tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _alive(pid: int) -> bool:
    """Whether a process runs (a killed one its launcher has not reaped yet is a zombie: gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


_CURRENT: Ranks | None = None


def current() -> Ranks | None:
    """The run's ranks when this process is one of several; None in a one-process run."""
    return _CURRENT


def world_from_env() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise LaunchError(f"WORLD_SIZE: not a number ({os.environ['WORLD_SIZE']!r})") from None


def device_for(cfg_device: str, local_rank: int) -> torch.device:
    """This rank's device: cuda:LOCAL_RANK where CUDA is asked for (or 'auto' finds it), else the CPU."""
    want_cuda = cfg_device.startswith("cuda") or (cfg_device == "auto" and torch.cuda.is_available())
    if not want_cuda:
        return torch.device("cpu")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n == 0:
        raise LaunchError(f"device: {cfg_device!r} asks for a GPU, but this machine has none "
                          "(use device 'cpu' for gloo ranks on the CPU)")
    if local_rank >= n and os.environ.get("SLURM_GPUS_PER_TASK"):  # Slurm shows each task only its own GPUs
        return torch.device("cuda:0")
    if local_rank >= n:
        raise LaunchError(f"device: local rank {local_rank} needs GPU {local_rank}, but this node has {n}; "
                          f"start at most {n} ranks a node (--nproc_per_node / --tasks-per-node)")
    return torch.device(f"cuda:{local_rank}")


def config_differences(configs: list[dict]) -> list[str]:
    """The fields on which the ranks' configs disagree, each with every rank's value."""
    fields = sorted({k for c in configs for k in c})
    return [f"{k}: " + ", ".join(f"rank {r}={c.get(k)!r}" for r, c in enumerate(configs))
            for k in fields if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]


def start(cfg, run_dir: str | Path) -> Ranks | None:
    """Join the run's process group when WORLD_SIZE > 1 (else None): check the launch, agree on the config,
    and give ranks > 0 their private copy of the run's checkpoint. Idempotent within a process."""
    global _CURRENT
    world = world_from_env()
    if world <= 1:
        return None
    if _CURRENT is not None:
        return _CURRENT
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise LaunchError(f"{key}: WORLD_SIZE is {world} but {key} is not set; start the ranks with torchrun "
                              "or srun through core.jobs (docs/distributed.md)")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = device_for(cfg.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:  # the node's cores shared among its ranks: more threads than cores would make every rank wait
        torch.set_num_threads(max(1, cores() // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    timeout = float(os.environ.get("PREFLENS_DIST_TIMEOUT_S", TIMEOUT_S))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout))
    ranks = Ranks(rank, world, local_rank, device, run_dir=Path(run_dir).resolve())
    try:
        ranks._store = dist.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - naming a lost peer is a courtesy; training does not need it
        ranks._store = None
    ranks.beat(0, "starting")
    mine = {**cfg.model_dump(mode="json"), "run_dir": str(ranks.run_dir)}
    everyone: list = [None] * world
    dist.all_gather_object(everyone, mine)
    diff = config_differences(everyone)
    if diff:  # every rank saw the same configs, so all stop here: leave the group together, then say why
        dist.barrier()
        dist.destroy_process_group()
        raise LaunchError("config: the ranks disagree on " + "; ".join(diff))
    if not ranks.main:
        ranks.scratch = scratch_path(ranks.run_dir, rank)
        shutil.rmtree(ranks.scratch, ignore_errors=True)
        ranks.scratch.mkdir(parents=True)
        for name in ("config.json", "model.safetensors", "train_state.pt", "metrics.jsonl"):
            if (ranks.run_dir / name).exists():  # resume from rank 0's checkpoint, whatever the world it wrote it in
                shutil.copy2(ranks.run_dir / name, ranks.scratch / name)
    dist.barrier()  # rank 0 may go on writing the run directory only once every rank has read it
    _CURRENT = ranks
    return ranks


def scratch_path(run_dir: str | Path, rank: int) -> Path:
    """Rank > 0's private folder for a run: one per run and rank, emptied at every start, so a rank killed
    before finish() leaves only that one behind."""
    tag = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"preflens-rank{rank}-{tag}"


def finish() -> None:
    """Leave the process group and drop this rank's private folder."""
    global _CURRENT
    ranks, _CURRENT = _CURRENT, None
    if ranks is None:
        return
    if ranks.scratch is not None:
        shutil.rmtree(ranks.scratch, ignore_errors=True)
    if dist.is_initialized():
        dist.destroy_process_group()


class Replica(nn.Module):
    """What DistributedDataParallel wraps: the reward model and a trained encoder's model (only their
    parameters that require grad are synchronized: a LoRA run's adapters and heads). Its forward runs the
    step's loss closure, so DDP sees every forward the trainer makes."""

    def __init__(self, model: nn.Module, encoder: nn.Module | None):
        super().__init__()
        self.model = model
        self.encoder = encoder

    def forward(self, closure):
        return closure()


def wrap(model: nn.Module, encoder: nn.Module | None, ranks: Ranks) -> nn.parallel.DistributedDataParallel:
    """DDP over the run's trainable parts. find_unused_parameters: which parts a step reads depends on the
    config (a reader's unused layers, the population and vertex terms). init_sync off: DDP would broadcast a
    LoRA run's frozen 135M-parameter base too; only the trainable weights are sent."""
    replica = Replica(model, encoder)
    with torch.no_grad():  # the trainable weights from rank 0, which agree already unless a seed was ignored
        for p in replica.parameters():
            if p.requires_grad:
                dist.broadcast(p.data, 0)
    ids = [ranks.device.index] if ranks.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(replica, device_ids=ids, find_unused_parameters=True, init_sync=False)


def estimate(step_s: float, n_params: int, ranks: list[int], link_gb_s: float = 10.0, latency_s: float = 5e-5
             ) -> list[dict]:
    """A step's time on R ranks from one measured on one: its compute split R ways, plus a ring all-reduce of the
    trainable parameters' float32 gradients (2 (R - 1) / R of their bytes over a ``link_gb_s`` link, and 2 (R - 1)
    latencies). An estimate: it leaves out what does not split (evaluation, a rank's setup)."""
    out = []
    for r in ranks:
        comm = 0.0 if r == 1 else 2 * (r - 1) / r * 4 * n_params / (link_gb_s * 1e9) + 2 * (r - 1) * latency_s
        out.append({"ranks": r, "step_s": step_s / r + comm, "comm_s": comm, "speedup": step_s / (step_s / r + comm)})
    return out

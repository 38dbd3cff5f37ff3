"""Data-parallel proxies on torch's own distributed engine: DDP or FSDP2 ranks started by torch's
elastic launcher (what ``torchrun`` runs), one process group per run.

The global batch and the seeds do not depend on the number of ranks: every rank draws the same
global batch of step k (it depends on (seed, k) only) and trains on its contiguous slice of
``batch_size / world`` rows; DDP averages the gradients (FSDP2 reduce-scatters their average), so
the update is that of one process on the whole batch, up to the order of the floating-point sums
(the tests state the tolerance). Every rank builds the same initial model from the seed; FSDP2
then keeps its own rows of each parameter (``shard``). Only rank 0 writes files, progress bars and
log lines; every rank evaluates the same fixed validation batches on the same weights, so all agree
when to stop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

PARALLEL = ("ddp", "fsdp2")
MAX_NPROC = 1024  # ranks on one machine; more is a typo
# The signals torch's elastic launcher takes over in the process that calls it (it does not give
# them back); a search worker launches one run per trial and keeps its own handlers between them.
_LAUNCHER_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
# A collective waits at most this long for a rank that is gone (gloo notices a closed peer at once;
# this bounds the cases it cannot see, e.g. a rank stuck outside a collective).
TIMEOUT_S = 120
# Torch's elastic agent polls its workers this often; a dead rank stops the others within a few polls.
MONITOR_S = 0.5


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: ``rank`` of ``world``, ``local_rank`` on its machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def lead(self) -> bool:
        """Rank 0: the one that writes records, checkpoints, progress bars and log lines."""
        return self.rank == 0


def from_env() -> Ranks | None:
    """The ranks torch's launcher gave this process (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), or
    ``None`` when it was not started by one."""
    if "WORLD_SIZE" not in os.environ:
        return None
    return Ranks(int(os.environ.get("RANK", "0")), int(os.environ["WORLD_SIZE"]),
                 int(os.environ.get("LOCAL_RANK", "0")))


def current() -> Ranks:
    """The ranks of the process group in use, or one process when there is none."""
    if not (dist.is_available() and dist.is_initialized()):
        return Ranks()
    local = from_env()
    return Ranks(dist.get_rank(), dist.get_world_size(), local.local_rank if local else 0)


def rank_device(device: torch.device, ranks: Ranks) -> torch.device:
    """Each rank on its own GPU (``cuda:LOCAL_RANK``) in a run of several; else ``device``."""
    if device.type == "cuda" and ranks.world > 1:
        return torch.device("cuda", ranks.local_rank)
    return device


@contextlib.contextmanager
def process_group(ranks: Ranks, device: torch.device) -> Iterator[None]:
    """torch's default process group for the run: nccl on CUDA (each rank on its GPU), gloo on CPU,
    with a timeout on every collective; destroyed at the end."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(rank_device(device, ranks))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=TIMEOUT_S),
                            rank=ranks.rank, world_size=ranks.world)
    try:
        yield
    finally:
        dist.destroy_process_group()


def shard(model: nn.Module, device: torch.device, world: int) -> None:
    """FSDP2 (``fully_shard``, ZeRO-3) on a proxy GPT, in place: each transformer block is its own
    unit, then the root holds the embedding, the final norm and the head; every parameter becomes a
    DTensor of its rows ``Shard(0)`` over the ``world`` ranks.

    Each block's gathered weights are freed after its forward and gathered again for its backward
    (``reshard_after_forward``), except the last block's, which the backward needs first; torch
    keeps the root's (its default), as torchtitan does.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world,))
    blocks = list(model.blocks)
    for i, block in enumerate(blocks):
        fully_shard(block, mesh=mesh, reshard_after_forward=i < len(blocks) - 1)
    fully_shard(model, mesh=mesh)


def local_slice(batch: Sequence[torch.Tensor], ranks: Ranks) -> tuple[torch.Tensor, ...]:
    """This rank's contiguous rows ``[r*b, (r+1)*b)``, ``b = rows / world``, of every batch tensor."""
    rows = batch[0].shape[0] // ranks.world
    return tuple(t[ranks.rank * rows:(ranks.rank + 1) * rows] for t in batch)


def mean_over_ranks(value: float, device: torch.device) -> float:
    """The mean of ``value`` over the ranks (the loss of the global batch from the ranks' slices)."""
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


class RanksFailed(RuntimeError):
    """A rank of a launched run exited with an error or a signal; the launcher stopped the others."""

    def __init__(self, message: str, exitcode: int) -> None:
        super().__init__(message)
        self.exitcode = exitcode


def launch(nproc: int, argv: Sequence[str], *, module: str = "optispace",
           env: Mapping[str, str] | None = None) -> None:
    """Run ``python -m MODULE ARGV`` as ``nproc`` ranks on this machine through torch's elastic
    launcher, as ``torchrun --standalone --nproc-per-node NPROC`` does (c10d rendezvous on a free
    local port, no restarts), with ``env`` added to the ranks' environment. Raises
    :class:`RanksFailed` naming the first rank that failed, and ``KeyboardInterrupt`` when a signal
    (Ctrl-C, SIGTERM) stopped the run."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # The launcher's own log repeats each failure at length; the caller says it in one line.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    env = dict(env or {})
    if nproc > 1 and "OMP_NUM_THREADS" not in os.environ:  # N ranks on all cores each would thrash
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          monitor_interval=MONITOR_S)
    try:
        with _environ(env), _own_signals():
            elastic_launch(config, sys.executable)("-m", module, *argv)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        raise RanksFailed(_failure_text(rank, failure.exitcode), failure.exitcode) from None
    except SignalException as e:  # Ctrl-C or SIGTERM: the launcher has stopped the ranks
        raise KeyboardInterrupt(e.sigval.name) from None


@contextlib.contextmanager
def _environ(env: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` with ``env`` added within the block (the launcher copies it to the ranks)."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _own_signals() -> Iterator[None]:
    """This process's signal handlers back after the block (the launcher replaces them)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # the launcher installs handlers only from the main thread
        return
    saved = {sig: signal.getsignal(sig) for sig in _LAUNCHER_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _failure_text(rank: int, exitcode: int) -> str:
    if exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"rank {rank} was killed by {signal.Signals(-exitcode).name}; the other ranks were stopped"
    return f"rank {rank} exited with code {exitcode}; the other ranks were stopped"

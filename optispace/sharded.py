"""Parameters sharded by FSDP2: each rank steps its own block, and the shard group sums what is shared.

``fully_shard`` makes every parameter a ``DTensor`` placed ``Shard(0)`` on a 1-D device mesh: each rank
holds a block of dim 0 (torch.chunk's split, so the last ranks may hold fewer entries, or none). The
optimizer steps ``to_local()`` of the parameter and of its gradient with state of the block's shape.
Elementwise primitives need nothing more; a shape-aware one asks, through
:meth:`primitives.Primitive.partials`, for local sums to be summed over the group. Each parameter's
chain runs as a generator (:meth:`optispace.chain.Chain.steps`) that yields those partial sums;
:func:`run` advances every sharded parameter of a step to its next yield, sums all the yields of
that round in ONE flat ``all_reduce`` per process group, and sends each its part back. Ember's
tables thus cost one all-reduce of ``sum(D_t + 1)`` floats per step, however many tables there are.

State follows the parameter: a tensor whose dim 0 follows the parameter's (Adam's moments, a row
statistic) is a ``DTensor`` placed ``Shard(0)`` like it; one that does not (a column statistic, a
total) is the same on every rank and stays a plain tensor. So ``state_dict()`` holds DTensors that
``torch.distributed.checkpoint`` can save and reshard.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Generator
from typing import Any

import torch
import torch.distributed as dist

from optispace.chain import Chain
from primitives import Shard

Run = Generator[torch.Tensor, torch.Tensor, None]


def is_dtensor(t: Any) -> bool:
    """Is ``t`` a DTensor? Asked without importing ``torch.distributed.tensor`` (seconds of a CLI's
    start): no DTensor exists before that module is loaded."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


def local(t: Any) -> Any:
    """A DTensor's block on this rank; anything else as it is."""
    return t.to_local() if is_dtensor(t) else t


def shard_of(p: torch.Tensor, name: str = "parameter") -> Shard | None:
    """The :class:`~primitives.Shard` of a DTensor parameter, ``None`` for a plain tensor.

    ``ValueError`` for a placement other than FSDP2's (``Shard(0)`` on a 1-D mesh).
    """
    if not is_dtensor(p):
        return None
    from torch.distributed.tensor import Shard as DimShard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if p.device_mesh.ndim != 1 or tuple(p.placements) != (DimShard(0),):
        raise ValueError(f"{name}: a DTensor placed {tuple(p.placements)} on a {p.device_mesh.ndim}-D mesh; "
                         "optispace.Optimizer steps DTensors placed (Shard(0),) on a 1-D mesh (FSDP2's "
                         "fully_shard); use fully_shard, DDP, or a plain tensor")
    _, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    return Shard(p.device_mesh, tuple(p.shape), offset[0] if offset else 0)


def init_state(chain: Chain, p: torch.Tensor) -> dict[str, torch.Tensor]:
    """The state ``chain`` declares for this rank's block of DTensor ``p``: ``Shard(0)`` DTensors where
    dim 0 follows the parameter's, plain (replicated) tensors where it does not."""
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor import Shard as DimShard

    block = tuple(p.to_local().shape)
    whole = {s.name: s.shape for s in chain.state_specs(tuple(p.shape))}
    # A state follows dim 0 when its shape moves with the parameter's dim 0: try one row more.
    moved = {s.name: s.shape for s in chain.state_specs((p.shape[0] + 1, *p.shape[1:]))} if p.ndim else whole
    out = {}
    for name, t in chain.init_state(block, p.device).items():
        if moved[name] != whole[name]:
            stride = torch.empty(whole[name], device="meta").stride()
            t = DTensor.from_local(t, p.device_mesh, [DimShard(0)], run_check=False, shape=whole[name],
                                   stride=stride)
        out[name] = t
    return out


def run(runs: list[tuple[Run, Shard]]) -> None:
    """Drive every run to its end; per round, one flat ``all_reduce`` (sum) per process group of
    everything the runs yielded, each run then receiving its own part.

    Every rank holds the same parameters with the same chains, so every rank yields the same sizes in
    the same order and the collectives match; runs are advanced in list order, so collectives a
    primitive makes itself (orthogonalize's all-gather) match too.
    """
    asked = {}
    for i, (r, _) in enumerate(runs):
        _advance(asked, i, r, None)
    while asked:
        by_group: dict[Any, list[int]] = {}
        for i in asked:
            by_group.setdefault(runs[i][1].group, []).append(i)
        sums = {}
        for group, indices in by_group.items():
            flat = torch.cat([asked[i].reshape(-1) for i in indices])
            dist.all_reduce(flat, group=group)
            sums |= dict(zip(indices, flat.split([asked[i].numel() for i in indices]), strict=True))
        asked = {}
        for i in sorted(sums):
            _advance(asked, i, runs[i][0], sums[i])


def _advance(asked: dict[int, torch.Tensor], i: int, r: Run, total: torch.Tensor | None) -> None:
    """Run ``r`` to its next yield (recorded in ``asked[i]``) or to its end."""
    with contextlib.suppress(StopIteration):
        asked[i] = next(r) if total is None else r.send(total)

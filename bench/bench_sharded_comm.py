"""Ember's extra communication per step under FSDP2 against the gradient reduce-scatter it rides with.

    .venv/bin/python bench/bench_sharded_comm.py [--tiers small,base] [--measure small] [--world 2]

Computed from the tier's shapes: FSDP2 reduce-scatters every gradient, padded to ``ceil(d0/N) * N``
rows, once per step (DDP all-reduces the unpadded ones); Ember adds one all-reduce of ``D + 1``
floats per token table (its column statistic and total, ``optispace/sharded.py``). Both as payload
(the floats handed to the collective) and its ratio. Measured for the ``--measure`` tiers: one
optimizer step of the tier's GPT, ``fully_shard``-ed over ``--world`` gloo ranks, with every
collective counted (torch's ``CommDebugMode``) and every all-reduce's size recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from optispace.proxies.tiers import TIERS
from optispace.roles import transformer_shapes

FLOAT = 4  # bytes of an fp32 gradient or statistic


def computed(tier: str, world: int) -> dict[str, int]:
    """Floats per step: the gradients' reduce-scatter (padded as FSDP2), and Ember's all-reduce."""
    m = TIERS[tier].model
    shapes = transformer_shapes(m.vocab_size, m.dim, m.layers, tied=m.tied, mlp_ratio=m.mlp_ratio)
    padded = sum(-(-s[0] // world) * world * (s[1] if len(s) > 1 else 1) for group in shapes.values()
                 for s in group)
    ember = sum(s[1] + 1 for role in ("embed", "head") for s in shapes.get(role, []))
    return {"gradients": padded, "ember": ember}


def _measure(rank: int, world: int, tier: str, out: str) -> None:
    """One Ember step of the tier's fully_shard-ed GPT; rank 0 writes what it counted."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard, distribute_tensor
    from torch.distributed.tensor.debug import CommDebugMode

    import optispace
    from optispace.proxies.model import GPT

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    mesh = dist.device_mesh.init_device_mesh("cpu", (world,))
    model = fully_shard(GPT(TIERS[tier].model), mesh=mesh)
    opt = optispace.Optimizer(model, "ember")
    for p in model.parameters():
        p.grad = distribute_tensor(torch.randn(p.shape), mesh, [Shard(0)])
    sizes, all_reduce = [], dist.all_reduce

    def counted(tensor, *args, **kwargs):
        sizes.append(tensor.numel())
        return all_reduce(tensor, *args, **kwargs)

    dist.all_reduce = counted
    with CommDebugMode() as comms:
        opt.step()
    dist.all_reduce = all_reduce
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"collectives": comms.get_total_counts(), "all_reduce_floats": sizes}, f)
    dist.destroy_process_group()


def measured(tier: str, world: int) -> dict:
    with socket.socket() as s:  # a free port for the rendezvous of torch's env:// init
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "counts.json")
        mp.spawn(_measure, args=(world, tier, out), nprocs=world)
        with open(out) as f:
            return json.load(f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiers", default="small,base")
    parser.add_argument("--measure", default="small", help="tiers to run on --world gloo ranks ('' for none)")
    parser.add_argument("--world", type=int, default=2)
    args = parser.parse_args()
    print(f"per optimizer step, FSDP2 over {args.world} ranks, fp32; payload: floats handed to a collective")
    for tier in args.tiers.split(","):
        c = computed(tier, args.world)
        print(f"  {tier}: gradient reduce-scatter {c['gradients']:,} floats ({c['gradients'] * FLOAT:,} B); "
              f"Ember's all-reduce {c['ember']:,} floats ({c['ember'] * FLOAT:,} B); "
              f"ratio {c['ember'] / c['gradients']:.2e}")
        if tier in args.measure.split(","):
            m = measured(tier, args.world)
            print(f"    measured ({args.world} gloo ranks, one ember step): {m['collectives']} "
                  f"collective(s), all-reduce floats {m['all_reduce_floats']}")


if __name__ == "__main__":
    main()

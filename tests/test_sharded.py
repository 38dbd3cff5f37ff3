"""The optimizer on parameters sharded by FSDP2 (optispace/sharded.py and the primitives' partials):
2 and 4 gloo ranks spawned by ``torch.multiprocessing``, each holding a ``fully_shard``-ed tiny GPT,
step from the same gradients as one process stepping the whole model; and, in one process, blocks of
any shape and world summing their partials by hand step as the whole tensor (hypothesis).

Tolerance: elementwise primitives make the same float32 operations on each entry, so they agree bit
for bit; a shape-aware one sums a statistic in another order (per shard, then over ranks) and its
step differs by float32 rounding, ~1e-7 of the step. After 3 steps every parameter is within
``TOLERANCE`` of its largest entry.
"""

from __future__ import annotations

import copy
import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.debug import CommDebugMode

import optispace
from optispace.chain import parse_chain
from optispace.proxies.model import GPT, ModelConfig
from optispace.recipes import RECIPES
from primitives import Context
from primitives import Shard as Block

TOLERANCE = 1e-6  # of each parameter's largest entry (module docstring)
STEPS = 3
# 67 token rows: divisible by neither 2 nor 4; the small table (5 rows) and the gain (3 entries)
# leave the last of 4 ranks an empty block.
CONFIG = ModelConfig(vocab_size=67, dim=16, layers=1, heads=2, seq_len=8)
# The primitives and shapes no named recipe uses, each where a shard cuts it.
CHAINS = {
    "embed": "second_moment(row, bias_correction=row) > normalize(col) > shape_scale(match_rms_adamw)",
    "head": "second_moment(col, source=update) > normalize(rms)",
    "matrix": "momentum(0.9) > second_moment(scalar) > normalize(row) > clip_rms(0.5)",
    "vector": "second_moment(full, bias_correction=row) > second_moment(row, bias_correction=row, "
              "source=update) > normalize(row)",
}
RECIPE_NAMES = [*RECIPES, "chains"]


class Model(nn.Module):
    """The tiny GPT, a 5-row table and a 3-entry gain (empty blocks on the last of 4 ranks)."""

    def __init__(self) -> None:
        super().__init__()
        self.gpt = GPT(CONFIG)
        self.small = nn.Embedding(5, 6)
        self.gain = nn.Parameter(torch.randn(3))


def grads(model: nn.Module, step: int) -> dict[str, torch.Tensor]:
    """Seeded gradients; most token rows all zero, as in a batch that misses them, and on the first step
    the gain's first two entries (one rank's whole block at 2 ranks: a vector's row is seen elsewhere)."""
    gen = torch.Generator().manual_seed(step)
    out = {}
    for name, p in model.named_parameters():
        g = torch.randn(p.shape, generator=gen)
        if "wte" in name or "embed" in name:
            g[torch.rand(p.shape[0], generator=gen) < 0.7] = 0.0
        if name == "gain" and step == 0:
            g[:2] = 0.0
        out[name] = g
    return out


def optimizer(model: nn.Module, recipe: str, **options) -> optispace.Optimizer:
    if recipe == "chains":
        return optispace.Optimizer(model, CHAINS, lr=1e-2, **options)
    return optispace.Optimizer(model, recipe, **options)


def compare(recipe: str, mesh, **options) -> float:
    """Worst |sharded - whole| / max|whole| over the parameters after ``STEPS`` steps."""
    torch.manual_seed(0)
    whole = Model()
    parts = fully_shard(copy.deepcopy(whole), mesh=mesh)
    ours, ref = optimizer(parts, recipe, **options), optimizer(whole, recipe)
    for step in range(STEPS):
        for name, g in grads(whole, step).items():
            whole.get_parameter(name).grad = g
            parts.get_parameter(name).grad = distribute_tensor(g, mesh, [Shard(0)])
        ref.step()
        ours.step()
    worst = 0.0
    for name, p in parts.named_parameters():
        full, expected = p.full_tensor(), whole.get_parameter(name)
        worst = max(worst, ((full - expected).abs().max() / expected.abs().max()).item())
    return worst


def trained(mesh) -> float:
    """Worst relative gap between the losses of Ember training the tiny GPT by forward and backward,
    ``fully_shard``-ed per block as FSDP2 is used, and in one process (the same batch on every rank)."""
    torch.manual_seed(0)
    whole = GPT(CONFIG)
    parts = copy.deepcopy(whole)
    for block in parts.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(parts, mesh=mesh)
    x = torch.randint(0, CONFIG.vocab_size, (2, CONFIG.seq_len), generator=torch.Generator().manual_seed(1))
    gaps, ours, ref = [], optispace.Optimizer(parts, "ember"), optispace.Optimizer(whole, "ember")
    for _ in range(STEPS):
        losses = []
        for model, opt in ((parts, ours), (whole, ref)):
            loss = model(x, x.roll(1, dims=1))
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        gaps.append(abs(losses[0] - losses[1]) / losses[1])
    return max(gaps)


def ember_step_collectives(mesh) -> dict:
    """The collectives and all-reduced floats of one Ember step, and what the tables' D + 1 predict."""
    torch.manual_seed(0)
    model = fully_shard(Model(), mesh=mesh)
    opt = optispace.Optimizer(model, "ember")
    for name, g in grads(model, 0).items():
        model.get_parameter(name).grad = distribute_tensor(g, mesh, [Shard(0)])
    sizes = []
    all_reduce = dist.all_reduce

    def counted(tensor, *args, **kwargs):
        sizes.append(tensor.numel())
        return all_reduce(tensor, *args, **kwargs)

    dist.all_reduce = counted
    try:
        with CommDebugMode() as comms:
            opt.step()
    finally:
        dist.all_reduce = all_reduce
    tables = [p for g in opt.param_groups if g["role"] in ("embed", "head") for p in g["params"]]
    return {"collectives": comms.get_total_counts(), "sizes": sizes,
            "predicted": sum(p.shape[1] + 1 for p in tables)}


def reloaded(mesh, folder: str) -> bool:
    """Does an Ember optimizer's state, saved by torch.distributed.checkpoint, load into a fresh one as
    the same DTensor and plain state?"""
    torch.manual_seed(0)
    model = fully_shard(Model(), mesh=mesh)
    opt = optispace.Optimizer(model, "ember")
    for name, g in grads(model, 0).items():
        model.get_parameter(name).grad = distribute_tensor(g, mesh, [Shard(0)])
    opt.step()
    dcp.save({"optim": get_optimizer_state_dict(model, opt)}, checkpoint_id=folder)
    fresh = optispace.Optimizer(model, "ember")
    loaded = {"optim": get_optimizer_state_dict(model, fresh)}
    dcp.load(loaded, checkpoint_id=folder)
    set_optimizer_state_dict(model, fresh, loaded["optim"])
    pairs = [(a, fresh.state[p][k]) for p, state in opt.state.items() for k, a in state.items()
             if isinstance(a, torch.Tensor)]
    return all(type(a) is type(b) and torch.equal(*(t.to_local() if isinstance(t, DTensor) else t
                                                     for t in (a, b))) for a, b in pairs)


def refusal(mesh) -> str:
    """The error for a parameter placed otherwise than FSDP2's Shard(0)."""
    layer = nn.Linear(4, 4)
    layer.weight = nn.Parameter(distribute_tensor(layer.weight.detach(), mesh, [Replicate()]))
    try:
        optispace.Optimizer(layer, "adamw")
    except ValueError as e:
        return str(e)
    return ""


def state_bytes(mesh, world: int) -> dict:
    """Allocated state bytes on this rank and ``sharded_state_bytes``' per-rank prediction, per recipe."""
    torch.manual_seed(0)
    model = fully_shard(Model(), mesh=mesh)
    shapes: dict[str, list] = {}
    out = {}
    for recipe in ("adamw", "ember", "adafactor"):
        opt = optispace.Optimizer(model, recipe)
        for group in opt.param_groups:
            shapes[group["role"]] = [tuple(p.shape) for p in group["params"]]
        out[recipe] = {"allocated": opt.state_bytes(),
                       "predicted": optispace.sharded_state_bytes(shapes, world, recipe).per_rank}
    return out


def _rank(rank: int, world: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        mesh = dist.device_mesh.init_device_mesh("cpu", (world,))
        result = {"errors": {recipe: compare(recipe, mesh) for recipe in RECIPE_NAMES},
                  "fused": compare("ember", mesh, fused=True), "trained": trained(mesh),
                  "reloaded": reloaded(mesh, os.path.join(folder, "checkpoint")),
                  "refusal": refusal(mesh), "ember": ember_step_collectives(mesh),
                  "state_bytes": state_bytes(mesh, world)}
    finally:
        dist.destroy_process_group()
    with open(os.path.join(folder, f"{rank}.json"), "w") as f:
        json.dump(result, f)


@pytest.fixture(scope="module", params=[2, 4])
def ranks(request, tmp_path_factory) -> list[dict]:
    """Each rank's results (``_rank``) for a world of 2, then 4."""
    world = request.param
    folder = tmp_path_factory.mktemp(f"world{world}")
    with socket.socket() as s:  # a free port for the rendezvous of torch's env:// init
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    mp.spawn(_rank, args=(world, str(folder)), nprocs=world)
    return [json.loads((folder / f"{r}.json").read_text()) for r in range(world)]


@pytest.mark.parametrize("recipe", RECIPE_NAMES)
def test_a_sharded_step_is_the_whole_step(ranks, recipe):
    for rank, result in enumerate(ranks):
        assert result["errors"][recipe] <= TOLERANCE, (rank, result["errors"])


def test_fused_steps_sharded_parameters_eagerly(ranks):
    for result in ranks:
        assert result["fused"] <= TOLERANCE


def test_fsdp2_training_follows_one_process(ranks):
    for result in ranks:
        assert result["trained"] <= TOLERANCE


def test_a_checkpoint_of_sharded_state_loads_back_as_it_was(ranks):
    assert all(result["reloaded"] for result in ranks)


def test_a_placement_other_than_fsdp2s_is_refused(ranks):
    for result in ranks:
        assert "Replicate()" in result["refusal"] and "(Shard(0),) on a 1-D mesh" in result["refusal"]


def test_ember_sums_all_tables_in_one_all_reduce_per_step(ranks):
    for result in ranks:
        ember = result["ember"]
        assert ember["collectives"] == 1
        assert ember["sizes"] == [ember["predicted"]]


def test_state_bytes_per_rank_is_the_prediction(ranks):
    """Rank 0 holds full ceil(d0/world) blocks: what the prediction counts; the others hold no more."""
    for rank, result in enumerate(ranks):
        for recipe, counts in result["state_bytes"].items():
            for role, predicted in counts["predicted"].items():
                allocated = counts["allocated"][role]
                assert allocated == predicted if rank == 0 else allocated <= predicted, (recipe, role, rank)


# Every shape-aware primitive with partials, in one process: the blocks' yields are summed by hand.
SHAPE_AWARE = [
    "second_moment(factored, bias_correction=row) > clip_rms(0.5)",
    "relative_step > second_moment(col) > normalize(rms)",
    "second_moment(row, bias_correction=row, source=update) > normalize(row) > normalize(col)",
    "l2(0.1) > momentum(0.9) > second_moment(scalar, eps_mode=floor) > shape_scale(match_rms_adamw)",
]


def blocks_step(chain_text: str, params: list[torch.Tensor], grads: list[torch.Tensor],
                states: list[dict], shape: tuple[int, ...], offsets: list[int], step: int) -> None:
    """One step of every block, each round's yields summed over the blocks as the all-reduce would."""
    chain = parse_chain(chain_text)
    runs, ctxs = [], []
    for p, g, state, offset in zip(params, grads, states, offsets, strict=True):
        ctxs.append(Context(grad=g, param=p, step=step, lr=0.1, shard=Block(None, shape, offset)))
        runs.append(chain.steps(g, state, ctxs[-1]))
    asked, done = [next(r) for r in runs], {}
    while asked:
        total = torch.stack(asked).sum(dim=0)
        asked = []
        for i, r in enumerate(runs):
            try:
                asked.append(r.send(total))
            except StopIteration as end:
                done[i] = end.value
    for i, (p, ctx) in enumerate(zip(params, ctxs, strict=True)):
        if not ctx.applied:
            ctx.update(p, done[i])


@settings(max_examples=25, deadline=None)
@given(chain=st.sampled_from(SHAPE_AWARE), rows=st.integers(1, 9), cols=st.integers(1, 5),
       vector=st.booleans(), world=st.integers(1, 5))
def test_blocks_summing_their_partials_step_as_the_whole(chain, rows, cols, vector, world):
    """Split dim 0 as FSDP2 does (blocks of ceil(d0 / world), the last ones short or empty): stepping
    the blocks gives the whole tensor's step, whatever the shape and the world."""
    shape = (rows * cols,) if vector else (rows, cols)
    gen = torch.Generator().manual_seed(rows * 100 + cols)
    whole = torch.randn(shape, generator=gen)
    size = -(-shape[0] // world)
    offsets = [min(r * size, shape[0]) for r in range(world)]
    params = [whole[o: o + size].clone() for o in offsets]
    parsed = parse_chain(chain)
    states = [parsed.init_state(tuple(p.shape), p.device) for p in params]
    ref, ref_state = whole.clone(), parsed.init_state(shape, whole.device)
    for step in (1, 2, 3):
        g = torch.randn(shape, generator=gen)
        g[: shape[0] // 2] *= step != 1  # half of dim 0 unseen on the first step
        ctx = Context(grad=g, param=ref, step=step, lr=0.1)
        u = parsed.apply(g, ref_state, ctx)
        if not ctx.applied:
            ctx.update(ref, u)
        blocks_step(chain, params, [g[o: o + size] for o in offsets], states, shape, offsets, step)
    scale = ref.abs().max().item()
    torch.testing.assert_close(torch.cat(params), ref, rtol=TOLERANCE, atol=TOLERANCE * scale)

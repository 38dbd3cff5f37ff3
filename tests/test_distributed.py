"""Data-parallel proxies (optispace/proxies/distributed.py): 2 and 4 gloo ranks spawned by
``torch.multiprocessing`` train the same global batch as one process and resume bit for bit.

Tolerance: with N ranks, DDP averages N per-rank mean gradients where one process takes the mean
over the whole batch; the same numbers are summed in another order, so a step differs by float32
rounding (~1e-7 relative) and the losses drift apart by at most ~1e-5 relative over a short run.
"""

from __future__ import annotations

import json
import os
import signal
import socket

import pytest
import torch
import torch.multiprocessing as mp
from hypothesis import given
from hypothesis import strategies as st

from optispace.proxies import TIERS, TrainConfig, train
from optispace.proxies.distributed import Ranks, _failure_text, from_env, local_slice, process_group
from optispace.proxies.train import check_world

TOLERANCE = 1e-5  # relative, on every loss of a 12-step tiny run (module docstring)
TINY = TIERS["tiny"]


def tiny(**overrides) -> TrainConfig:
    settings = {"recipe": "adamw", "proxy": "tiny", "data": "zipf:n=5000", "lr": 3e-3, "eval_every": 4,
                "eval_batches": 2, "tokens": 12 * TINY.tokens_per_step, "device": "cpu"} | overrides
    return TrainConfig(**settings)


def losses(curve: list[dict]) -> list[tuple]:
    return [(p["step"], p["train_loss"], p["val_loss"]) for p in curve]


def assert_close(curve: list[dict], reference: list[dict]) -> None:
    """Same steps, every loss within ``TOLERANCE`` (module docstring)."""
    for (step, loss, val), (step_r, train_r, val_r) in zip(losses(curve), losses(reference), strict=True):
        assert step == step_r
        assert loss == pytest.approx(train_r, rel=TOLERANCE)
        assert val == pytest.approx(val_r, rel=TOLERANCE)


class Stop(Exception):
    pass


def _rank(rank: int, world: int, folder: str, mode: str) -> None:
    """One spawned rank: train (``full``), stop after step 4's checkpoint (``stop``), or ``resume``."""
    torch.set_num_threads(1)
    ranks = Ranks(rank, world, rank)
    ckpt = os.path.join(folder, "run.pt")

    def stop_at_4(step, tokens, val_loss):
        if step == 4:
            raise Stop

    with process_group(ranks, torch.device("cpu")):
        try:
            record = train(tiny(), progress=False, on_eval=stop_at_4 if mode == "stop" else None,
                           checkpoint=ckpt if mode == "stop" else None,
                           resume=ckpt if mode == "resume" else None)
        except Stop:
            return
    with open(os.path.join(folder, f"{mode}-{rank}.json"), "w") as f:
        f.write(record.to_json())


def _spawn(folder, mode: str, world: int = 2) -> list[dict]:
    with socket.socket() as s:  # a free port for the rendezvous of torch's env:// init
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    mp.spawn(_rank, args=(world, str(folder), mode), nprocs=world)
    paths = [folder / f"{mode}-{r}.json" for r in range(world)]
    return [json.loads(p.read_text()) for p in paths if p.exists()]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[list[dict], object]:
    folder = tmp_path_factory.mktemp("ddp")
    return _spawn(folder, "full"), folder


@pytest.mark.slow
def test_two_ranks_give_the_losses_of_one_process_on_the_same_global_batch(two_ranks):
    records, _ = two_ranks
    one = train(tiny(), progress=False)
    assert [r["world_size"] for r in records] == [2, 2]
    assert losses(records[0]["curve"]) == losses(records[1]["curve"])  # the ranks agree exactly
    assert_close(records[0]["curve"], one.curve)
    assert records[0]["config"]["tokens_per_step"] == one.config["tokens_per_step"]  # global, not per rank
    assert records[0]["state_bytes"] == one.state_bytes


@pytest.mark.slow
def test_four_ranks_give_the_losses_of_one_process_on_the_same_global_batch(tmp_path):
    records = _spawn(tmp_path, "full", world=4)
    assert [r["world_size"] for r in records] == [4] * 4
    assert all(losses(r["curve"]) == losses(records[0]["curve"]) for r in records[1:])
    assert_close(records[0]["curve"], train(tiny(), progress=False).curve)


@pytest.mark.slow
def test_two_ranks_resume_bit_for_bit_from_rank_0s_checkpoint(two_ranks):
    records, folder = two_ranks
    _spawn(folder, "stop")
    resumed = _spawn(folder, "resume")
    assert losses(resumed[0]["curve"]) == losses(records[0]["curve"])
    alone = train(tiny(), progress=False, resume=folder / "run.pt")  # the world size may change
    assert losses(alone.curve)[:1] == losses(records[0]["curve"])[:1]  # step 4, from the checkpoint
    assert_close(alone.curve, records[0]["curve"])


@given(st.integers(1, 8).flatmap(lambda w: st.tuples(st.just(w), st.integers(1, 5).map(lambda k: k * w))))
def test_the_ranks_slices_tile_the_global_batch_in_order(world_rows):
    world, rows = world_rows
    batch = (torch.arange(rows * 3).reshape(rows, 3), torch.arange(rows))
    parts = [local_slice(batch, Ranks(r, world)) for r in range(world)]
    for i, t in enumerate(batch):
        assert torch.equal(torch.cat([p[i] for p in parts]), t)


def test_a_world_must_split_the_tier_batch_and_train_the_pretraining_regime():
    check_world(tiny(), 8)
    for cfg, world, words in ((tiny(), 3, "batch of 8"), (tiny(regime="sft"), 2, "regime sft")):
        with pytest.raises(Exception, match=words):
            check_world(cfg, world)


def test_ranks_come_from_the_launchers_variables(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert from_env() is None
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert from_env() == Ranks(3, 4, 1) and not from_env().lead


def test_a_failed_rank_is_named_with_its_signal_or_code():
    assert _failure_text(1, -signal.SIGKILL) == "rank 1 was killed by SIGKILL; the other ranks were stopped"
    assert _failure_text(0, 3) == "rank 0 exited with code 3; the other ranks were stopped"

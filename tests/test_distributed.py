"""Data-parallel proxies (optispace/proxies/distributed.py): 2 and 4 gloo ranks spawned by
``torch.multiprocessing`` train the same global batch as one process, under DDP and FSDP2, and
resume: bit for bit at the same world size, and at another one from FSDP2's sharded checkpoint
folder (torch.distributed.checkpoint reshards it) or from one process's file.

Tolerance: with N ranks, DDP averages N per-rank mean gradients where one process takes the mean
over the whole batch (FSDP2 reduce-scatters the same average, and the sharded optimizer sums a
factored second moment's column statistic over the ranks' rows); the same numbers are summed in
another order, so a step differs by float32 rounding (~1e-7 relative) and the losses drift apart by
at most ~1e-5 relative over a short run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket

import pytest
import torch
import torch.multiprocessing as mp
from hypothesis import given
from hypothesis import strategies as st

from optispace.errors import UserError
from optispace.proxies import TIERS, TrainConfig, train
from optispace.proxies.checkpoint import is_folder
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


def stop_at_4(step, tokens, val_loss):
    if step == 4:
        raise Stop


def _rank(rank: int, world: int, folder: str, mode: str, settings: dict, ckpt: str) -> None:
    """One spawned rank: train (``full``), stop after step 4's checkpoint (``stop``), or ``resume``."""
    torch.set_num_threads(1)
    ranks = Ranks(rank, world, rank)
    ckpt = os.path.join(folder, ckpt)
    with process_group(ranks, torch.device("cpu")):
        try:
            record = train(tiny(**settings), progress=False, on_eval=stop_at_4 if mode == "stop" else None,
                           checkpoint=ckpt if mode == "stop" else None,
                           resume=ckpt if mode == "resume" else None)
        except Stop:
            return
    with open(os.path.join(folder, f"{mode}-{world}-{rank}.json"), "w") as f:
        f.write(record.to_json())


def _spawn(folder, mode: str, world: int = 2, ckpt: str = "run.pt", **settings) -> list[dict]:
    with socket.socket() as s:  # a free port for the rendezvous of torch's env:// init
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    mp.spawn(_rank, args=(world, str(folder), mode, settings, ckpt), nprocs=world)
    paths = [folder / f"{mode}-{world}-{r}.json" for r in range(world)]
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


# FSDP2 with Ember: its token tables' factored second moment keeps the row statistic sharded with the
# rows and the column statistic whole on every rank, so the checkpoint folder holds both kinds.
FSDP2 = {"parallel": "fsdp2", "recipe": "ember"}


@pytest.fixture(scope="module")
def fsdp2_two_ranks(tmp_path_factory) -> tuple[list[dict], object]:
    folder = tmp_path_factory.mktemp("fsdp2")
    return _spawn(folder, "full", **FSDP2), folder


@pytest.fixture(scope="module")
def fsdp2_one_process():
    return train(tiny(**FSDP2), progress=False)


@pytest.mark.slow
def test_fsdp2_two_ranks_give_the_losses_of_one_process_each_holding_half_the_state(
        fsdp2_two_ranks, fsdp2_one_process):
    records, _ = fsdp2_two_ranks
    assert [(r["world_size"], r["config"]["parallel"]) for r in records] == [(2, "fsdp2")] * 2
    assert losses(records[0]["curve"]) == losses(records[1]["curve"])
    assert_close(records[0]["curve"], fsdp2_one_process.curve)
    # the blocks' matrices split evenly: each rank keeps exactly half of their moments
    assert records[0]["state_bytes"]["matrix"] * 2 == fsdp2_one_process.state_bytes["matrix"]


@pytest.fixture(scope="module")
def fsdp2_folder(fsdp2_two_ranks):
    """The checkpoint folder two FSDP2 ranks write at step 4."""
    _, folder = fsdp2_two_ranks
    _spawn(folder, "stop", ckpt="run", **FSDP2)
    return folder / "run"


@pytest.mark.slow
def test_fsdp2_checkpoint_folder_of_two_ranks_resumes_in_one_process(fsdp2_two_ranks, fsdp2_folder,
                                                                     fsdp2_one_process):
    assert is_folder(fsdp2_folder)
    alone = train(tiny(**FSDP2), progress=False, resume=fsdp2_folder)  # DCP gathers the shards
    two = fsdp2_two_ranks[0][0]["curve"]
    assert losses(alone.curve)[0] == losses(two)[0]  # step 4, from the checkpoint
    assert_close(alone.curve, fsdp2_one_process.curve)


@pytest.mark.slow
def test_one_process_checkpoint_file_resumes_on_four_fsdp2_ranks(tmp_path, fsdp2_one_process):
    with pytest.raises(Stop):
        train(tiny(**FSDP2), progress=False, on_eval=stop_at_4, checkpoint=tmp_path / "run.pt")
    four = _spawn(tmp_path, "resume", world=4, **FSDP2)  # each rank cuts its shards from the file
    assert [r["world_size"] for r in four] == [4] * 4
    assert all(losses(r["curve"]) == losses(four[0]["curve"]) for r in four[1:])
    assert_close(four[0]["curve"], fsdp2_one_process.curve)  # steps 5-12 trained by 4 ranks


@pytest.mark.slow
def test_a_checkpoint_folder_missing_a_shard_is_refused_in_one_line(fsdp2_folder, tmp_path):
    broken = tmp_path / "run"
    shutil.copytree(fsdp2_folder, broken)
    next(broken.glob("*.distcp")).unlink()
    with pytest.raises(UserError, match="cannot be loaded into this run .*No such file"):
        train(tiny(**FSDP2), progress=False, resume=broken)


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

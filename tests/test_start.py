"""Start runs: a cached run trains once and is read back after; its fingerprint holds what changes the
weights and nothing else; a checkpoint of another kind is refused."""

import dataclasses
import sys

import pytest
import torch

from optispace.errors import UserError
from optispace.proxies import TIERS, TrainConfig
from optispace.proxies.start import cached_run, fingerprint, load_checkpoint_model

CORPUS = {"fingerprint": "c0ffee", "source": "test"}


def tiny(tmp_path, **overrides) -> TrainConfig:
    settings = {"recipe": "adamw", "proxy": "tiny", "data": "zipf:n=5000", "eval_batches": 1,
                "tokens": 3 * TIERS["tiny"].tokens_per_step, "cache_dir": str(tmp_path)}
    return TrainConfig(**settings | overrides)


def test_fingerprint_ignores_device_and_cache_but_not_the_recipe(tmp_path):
    cfg = tiny(tmp_path)
    elsewhere = dataclasses.replace(cfg, device="cpu", cache_dir=None)
    assert fingerprint(cfg, CORPUS) == fingerprint(elsewhere, CORPUS)
    assert fingerprint(cfg, CORPUS) != fingerprint(dataclasses.replace(cfg, lr=1e-2), CORPUS)
    assert fingerprint(cfg, CORPUS) != fingerprint(cfg, CORPUS | {"fingerprint": "other"})


def test_a_new_setting_that_does_not_change_the_weights_keeps_the_cache_key(monkeypatch):
    # The key of a fixed run, as cached since the regimes landed. A TrainConfig field added later changes
    # it (every user's cached start runs would train again) unless it is in _NOT_IDENTITY, or the change
    # is meant and START_FORMAT says so.
    monkeypatch.setattr(torch, "__version__", "2.13.0+cpu")
    cfg = TrainConfig(recipe="adamw", proxy="tiny", tokens=4096)
    assert fingerprint(cfg, CORPUS) == "3fb03d5fcec704e8"
    assert fingerprint(dataclasses.replace(cfg, format_steps=5), CORPUS) == "3fb03d5fcec704e8"


def test_a_cached_run_trains_once(tmp_path, monkeypatch):
    cfg = tiny(tmp_path)
    first = cached_run(cfg, CORPUS)

    def refuse(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(sys.modules["optispace.proxies.train"], "train", refuse)
    again = cached_run(cfg, CORPUS)
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [f"pretrain-tiny-{fingerprint(cfg, CORPUS)}.pt"]


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "x.pt"
    path.write_text("not torch")
    with pytest.raises(UserError, match="not a torch checkpoint"):
        load_checkpoint_model(path, TIERS["tiny"], CORPUS)
    torch.save({"format": 0}, path)
    with pytest.raises(UserError, match="not an optispace checkpoint"):
        load_checkpoint_model(path, TIERS["tiny"], CORPUS)

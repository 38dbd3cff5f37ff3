"""Trackers: TensorBoard event files and a Weights & Biases run get every evaluation; without the
library, building a logger names the extra to install."""

from __future__ import annotations

import sys
import types

import pytest

from optispace.errors import MissingExtra
from optispace.loggers import TensorBoardLogger, WandbLogger
from optispace.proxies import TIERS, TrainConfig, train

CFG = TrainConfig(recipe="ember", proxy="tiny", data="zipf:n=5000", lr=3e-3, eval_every=2, eval_batches=1,
                  tokens=4 * TIERS["tiny"].tokens_per_step)


def test_tensorboard_gets_each_evaluation(tmp_path) -> None:
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                      reason="tensorboard is not installed (extra optispace[tensorboard])")
    record = train(CFG, callbacks=[TensorBoardLogger(str(tmp_path))], progress=False)
    events = accumulator.EventAccumulator(str(tmp_path))
    events.Reload()
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("loss/val")] == [
        (p["step"], round(p["val_loss"], 4)) for p in record.curve]
    assert {"loss/train", "tokens_per_s", "lr/embed", "lr/matrix"} <= set(events.Tags()["scalars"])


class FakeRun:
    def __init__(self, **kwargs) -> None:
        self.kwargs, self.logged, self.finished = kwargs, [], False
        values: dict = {}
        self.config = types.SimpleNamespace(values=values, update=lambda d, **_: values.update(d))
        self.summary: dict = {}

    def log(self, data: dict, step: int) -> None:
        self.logged.append((step, data))

    def finish(self) -> None:
        self.finished = True


def test_a_wandb_run_gets_each_evaluation_then_the_config_and_final_loss(monkeypatch) -> None:
    runs: list[FakeRun] = []
    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: runs.append(FakeRun(**kwargs)) or runs[-1]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    record = train(CFG, callbacks=[WandbLogger(project="p")], progress=False)
    (run,) = runs
    assert run.kwargs == {"project": "p"} and run.finished
    assert [(step, data["loss/val"]) for step, data in run.logged] == [(p["step"], p["val_loss"])
                                                                        for p in record.curve]
    assert run.config.values["recipe"] == "ember" and run.summary["final_val_loss"] == record.final_val_loss


@pytest.mark.parametrize(("logger", "module", "extra"), [
    (TensorBoardLogger, "torch.utils.tensorboard", "tensorboard"), (WandbLogger, "wandb", "wandb")])
def test_a_missing_library_names_the_extra(logger, module: str, extra: str, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # None in sys.modules makes the import fail
    with pytest.raises(MissingExtra, match=rf"pip install 'optispace\[{extra}\]'"):
        logger()

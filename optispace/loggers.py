"""Training trackers: callbacks for ``optispace.proxies.train(cfg, callbacks=[...])``.

Each logs, after every evaluation, the curve point (train and val loss, tokens, elapsed seconds),
tokens/s and each role's current lr, under the step number. The libraries are optional extras:
``optispace[tensorboard]`` (``torch.utils.tensorboard.SummaryWriter``) and ``optispace[wandb]``
(Weights & Biases' ``wandb.init`` and ``run.log``); building a logger without its library raises
``optispace.errors.MissingExtra`` naming the extra.
"""

from __future__ import annotations

from typing import Any

from optispace.errors import require


def scalars(point: dict[str, Any], optimizer: Any) -> dict[str, float]:
    """The numbers logged at one evaluation: ``loss/val``, ``loss/train``, ``tokens``,
    ``tokens_per_s`` and ``lr/<role>`` (the lr each role's group used for the last step)."""
    out = {"loss/val": point["val_loss"], "loss/train": point["train_loss"], "tokens": point["tokens"],
           "tokens_per_s": point["tokens_per_s"]}
    if optimizer is not None:
        out |= {f"lr/{g['role']}": g["lr"] for g in optimizer.param_groups}
    return out


class TensorBoardLogger:
    """Scalars to a TensorBoard event file in ``log_dir`` (``SummaryWriter``'s own default if None)."""

    name = "tensorboard"

    def __init__(self, log_dir: str | None = None, **writer_kwargs: Any) -> None:
        tensorboard = require("torch.utils.tensorboard", "tensorboard", "TensorBoardLogger")
        self.writer = tensorboard.SummaryWriter(log_dir, **writer_kwargs)
        self.optimizer = None

    def on_start(self, model: Any, optimizer: Any, roles: Any, data: Any) -> None:
        self.optimizer = optimizer

    def on_eval(self, point: dict[str, Any]) -> None:
        for tag, value in scalars(point, self.optimizer).items():
            self.writer.add_scalar(tag, value, point["step"])

    def on_end(self, record: Any) -> None:
        self.writer.close()


class WandbLogger:
    """Scalars to a Weights & Biases run: ``wandb.init(**init_kwargs)`` at the start, the run's config
    and final val loss (or divergence) at the end, then ``run.finish()``."""

    name = "wandb"

    def __init__(self, **init_kwargs: Any) -> None:
        self.wandb = require("wandb", "wandb", "WandbLogger")
        self.init_kwargs = init_kwargs
        self.run: Any = None
        self.optimizer = None

    def on_start(self, model: Any, optimizer: Any, roles: Any, data: Any) -> None:
        self.optimizer = optimizer
        self.run = self.wandb.init(**self.init_kwargs)

    def on_eval(self, point: dict[str, Any]) -> None:
        self.run.log(scalars(point, self.optimizer), step=point["step"])

    def on_end(self, record: Any) -> None:
        self.run.config.update(record.config, allow_val_change=True)
        self.run.summary["final_val_loss"] = record.final_val_loss
        self.run.summary["diverged"] = record.diverged
        self.run.finish()

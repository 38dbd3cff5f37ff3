"""Regimes: the kinds of run the one training loop makes (pretraining, SFT, RL).

A regime supplies what differs between them: the model it starts from, the batch of each step, the
loss of a batch and the evaluation. The loop (``optispace.proxies.train``) owns everything else:
schedule, clipping, the optimizer step, divergence, checkpoints, callbacks.

Every regime's ``evaluate`` returns its objective (``OBJECTIVES``, a number to minimise: pretraining's
val loss, SFT's response val loss, RL's one minus the held-out reward) and any other numbers for the
curve; ``finish`` the final measurements of a run that did not diverge.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import torch

from optispace.proxies.data import TokenData, check_fits, load_data, train_batch, val_batches
from optispace.proxies.model import GPT
from optispace.proxies.objectives import OBJECTIVES

if TYPE_CHECKING:
    from optispace.proxies.tiers import Tier
    from optispace.proxies.train import TrainConfig

REGIMES = ("pretrain", "sft", "rl")
Forward = Callable[..., torch.Tensor]


class Regime(Protocol):
    """What a kind of run gives the loop. ``batch(step)`` depends on (seed, step), the model and
    ``state_dict()`` only (a checkpoint keeps that state), so a resumed run redraws it; its first two
    tensors are the input and target token ids (what probes count); ``data`` is the pretraining corpus
    (probes read its token frequencies)."""

    name: str
    objective: str
    model: GPT
    data: TokenData
    default_tokens: int

    def batch(self, step: int) -> tuple[torch.Tensor, ...]: ...

    def loss(self, forward: Forward, batch: tuple[torch.Tensor, ...]) -> torch.Tensor: ...

    def evaluate(self, forward: Forward) -> dict[str, float]: ...

    def finish(self, forward: Forward) -> dict: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class Stateless:
    """A regime whose batches depend on (seed, step) alone: nothing to checkpoint."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore."""


class Pretrain(Stateless):
    """Next-token prediction on windows of a token stream, from a fresh initialisation."""

    name = "pretrain"
    objective = OBJECTIVES["pretrain"]

    def __init__(self, cfg: TrainConfig, tier: Tier, device: torch.device) -> None:
        self.model = GPT(tier.model).to(device)
        self.data = load_data(cfg.data, tier.model.vocab_size, cfg.cache_dir)
        check_fits(self.data, tier.model.seq_len)
        self.seed, self.device, self.default_tokens = cfg.seed, device, tier.tokens
        self.batch_size, self.seq_len = tier.batch_size, tier.model.seq_len
        self.val = [(x.to(device), y.to(device))
                    for x, y in val_batches(self.data, cfg.eval_batches, self.batch_size, self.seq_len)]

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = train_batch(self.data, self.seed, step, self.batch_size, self.seq_len)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def loss(self, forward: Forward, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, y = batch
        return forward(x, y)

    def evaluate(self, forward: Forward) -> dict[str, float]:
        """Mean loss over the fixed validation batches."""
        return {"val_loss": mean_loss(forward, self.val)}

    def finish(self, forward: Forward) -> dict:
        return {}


def precision(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA, full fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def mean_loss(forward: Forward, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """The mean of the per-batch mean losses ``forward(x, y)``."""
    losses = [forward(x, y).item() for x, y in batches]
    return sum(losses) / len(losses)


def build_regime(cfg: TrainConfig, tier: Tier, device: torch.device) -> Regime:
    """The regime ``cfg.regime`` names, built for ``tier`` on ``device``."""
    if cfg.regime == "sft":
        from optispace.proxies.sft import SFT

        return SFT(cfg, tier, device)
    if cfg.regime == "rl":
        from optispace.proxies.rl import RL

        return RL(cfg, tier, device)
    return Pretrain(cfg, tier, device)

"""Step-size scaling: primitives that change ``Context.step_size`` and leave the direction alone."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from primitives.base import Context, Primitive, PureContext, check_finite, matrix_shape, register, square_sum

RULES = ("original", "match_rms_adamw")


@register
@dataclass(frozen=True)
class ShapeScale(Primitive):
    """Muon's shape scaling of the step, on the (rows, columns) view (torch.optim.Muon ``adjust_lr_fn``).

    ``original``: ``step *= sqrt(max(1, rows / cols))`` (Keller Jordan);
    ``match_rms_adamw``: ``step *= 0.2 sqrt(max(rows, cols))`` (Moonshot).
    """

    name = "shape_scale"
    positional = ("rule",)
    choices = {"rule": RULES}
    homogeneous = True

    rule: str = "original"

    def factor(self, shape: tuple[int, ...]) -> float:
        """The step's multiplier for a parameter of ``shape``."""
        rows, cols = matrix_shape(tuple(shape))
        if self.rule == "original":
            return math.sqrt(max(1.0, rows / cols))
        return 0.2 * math.sqrt(max(rows, cols))

    def apply(self, u: torch.Tensor, state: dict[str, torch.Tensor], ctx: Context) -> torch.Tensor:
        ctx.step_size *= self.factor(tuple(u.shape) if ctx.shard is None else ctx.shard.shape)
        return u

    def pure(self, u: torch.Tensor, state: dict[str, torch.Tensor], ctx: PureContext,
             hp: dict[str, torch.Tensor]) -> torch.Tensor:
        # A constant of the shape, which compiled code is specialized to anyway.
        ctx.step_size = ctx.step_size * self.factor(tuple(u.shape))
        return u


@register
@dataclass(frozen=True)
class RelativeStep(Primitive):
    """Adafactor's parameter-relative step: ``step = max(eps, RMS(p)) * min(step, 1 / sqrt(t))``.

    RMS(p) is read when the primitive runs: first in the chain, that is before weight decay, as
    torch Adafactor does. It is why Adafactor's best lr is far above Adam's.
    """

    name = "relative_step"
    positional = ("eps",)
    reads_param = True

    eps: float = 1e-3

    def validate(self) -> None:
        check_finite(self.name, "eps", self.eps, positive=False)

    def partials(self, u: torch.Tensor, state: dict[str, torch.Tensor], ctx: Context) -> torch.Tensor | None:
        """On a shard: ``sum(p^2)``, its part of the whole parameter's norm."""
        return None if ctx.shard is None else square_sum(ctx.param)

    def apply(self, u: torch.Tensor, state: dict[str, torch.Tensor], ctx: Context) -> torch.Tensor:
        p = ctx.param
        if ctx.sums is None:
            rms = p.norm(2).item() / p.numel() ** 0.5
        else:  # the whole parameter's, from a shard's partial sums
            rms = ctx.sums[0].sqrt().item() / math.prod(ctx.shard.shape) ** 0.5
        ctx.step_size = max(self.eps, rms) * min(ctx.step_size, 1.0 / ctx.step**0.5)
        return u

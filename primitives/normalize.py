"""Normalization of the direction's size: to a target RMS or L2 norm, or clipped by RMS.

All act on the (rows, columns) view of the tensor (``primitives.base.matrix_shape``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from primitives.base import Context, Primitive, check_finite, matrix_shape, register, square_sum

KINDS = ("rms", "row", "col")


@register
@dataclass(frozen=True)
class Normalize(Primitive):
    """Rescale ``u`` to size ``target``; a part smaller than ``eps`` is divided by ``eps`` instead.

    - ``rms``: ``u' = target * u / max(RMS(u), eps)`` (the whole tensor)
    - ``row``: each row to L2 norm ``target``: ``u'[i] = target * u[i] / max(||u[i]||, eps)``
    - ``col``: each column to L2 norm ``target``
    """

    name = "normalize"
    positional = ("kind",)
    choices = {"kind": KINDS}

    kind: str = "rms"
    target: float = 1.0
    eps: float = 1e-8

    def validate(self) -> None:
        check_finite(self.name, "target", self.target, positive=True)
        check_finite(self.name, "eps", self.eps, positive=True)

    def partials(self, u: torch.Tensor, state: dict[str, torch.Tensor], ctx: Context) -> torch.Tensor | None:
        """On a shard: ``sum(u^2)`` for ``rms``; the squared norms of rows or columns the block cuts."""
        if ctx.shard is None:
            return None
        if self.kind == "rms":
            return square_sum(u)
        dim = 1 if self.kind == "row" else 0
        if dim != ctx.shard.split:
            return None
        return torch.linalg.vector_norm(u.reshape(matrix_shape(tuple(u.shape))), dim=dim).square_()

    def apply(self, u: torch.Tensor, state: dict[str, torch.Tensor], ctx: Context) -> torch.Tensor:
        if self.kind == "rms":
            if ctx.sums is None:
                rms = torch.linalg.vector_norm(u).div_(math.sqrt(u.numel()))
            else:  # the whole tensor's, from a shard's partial sums
                rms = ctx.sums[0].sqrt().div_(math.sqrt(math.prod(ctx.shard.shape)))
            return torch.mul(u, self.target / rms.clamp_(min=self.eps), out=ctx.buffer(u.shape, u.device))
        rows, cols = matrix_shape(tuple(u.shape))
        u2 = u.reshape(rows, cols)
        dim = 1 if self.kind == "row" else 0
        if ctx.sums is None:
            norms = torch.linalg.vector_norm(u2, dim=dim, keepdim=True).clamp_(min=self.eps)
        else:
            norms = ctx.sums.sqrt().unsqueeze(dim).clamp_(min=self.eps)
        out = ctx.buffer((rows, cols), u.device)
        return torch.mul(u2, self.target / norms, out=out).view(u.shape)


@register
@dataclass(frozen=True)
class ClipRMS(Primitive):
    """Adafactor's update clipping: ``u' = u / max(1, RMS(u) / threshold)`` (torch Adafactor ``d``)."""

    name = "clip_rms"
    positional = ("threshold",)

    threshold: float = 1.0

    def validate(self) -> None:
        check_finite(self.name, "threshold", self.threshold, positive=True)

    def partials(self, u: torch.Tensor, state: dict[str, torch.Tensor], ctx: Context) -> torch.Tensor | None:
        """On a shard: ``sum(u^2)``, its part of the whole tensor's norm."""
        return None if ctx.shard is None else square_sum(u)

    def apply(self, u: torch.Tensor, state: dict[str, torch.Tensor], ctx: Context) -> torch.Tensor:
        # The same arithmetic as torch Adafactor: the norm in fp32, the rest in Python floats.
        if ctx.sums is None:
            norm, numel = torch.linalg.vector_norm(u).item(), u.numel()
        else:  # the whole tensor's, from a shard's partial sums
            norm, numel = ctx.sums[0].sqrt().item(), math.prod(ctx.shard.shape)
        denom = max(1.0, norm / (numel ** 0.5 * self.threshold))
        return ctx.scaled(u, 1.0 / denom)

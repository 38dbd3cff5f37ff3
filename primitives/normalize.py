"""Normalization of the direction's size: to a target RMS or L2 norm, or clipped by RMS.

All act on the (rows, columns) view of the tensor (``primitives.base.matrix_shape``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from primitives.base import Context, Primitive, check_finite, matrix_shape, register

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

    def apply(self, u: torch.Tensor, state: dict[str, torch.Tensor], ctx: Context) -> torch.Tensor:
        if self.kind == "rms":
            rms = torch.linalg.vector_norm(u).div_(math.sqrt(u.numel()))
            return torch.mul(u, self.target / rms.clamp_(min=self.eps), out=ctx.buffer(u.shape, u.device))
        rows, cols = matrix_shape(tuple(u.shape))
        u2 = u.reshape(rows, cols)
        dim = 1 if self.kind == "row" else 0
        norms = torch.linalg.vector_norm(u2, dim=dim, keepdim=True).clamp_(min=self.eps)
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

    def apply(self, u: torch.Tensor, state: dict[str, torch.Tensor], ctx: Context) -> torch.Tensor:
        # The same arithmetic as torch Adafactor: the norm in fp32, the rest in Python floats.
        denom = max(1.0, torch.linalg.vector_norm(u).item() / (u.numel() ** 0.5 * self.threshold))
        return ctx.scaled(u, 1.0 / denom)

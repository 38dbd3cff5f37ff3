"""Orthogonalization by Newton-Schulz iteration (Muon), for 2-D tensors only.

``X <- G / max(||G||_F, eps)``, then ``steps`` times ``A = X X^T``, ``X <- a X + (b A + c A^2) X``
(on the wide orientation, ``rows <= cols``), the quintic of torch.optim.Muon / Keller Jordan's Muon.
Singular vectors are kept; singular values land in roughly [0.7, 1.2] rather than exactly 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from primitives.base import Context, Primitive, check_arg, check_finite, register

MUON_COEFFICIENTS = (3.4445, -4.775, 2.0315)
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def newton_schulz(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """Muon's quintic Newton-Schulz iteration on a 2-D ``g``, run in ``dtype``; returns ``dtype``."""
    a, b, c = coefficients
    x = g.to(dtype)
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, poly, x, beta=a)
    return x.T if tall else x


@register
@dataclass(frozen=True)
class Orthogonalize(Primitive):
    """``u' ~ U V^T`` for ``u = U S V^T``, by Muon's Newton-Schulz iteration (2-D tensors only).

    ``dtype=bfloat16`` (default) runs the iteration in bf16 as torch.optim.Muon does;
    ``dtype=float32`` runs it in fp32. The result is returned in fp32.
    """

    name = "orthogonalize"
    choices = {"dtype": tuple(DTYPES)}

    steps: int = 5
    coefficients: tuple[float, float, float] = MUON_COEFFICIENTS
    eps: float = 1e-7
    dtype: str = "bfloat16"

    def validate(self) -> None:
        n = self.name
        check_arg(n, "steps", self.steps,
                  isinstance(self.steps, int) and not isinstance(self.steps, bool) and 0 <= self.steps < 100,
                  "a whole number in [0, 100)")
        check_arg(n, "coefficients", self.coefficients,
                  isinstance(self.coefficients, tuple) and len(self.coefficients) == 3
                  and all(isinstance(v, float) and math.isfinite(v) for v in self.coefficients),
                  "three finite numbers (a, b, c)")
        check_finite(n, "eps", self.eps, positive=True)

    def check_shape(self, shape: tuple[int, ...]) -> None:
        check_arg(self.name, "parameter shape", tuple(shape), len(shape) == 2,
                  "2-D (a matrix); give 1-D and N-D parameters a chain without orthogonalize")

    def apply(self, u: torch.Tensor, state: dict[str, torch.Tensor], ctx: Context) -> torch.Tensor:
        # On a shard: gather the whole matrix (one all-gather of it), iterate, keep this rank's rows,
        # as torch's Muon under FSDP; every rank repeats the iteration on the whole matrix.
        whole = u if ctx.shard is None else ctx.shard.gather(u)
        out = newton_schulz(whole, self.coefficients, self.steps, self.eps, DTYPES[self.dtype]).float()
        return out if ctx.shard is None else ctx.shard.mine(out, u.shape[0])

"""Second moment: divide the direction by a running root-mean-square of the gradient.

``u' = u / (sqrt(v_hat) + eps)`` (``eps_mode=add``: Adam, RMSprop, Ember) or
``u' = u / max(sqrt(v_hat), eps)`` (``eps_mode=floor``: torch Adafactor's ``rsqrt(clamp(v, eps^2))``),
where ``v_hat`` estimates the per-entry mean of ``x^2`` (``x`` the raw gradient, or the incoming
direction with ``source=update``) on the (rows, columns) view of the tensor, by shape:

- ``full``: ``v <- beta2 v + (1 - beta2) x^2`` per entry (Adam's ``exp_avg_sq``)
- ``row``: ``r[i]``, an EMA of the row means of ``x^2``; ``v_hat[i, j] = r[i]`` (Adam-mini style)
- ``col``: ``c[j]``, an EMA of the column means; ``v_hat[i, j] = c[j]``
- ``factored``: ``v_hat[i, j] = r[i] c[j] / s`` with ``s`` the EMA of the global mean (Ember, and
  Adafactor, whose ``s`` is the row mean of ``r``: the same number); with ``eps_mode=floor`` the
  divisor is ``max(s, eps)``, as torch Adafactor
- ``scalar``: ``s``, one number per tensor (Adalayer)

``beta2`` is constant, or Adafactor's schedule ``beta2_t = 1 - t^beta2_decay`` when ``beta2_decay``
is given. Bias correction divides ``v`` by ``1 - beta2^t`` (``step``: the parameter's step count,
Adam and Ember), by ``1 - beta2^n[i]`` with ``n[i]`` the number of steps on which row ``i`` had a
non-zero ``x`` (``row``: one more number per row), or not at all (``none``). Under the Adafactor
schedule ``beta2_1 = 0``, so the estimate is unbiased from the first step and ``step`` is a no-op.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from primitives.base import Context, Primitive, StateSpec, check_arg, matrix_shape, register
from primitives.momentum import check_beta

SHAPES = ("full", "row", "col", "factored", "scalar")
EPS_MODES = ("add", "floor")
BIAS_CORRECTIONS = ("step", "row", "none")
SOURCES = ("grad", "update")
_DEFAULT_BETA2 = 0.999
_TINY = torch.finfo(torch.float32).tiny


def _one_of(choices: tuple[str, ...]) -> str:
    return f"one of {', '.join(choices)}"


@register
@dataclass(frozen=True)
class SecondMoment(Primitive):
    """Preconditioning by a running second moment of ``shape`` (module docstring)."""

    name = "second_moment"
    positional = ("shape",)

    shape: str = "full"
    beta2: float = _DEFAULT_BETA2
    beta2_decay: float | None = None
    eps: float = 1e-8
    eps_mode: str = "add"
    bias_correction: str = "step"
    source: str = "grad"

    def __post_init__(self) -> None:
        # Under the Adafactor schedule "step" and "none" are the same estimator: keep one spelling.
        if self.beta2_decay is not None and self.bias_correction == "none":
            object.__setattr__(self, "bias_correction", "step")
        super().__post_init__()

    @property
    def homogeneous(self) -> bool:  # type: ignore[override]
        return self.source == "grad"

    def validate(self) -> None:
        n = self.name
        check_arg(n, "shape", self.shape, self.shape in SHAPES, _one_of(SHAPES))
        check_beta(n, "beta2", self.beta2)
        if self.beta2_decay is not None:
            check_arg(n, "beta2_decay", self.beta2_decay,
                      isinstance(self.beta2_decay, float) and -math.inf < self.beta2_decay <= 0.0,
                      "a number <= 0 (Adafactor: -0.8), or left out for a constant beta2")
            check_arg(n, "beta2", self.beta2, self.beta2 == _DEFAULT_BETA2,
                      "left out when beta2_decay is given (the schedule replaces it)")
        check_arg(n, "eps", self.eps, isinstance(self.eps, float) and 0.0 <= self.eps < math.inf,
                  "a finite number >= 0")
        check_arg(n, "eps_mode", self.eps_mode, self.eps_mode in EPS_MODES, _one_of(EPS_MODES))
        check_arg(n, "bias_correction", self.bias_correction, self.bias_correction in BIAS_CORRECTIONS,
                  _one_of(BIAS_CORRECTIONS))
        check_arg(n, "source", self.source, self.source in SOURCES, _one_of(SOURCES))
        if self.bias_correction == "row":
            check_arg(n, "bias_correction", "row", self.shape in ("full", "row", "factored"),
                      "step or none with shape=col or shape=scalar (they have no rows)")
            check_arg(n, "bias_correction", "row", self.beta2_decay is None,
                      "step or none under the beta2_decay schedule")

    def state_specs(self, shape: tuple[int, ...]) -> list[StateSpec]:
        rows, cols = matrix_shape(tuple(shape))
        specs = {
            "full": [StateSpec("v", tuple(shape))],
            "row": [StateSpec("row", (rows,))],
            "col": [StateSpec("col", (cols,))],
            "factored": [StateSpec("row", (rows,)), StateSpec("col", (cols,)), StateSpec("total", ())],
            "scalar": [StateSpec("total", ())],
        }[self.shape]
        if self.bias_correction == "row":
            specs.append(StateSpec("count", (rows,)))
        return specs

    def apply(self, u: torch.Tensor, state: dict[str, torch.Tensor], ctx: Context) -> torch.Tensor:
        x = ctx.grad if self.source == "grad" else u
        beta2 = self._beta2(ctx.step)
        rows, cols = matrix_shape(tuple(u.shape))
        x2 = x.reshape(rows, cols)
        if self.bias_correction == "row":
            state["count"].add_(torch.linalg.vector_norm(x2, ord=math.inf, dim=1) > 0)
        self._accumulate(x, x2, state, beta2)
        if self.shape == "full" and self.bias_correction != "row":
            return self._divide_full(u, state["v"], beta2, ctx)
        root = self._root(state, beta2, ctx.step, rows, cols)
        denom = root.add_(self.eps) if self.eps_mode == "add" else root.clamp_(min=self.eps)
        return (u.reshape(rows, cols) / denom).reshape(u.shape)

    def _beta2(self, step: int) -> float:
        if self.beta2_decay is None:
            return self.beta2
        return 1.0 - step**self.beta2_decay

    def _correction(self, beta2: float, step: int) -> float:
        """``1 - beta2^t``, or 1 where there is nothing to correct."""
        if self.bias_correction != "step" or self.beta2_decay is not None:
            return 1.0
        return 1.0 - beta2**step

    def _accumulate(self, x: torch.Tensor, x2: torch.Tensor, state: dict[str, torch.Tensor],
                    beta2: float) -> None:
        """Move the running statistics of this shape towards this step's ``x^2``."""
        if self.shape == "full":
            state["v"].mul_(beta2).addcmul_(x, x, value=1.0 - beta2)
            return
        rows, cols = x2.shape
        if self.shape == "scalar":
            state["total"].lerp_(torch.linalg.vector_norm(x2).square_().div_(rows * cols), 1.0 - beta2)
            return
        if self.shape in ("row", "factored"):
            row_mean = torch.linalg.vector_norm(x2, dim=1).square_().div_(cols)
            state["row"].lerp_(row_mean, 1.0 - beta2)
        if self.shape == "factored":
            state["total"].lerp_(row_mean.mean(), 1.0 - beta2)
        if self.shape in ("col", "factored"):
            col_mean = torch.linalg.vector_norm(x2, dim=0).square_().div_(rows)
            state["col"].lerp_(col_mean, 1.0 - beta2)

    def _divide_full(self, u: torch.Tensor, v: torch.Tensor, beta2: float, ctx: Context) -> torch.Tensor:
        """``u / (sqrt(v / bc) + eps)`` computed as ``sqrt(bc) * u / (sqrt(v) + eps sqrt(bc))``.

        That is one pass fewer over the tensor (as torch Adam's own arithmetic would need), and the
        scalar ``sqrt(bc)`` can ride on the step size.
        """
        bc_sqrt = math.sqrt(self._correction(beta2, ctx.step))
        root = v.sqrt()
        eps = self.eps * bc_sqrt
        denom = root.add_(eps) if self.eps_mode == "add" else root.clamp_(min=eps)
        return ctx.scaled(torch.div(u, denom, out=denom), bc_sqrt)

    def _root(self, state: dict[str, torch.Tensor], beta2: float, step: int, rows: int,
              cols: int) -> torch.Tensor:
        """``sqrt(v_hat)`` as a new tensor broadcastable to the (rows, columns) view."""
        bc = self._correction(beta2, step)
        if self.shape == "scalar":
            return state["total"].div(bc).sqrt_()
        if self.shape == "col":
            return state["col"].div(bc).sqrt_().unsqueeze(0)
        # 1 - beta2^n[i] per row; a row never seen has v = 0 and is divided by 1 instead of 0.
        per_row = (torch.pow(beta2, state["count"].clamp(min=1.0)).neg_().add_(1.0).unsqueeze(1)
                   if self.bias_correction == "row" else bc)
        if self.shape == "full":
            return state["v"].view(rows, cols).div(per_row).sqrt_()
        row = state["row"].unsqueeze(1).div(per_row)
        if self.shape == "row":
            return row.sqrt_()
        floor = self.eps if self.eps_mode == "floor" else _TINY
        row.div_(state["total"].clamp(min=floor)).sqrt_()
        return row * state["col"].sqrt().unsqueeze(0)

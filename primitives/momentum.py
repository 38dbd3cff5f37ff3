"""Momentum: a running combination of past directions (the first moment).

Kinds, each matching the reference it is named after, to the operation:
- ``ema``: ``m <- beta m + (1 - beta) u`` (``lerp``, as torch Adam and Muon). ``u' = m / (1 - beta^t)``
  with bias correction (Adam, the default), ``u' = m`` without it. With ``nesterov=True`` (Muon,
  never bias-corrected): ``u' = (1 - beta) u + beta m``.
- ``heavy_ball``: torch SGD momentum, ``m <- beta m + (1 - dampening) u`` (``m <- u`` on the first
  step), ``u' = m``; with ``nesterov=True`` (needs ``dampening=0``): ``u' = u + beta m``.
- ``lion``: ``u' = beta m + (1 - beta) u`` with the stored ``m`` *before* it moves, then
  ``m <- beta2 m + (1 - beta2) u`` (lion-pytorch's operations; the sign is a separate primitive).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from primitives.base import Context, Primitive, PureContext, StateSpec, check_arg, register

KINDS = ("ema", "heavy_ball", "lion")


def check_beta(primitive: str, arg: str, value: float) -> None:
    """The house check for a decay rate: a number in [0, 1)."""
    check_arg(primitive, arg, value, isinstance(value, float) and 0.0 <= value < 1.0, "a number in [0, 1)")


@register
@dataclass(frozen=True)
class Momentum(Primitive):
    """First moment of the direction: ``ema`` (Adam, Muon), ``heavy_ball`` (torch SGD), ``lion``.

    ``bias_correction`` applies to ``ema`` only; ``None`` means the kind's own convention (``ema``:
    on, as Adam; ``ema`` with ``nesterov``: off, as Muon). Writing the convention explicitly is
    normalized to ``None``, so equal behaviour gives equal chains and one canonical text.
    """

    name = "momentum"
    positional = ("beta",)
    choices = {"kind": KINDS}

    beta: float = 0.9
    kind: str = "ema"
    nesterov: bool = False
    dampening: float = 0.0
    beta2: float | None = None
    bias_correction: bool | None = None

    def __post_init__(self) -> None:
        if self.bias_correction is (self.kind == "ema" and not self.nesterov):
            object.__setattr__(self, "bias_correction", None)
        super().__post_init__()

    def validate(self) -> None:
        check_beta(self.name, "beta", self.beta)
        check_arg(self.name, "nesterov", self.nesterov, isinstance(self.nesterov, bool), "True or False")
        heavy_ball_dampening = self.kind == "heavy_ball" and 0.0 <= self.dampening <= 1.0
        check_arg(self.name, "dampening", self.dampening,
                  isinstance(self.dampening, float) and (self.dampening == 0.0 or heavy_ball_dampening),
                  "0 (or, with kind=heavy_ball, a number in [0, 1])")
        if self.kind == "lion":
            check_arg(self.name, "beta2", self.beta2, self.beta2 is not None, "given with kind=lion")
            check_beta(self.name, "beta2", self.beta2)
            check_arg(self.name, "nesterov", self.nesterov, not self.nesterov, "False with kind=lion")
        else:
            check_arg(self.name, "beta2", self.beta2, self.beta2 is None, "left out unless kind=lion")
        check_arg(
            self.name, "bias_correction", self.bias_correction,
            self.bias_correction is None or self.kind == "ema",
            "left out unless kind=ema",
        )
        if self.kind == "ema" and self.nesterov:
            check_arg(self.name, "bias_correction", self.bias_correction, self.bias_correction is None,
                      "left out with nesterov=True (Muon's form has none)")
        if self.kind == "heavy_ball" and self.nesterov:
            check_arg(self.name, "dampening", self.dampening, self.dampening == 0.0,
                      "0 with nesterov=True (as torch SGD)")

    def state_specs(self, shape: tuple[int, ...]) -> list[StateSpec]:
        return [StateSpec("m", tuple(shape))]

    def apply(self, u: torch.Tensor, state: dict[str, torch.Tensor], ctx: Context) -> torch.Tensor:
        m = state["m"]
        if self.kind == "lion":
            out = torch.mul(m, self.beta, out=ctx.buffer(u.shape, u.device)).add_(u, alpha=1.0 - self.beta)
            m.mul_(self.beta2).add_(u, alpha=1.0 - self.beta2)
            return out
        if self.kind == "heavy_ball":
            if ctx.step == 1:
                m.copy_(u)
            else:
                m.mul_(self.beta).add_(u, alpha=1.0 - self.dampening)
            if self.nesterov:
                return torch.add(u, m, alpha=self.beta, out=ctx.buffer(u.shape, u.device))
            return m
        m.lerp_(u, 1.0 - self.beta)
        if self.nesterov:
            return torch.lerp(u, m, self.beta, out=ctx.buffer(u.shape, u.device))
        if self.bias_correction is False:
            return m
        return ctx.scaled(m, 1.0 / (1.0 - self.beta**ctx.step))

    def apply_many(self, us: list[torch.Tensor], states: list[dict[str, torch.Tensor]],
                   ctxs: list[Context]) -> list[torch.Tensor]:
        """The same operations as :meth:`apply`, as ``torch._foreach_*`` over the group."""
        ms = [s["m"] for s in states]
        if self.kind == "lion":
            outs = torch._foreach_mul(ms, self.beta)
            torch._foreach_add_(outs, us, alpha=1.0 - self.beta)
            torch._foreach_mul_(ms, self.beta2)
            torch._foreach_add_(ms, us, alpha=1.0 - self.beta2)
            return outs
        if self.kind == "heavy_ball":
            if len({c.step == 1 for c in ctxs}) > 1:  # buffers starting while others run
                return super().apply_many(us, states, ctxs)
            if ctxs[0].step == 1:
                torch._foreach_copy_(ms, us)
            else:
                torch._foreach_mul_(ms, self.beta)
                torch._foreach_add_(ms, us, alpha=1.0 - self.dampening)
            return torch._foreach_add(us, ms, alpha=self.beta) if self.nesterov else ms
        torch._foreach_lerp_(ms, us, 1.0 - self.beta)
        if self.nesterov:
            return torch._foreach_lerp(us, ms, self.beta)
        if self.bias_correction is False:
            return ms
        return [c.scaled(m, 1.0 / (1.0 - self.beta**c.step)) for m, c in zip(ms, ctxs, strict=True)]

    def scalars(self, step: int, lr: float) -> dict[str, float]:
        out = {"beta": self.beta, "rate": 1.0 - self.beta}
        if self.kind == "lion":
            out |= {"beta2": self.beta2, "rate2": 1.0 - self.beta2}
        elif self.kind == "heavy_ball":
            out |= {"first": float(step == 1), "take": 1.0 - self.dampening}
        elif not self.nesterov and self.bias_correction is not False:
            out["correction"] = 1.0 / (1.0 - self.beta**step)
        return out

    def pure(self, u: torch.Tensor, state: dict[str, torch.Tensor], ctx: PureContext,
             hp: dict[str, torch.Tensor]) -> torch.Tensor:
        m, beta = state["m"], hp["beta"]
        if self.kind == "lion":
            out = m * beta + hp["rate"] * u
            m.copy_(m * hp["beta2"] + hp["rate2"] * u)
            return out
        if self.kind == "heavy_ball":
            m.copy_(torch.where(hp["first"] > 0.0, u, m * beta + hp["take"] * u))
            return u + beta * m if self.nesterov else m
        # lerp written out: compiled, torch.lerp picks its formula by the weight for every vector
        # of elements; this is the formula it picks for weights below 0.5 (every beta above 0.5)
        m.copy_(m + hp["rate"] * (u - m))
        if self.nesterov:
            return u + beta * (m - u)
        if self.bias_correction is False:
            return m
        return ctx.scaled(m, hp["correction"])

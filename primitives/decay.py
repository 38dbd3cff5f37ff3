"""Weight decay, decoupled (AdamW, Lion, Muon) or coupled as an L2 term (torch SGD, Adam, RMSprop)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from primitives.base import Context, Primitive, PureContext, check_finite, register


@register
@dataclass(frozen=True)
class WeightDecay(Primitive):
    """Decoupled weight decay: ``p <- p (1 - lr * rate)``, in place, before the update (torch AdamW).

    It scales by the group's ``lr``, not by the step size that scaling primitives adjust.
    """

    name = "weight_decay"
    positional = ("rate",)
    homogeneous = True
    reads_param = True

    rate: float = 0.01

    def validate(self) -> None:
        check_finite(self.name, "rate", self.rate, positive=False)

    def apply(self, u: torch.Tensor, state: dict[str, torch.Tensor], ctx: Context) -> torch.Tensor:
        # When nothing later reads the parameter the decay waits for the update (Context.update):
        # the same two roundings, one pass over the parameter fewer.
        if self.rate == 0.0:
            return u
        if ctx.param_settled:
            ctx.param_scale = 1.0 - ctx.lr * self.rate
        else:
            ctx.param.mul_(1.0 - ctx.lr * self.rate)
        return u

    def apply_many(self, us: list[torch.Tensor], states: list[dict[str, torch.Tensor]],
                   ctxs: list[Context]) -> list[torch.Tensor]:
        if self.rate == 0.0:
            return us
        if all(c.param_settled for c in ctxs):
            for c in ctxs:
                c.param_scale = 1.0 - c.lr * self.rate
        else:
            torch._foreach_mul_([c.param for c in ctxs], [1.0 - c.lr * self.rate for c in ctxs])
        return us

    def scalars(self, step: int, lr: float) -> dict[str, float]:
        return {"scale": 1.0 - lr * self.rate}

    def pure(self, u: torch.Tensor, state: dict[str, torch.Tensor], ctx: PureContext,
             hp: dict[str, torch.Tensor]) -> torch.Tensor:
        ctx.param = ctx.param * hp["scale"]
        return u


@register
@dataclass(frozen=True)
class L2(Primitive):
    """Coupled weight decay: the gradient of ``rate/2 ||p||^2`` joins the gradient.

    ``u' = u + rate p``, and later statistics read ``g + rate p`` as their raw gradient (torch Adam's
    ``weight_decay``: its second moment is of the decayed gradient).
    """

    name = "l2"
    positional = ("rate",)
    reads_param = True

    rate: float = 0.01

    def validate(self) -> None:
        check_finite(self.name, "rate", self.rate, positive=False)

    def apply(self, u: torch.Tensor, state: dict[str, torch.Tensor], ctx: Context) -> torch.Tensor:
        if self.rate == 0.0:
            return u
        grad = torch.add(ctx.grad, ctx.param, alpha=self.rate, out=ctx.buffer(u.shape, u.device))
        if u is not ctx.grad:
            u = torch.add(u, ctx.param, alpha=self.rate, out=ctx.buffer(u.shape, u.device))
        else:
            u = grad
        ctx.grad = grad
        return u

    def pure(self, u: torch.Tensor, state: dict[str, torch.Tensor], ctx: PureContext,
             hp: dict[str, torch.Tensor]) -> torch.Tensor:
        grad = ctx.grad + hp["rate"] * ctx.param
        u = grad if u is ctx.grad else u + hp["rate"] * ctx.param
        ctx.grad = grad
        return u

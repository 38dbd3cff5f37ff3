"""Sign: ``u' = sign(u)``, entries in {-1, 0, 1} (signSGD, Signum and Lion end with it)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from primitives.base import Context, Primitive, PureContext, register


@register
@dataclass(frozen=True)
class Sign(Primitive):
    """``u' = sign(u)``; zero stays zero."""

    name = "sign"

    def apply(self, u: torch.Tensor, state: dict[str, torch.Tensor], ctx: Context) -> torch.Tensor:
        return torch.sign(u, out=ctx.buffer(u.shape, u.device))

    def apply_many(self, us: list[torch.Tensor], states: list[dict[str, torch.Tensor]],
                   ctxs: list[Context]) -> list[torch.Tensor]:
        return torch._foreach_sign(us)

    def pure(self, u: torch.Tensor, state: dict[str, torch.Tensor], ctx: PureContext,
             hp: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.sign(u)

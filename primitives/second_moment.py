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

from primitives.base import (
    Context,
    Primitive,
    PureContext,
    StateSpec,
    check_arg,
    check_finite,
    matrix_shape,
    register,
    square_sum,
)
from primitives.momentum import check_beta

SHAPES = ("full", "row", "col", "factored", "scalar")
EPS_MODES = ("add", "floor")
BIAS_CORRECTIONS = ("step", "row", "none")
SOURCES = ("grad", "update")
_DEFAULT_BETA2 = 0.999
_TINY = torch.finfo(torch.float32).tiny
_BLOCK_ELEMENTS = 1 << 18


@register
@dataclass(frozen=True)
class SecondMoment(Primitive):
    """Divide by the root of a running second moment: per entry, row, column, row x column, tensor."""

    name = "second_moment"
    positional = ("shape",)
    choices = {"shape": SHAPES, "eps_mode": EPS_MODES, "bias_correction": BIAS_CORRECTIONS, "source": SOURCES}

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
        check_beta(n, "beta2", self.beta2)
        if self.beta2_decay is not None:
            check_arg(n, "beta2_decay", self.beta2_decay,
                      isinstance(self.beta2_decay, float) and -math.inf < self.beta2_decay <= 0.0,
                      "a number <= 0 (Adafactor: -0.8), or left out for a constant beta2")
            check_arg(n, "beta2", self.beta2, self.beta2 == _DEFAULT_BETA2,
                      "left out when beta2_decay is given (the schedule replaces it)")
        check_finite(n, "eps", self.eps, positive=False)
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
        beta2 = self._beta2(ctx.step)
        x = ctx.grad if self.source == "grad" else u
        rows, cols = matrix_shape(tuple(u.shape))
        seen_cut, sums = self._seen_cut(ctx)
        if self.bias_correction == "row":
            seen = seen_cut if seen_cut is not None else (
                torch.linalg.vector_norm(x.reshape(rows, cols), ord=math.inf, dim=1) > 0)
            state["count"].add_(seen)
        if self.shape == "full":
            state["v"].mul_(beta2).addcmul_(x, x, value=1.0 - beta2)
            return self._divide_full(u, state, beta2, ctx)
        touched = None
        if ctx.shard is not None:
            self._accumulate_shard(x.reshape(rows, cols), state, 1.0 - beta2, ctx, sums)
        else:
            # Rows of a zero direction need no update (exactly: p - s * 0 = p) unless a decay waits.
            sparse = (self.shape == "factored" and u is ctx.grad and ctx.final and ctx.param_scale == 1.0
                      and ctx.param.is_contiguous())
            touched = self._accumulate(x.reshape(rows, cols), state, beta2, ctx, sparse)
        u2 = u.reshape(rows, cols)
        if self.shape == "factored":
            return self._divide_factored(u2, state, beta2, ctx, touched).view(u.shape)
        out = ctx.buffer((rows, cols), u.device)
        torch.div(u2, self._eps(self._small_root(state, beta2, ctx.step), self.eps), out=out)
        return out.view(u.shape)

    def partials(self, u: torch.Tensor, state: dict[str, torch.Tensor], ctx: Context) -> torch.Tensor | None:
        """On a shard, what is summed over the group, in order: whether the block has an entry other than
        0 (``bias_correction=row`` on a vector, whose one row is cut); the sums of ``x^2`` across the
        cut axis (the column sums of a row block; not for ``full``, ``scalar``, or a statistic the
        block holds whole, as ``row`` of a row block); the total (``factored``, ``scalar``)."""
        if ctx.shard is None:
            return None
        cut = ctx.shard.split
        seen = self.bias_correction == "row" and cut == 1
        across = self.shape in ("factored", "row" if cut == 1 else "col")
        if not (seen or across or self.shape == "scalar"):
            return None
        x = ctx.grad if self.source == "grad" else u
        parts = [(x != 0).any().float().reshape(1)] if seen else []  # NaN counts, as in apply
        if across:  # (and the total of a factored moment: the sum of these sums)
            sums = torch.linalg.vector_norm(x.reshape(matrix_shape(tuple(x.shape))), dim=cut).square_()
            parts += [sums, sums.sum().reshape(1)] if self.shape == "factored" else [sums]
        if self.shape == "scalar":
            parts.append(square_sum(x))
        return torch.cat(parts)

    def _seen_cut(self, ctx: Context) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``ctx.sums`` split: (was a vector's cut row seen on any rank, as a (1,) bool; the rest)."""
        if ctx.sums is None or not (self.bias_correction == "row" and ctx.shard.split == 1):
            return None, ctx.sums
        return ctx.sums[:1] > 0, (ctx.sums[1:] if len(ctx.sums) > 1 else None)

    def _accumulate_shard(self, x2: torch.Tensor, state: dict[str, torch.Tensor], rate: float,
                          ctx: Context, sums: torch.Tensor | None) -> None:
        """:meth:`_accumulate` on a block: sums across the cut and the total from ``sums`` (the group's
        sums of :meth:`partials`), the others from the block; means over the whole tensor's shape."""
        rows, cols = matrix_shape(ctx.shard.shape)
        if self.shape in ("factored", "scalar"):
            state["total"].lerp_(sums[-1] / (rows * cols), rate)
        if self.shape == "scalar":
            return
        across = None if sums is None else sums[: len(sums) - (self.shape == "factored")]
        cut = ctx.shard.split
        if self.shape in ("row", "factored"):
            row_sq = across if cut == 1 else torch.linalg.vector_norm(x2, dim=1).square_()
            state["row"].lerp_(row_sq / cols, rate)
        if self.shape in ("col", "factored"):
            col_sq = across if cut == 0 else torch.linalg.vector_norm(x2, dim=0).square_()
            state["col"].lerp_(col_sq / rows, rate)

    def apply_many(self, us: list[torch.Tensor], states: list[dict[str, torch.Tensor]],
                   ctxs: list[Context]) -> list[torch.Tensor]:
        """Adam's full second moment with ``torch._foreach_*``; the other shapes one by one."""
        if self.shape != "full" or self.bias_correction == "row":
            return super().apply_many(us, states, ctxs)
        xs = [c.grad for c in ctxs] if self.source == "grad" else us
        vs = [s["v"] for s in states]
        beta2s = [self._beta2(c.step) for c in ctxs]
        torch._foreach_mul_(vs, beta2s)
        torch._foreach_addcmul_(vs, xs, xs, [1.0 - b for b in beta2s])
        factors = [math.sqrt(self._correction(b, c.step)) for b, c in zip(beta2s, ctxs, strict=True)]
        dens = torch._foreach_sqrt(vs)
        if self.eps_mode == "add":
            torch._foreach_add_(dens, [self.eps * f for f in factors])
        else:
            torch._foreach_clamp_min_(dens, [self.eps * f for f in factors])
        outs = torch._foreach_div(us, dens)
        return [c.scaled(o, f) for o, c, f in zip(outs, ctxs, factors, strict=True)]

    @property
    def fusable(self) -> bool:  # type: ignore[override]
        return self.bias_correction != "row"

    def scalars(self, step: int, lr: float) -> dict[str, float]:
        beta2 = self._beta2(step)
        correction = self._correction(beta2, step)
        factor = math.sqrt(correction)
        return {"beta2": beta2, "rate": 1.0 - beta2, "correction": correction, "factor": factor,
                "eps": self.eps, "eps_factor": self.eps * factor}

    def pure(self, u: torch.Tensor, state: dict[str, torch.Tensor], ctx: PureContext,
             hp: dict[str, torch.Tensor]) -> torch.Tensor:
        """:meth:`apply` on tensors: the statistics, then ``u / den`` (see the module docstring)."""
        x = ctx.grad if self.source == "grad" else u
        rows, cols = matrix_shape(tuple(u.shape))
        if self.shape == "full":
            state["v"].copy_(state["v"] * hp["beta2"] + hp["rate"] * x * x)
            den = self._pure_eps(state["v"].sqrt(), hp["eps_factor"])
            return ctx.scaled(u / den, hp["factor"])
        if self.shape == "factored":
            floor = self.eps if self.eps_mode == "floor" else _TINY
            row, col = torch.ops.optispace.factored_roots(x.reshape(rows, cols), state["row"], state["col"],
                                                          state["total"], hp["rate"], hp["correction"], floor)
            return (u.reshape(rows, cols) / self._pure_eps(row * col, hp["eps"])).view(u.shape)
        x2 = x.reshape(rows, cols).square()
        row_mean = x2.sum(dim=1) / cols
        if self.shape == "row":
            state["row"].lerp_(row_mean, hp["rate"])
        if self.shape == "col":
            state["col"].lerp_(x2.sum(dim=0) / rows, hp["rate"])
        if self.shape == "scalar":
            state["total"].lerp_(row_mean.mean(), hp["rate"])  # the mean of the row means, as apply()
        if self.shape == "row":
            root = (state["row"] / hp["correction"]).sqrt().unsqueeze(1)
        elif self.shape == "col":
            root = (state["col"] / hp["correction"]).sqrt().unsqueeze(0)
        else:
            root = (state["total"] / hp["correction"]).sqrt()
        return (u.reshape(rows, cols) / self._pure_eps(root, hp["eps"])).view(u.shape)

    def _pure_eps(self, root: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``root + eps`` or ``max(root, eps)``, out of place."""
        return root + eps if self.eps_mode == "add" else torch.maximum(root, eps)

    def _beta2(self, step: int) -> float:
        if self.beta2_decay is None:
            return self.beta2
        return 1.0 - step**self.beta2_decay

    def _correction(self, beta2: float, step: int) -> float:
        """``1 - beta2^t``, or 1 where there is nothing to correct."""
        if self.bias_correction != "step" or self.beta2_decay is not None:
            return 1.0
        return 1.0 - beta2**step

    def _row_correction(self, state: dict[str, torch.Tensor], beta2: float,
                        step: int) -> torch.Tensor | float:
        """Per row ``1 - beta2^n[i]`` (a row never seen has ``v = 0``: divided by 1), or the scalar."""
        if self.bias_correction != "row":
            return self._correction(beta2, step)
        return torch.pow(beta2, state["count"].clamp(min=1.0)).neg_().add_(1.0).unsqueeze(1)

    def _eps(self, root: torch.Tensor, eps: float) -> torch.Tensor:
        """``root + eps`` or ``max(root, eps)``, in place."""
        return root.add_(eps) if self.eps_mode == "add" else root.clamp_(min=eps)

    def _accumulate(self, x2: torch.Tensor, state: dict[str, torch.Tensor], beta2: float,
                    ctx: Context, touched: bool = False) -> torch.Tensor | None:
        """Move the running statistics of the row, col, factored and scalar shapes towards ``x^2``.

        With ``touched``, also return which rows of ``x2`` have an entry other than 0 (see
        :func:`square_sums`).
        """
        rows, cols = x2.shape
        seen = None
        if self.shape == "scalar":
            state["total"].lerp_(torch.linalg.vector_norm(x2).square_().div_(rows * cols), 1.0 - beta2)
            return seen
        if self.shape == "factored":
            return factored_statistics(x2, state, 1.0 - beta2, ctx, touched)
        if self.shape == "row":
            row_sq = torch.linalg.vector_norm(x2, dim=1).square_()
        else:
            row_sq, col_sq, seen = square_sums(x2, ctx, touched)
        if self.shape == "row":
            state["row"].lerp_(row_sq.div_(cols), 1.0 - beta2)
        else:
            state["col"].lerp_(col_sq.div_(rows), 1.0 - beta2)
        return seen

    def _small_root(self, state: dict[str, torch.Tensor], beta2: float, step: int) -> torch.Tensor:
        """``sqrt(v_hat)`` of the row, col and scalar shapes, broadcastable to (rows, columns)."""
        if self.shape == "scalar":
            return state["total"].div(self._correction(beta2, step)).sqrt_()
        if self.shape == "col":
            return state["col"].div(self._correction(beta2, step)).sqrt_().unsqueeze(0)
        return state["row"].unsqueeze(1).div(self._row_correction(state, beta2, step)).sqrt_()

    def _divide_full(self, u: torch.Tensor, state: dict[str, torch.Tensor], beta2: float,
                     ctx: Context) -> torch.Tensor:
        """``u / (sqrt(v_hat) + eps)`` in the tensor's own shape, block by block of rows.

        Corrected by the step, it is ``sqrt(bc) * u / (sqrt(v) + eps sqrt(bc))``: a pass fewer, and
        the scalar ``sqrt(bc)`` can ride on the step size. Each block's denominator is made,
        shifted and divided while it is still in cache.
        """
        v, eps, factor = state["v"], self.eps, 1.0
        per_row = self._row_correction(state, beta2, ctx.step)
        if isinstance(per_row, float):
            factor = math.sqrt(per_row)
            eps *= factor
        else:  # one number per row of the (rows, columns) view, shaped to broadcast against v
            per_row = per_row.sqrt_().view(-1, *[1] * (v.ndim - 1)) if v.ndim >= 2 else per_row.view(())
        out = ctx.buffer(tuple(u.shape), u.device)
        for block in row_blocks(*matrix_shape(tuple(u.shape)), u.device):
            den = torch.sqrt(_part(v, block), out=_part(out, block))
            if not isinstance(per_row, float):
                den.div_(_part(per_row, block))
            torch.div(_part(u, block), self._eps(den, eps), out=den)
        return ctx.scaled(out, factor)

    def _divide_factored(self, u2: torch.Tensor, state: dict[str, torch.Tensor], beta2: float,
                         ctx: Context, touched: torch.Tensor | None) -> torch.Tensor:
        """``u / (a[i] b[j] + eps)`` with ``a b = sqrt(r c / s)``, block by block of rows.

        The second of two passes over the gradient (the first made the row and column sums). As
        the last primitive it also makes the update block by block (``ctx.final``), so the
        direction never exists whole: the pass reads ``u`` and the parameter and writes the
        parameter, and its scratch is one block. ``touched`` (rows whose ``u`` is not all zero,
        given when no decay waits): when fewer than half the rows are touched, only those are
        updated, a block of them at a time; the others are left alone, since their update
        ``p - s * 0 / den`` is ``p`` exactly (their statistics have already decayed).
        """
        floor = self.eps if self.eps_mode == "floor" else _TINY
        row, col = factored_roots(state, self._row_correction(state, beta2, ctx.step), floor)
        some = None if touched is None else touched.nonzero().squeeze(1)
        if some is not None and 2 * some.numel() < u2.shape[0]:
            self._update_rows(u2, row, col, some, ctx)
            ctx.applied = True
            return u2
        blocks = row_blocks(*u2.shape, u2.device)
        fuse = ctx.final and ctx.param.is_contiguous()
        out = ctx.buffer(_part(u2, blocks[0]).shape if fuse else u2.shape, u2.device)
        for block in blocks:
            part = _part(u2, block)
            den = torch.mul(_part(row, block), col, out=out[: part.shape[0]] if fuse else _part(out, block))
            torch.div(part, self._eps(den, self.eps), out=den)
            if fuse:
                ctx.update(_part(ctx.param.view(u2.shape), block), den)
        ctx.applied = fuse
        return u2 if fuse else out

    def _update_rows(self, u2: torch.Tensor, row: torch.Tensor, col: torch.Tensor, some: torch.Tensor,
                     ctx: Context) -> None:
        """The factored update of rows ``some`` only: the same operations, on those rows gathered."""
        param = ctx.param.view(u2.shape)
        step = max(1, _BLOCK_ELEMENTS // u2.shape[1])
        for lo in range(0, some.numel(), step):
            index = some[lo: lo + step]
            shape = (index.numel(), u2.shape[1])
            den = torch.mul(row.index_select(0, index), col, out=ctx.buffer(shape, u2.device))
            torch.div(u2.index_select(0, index), self._eps(den, self.eps), out=den)
            rows = torch.index_select(param, 0, index, out=ctx.buffer(shape, u2.device))
            ctx.update(rows, den)
            param.index_copy_(0, index, rows)


def _part(t: torch.Tensor, block: slice | None) -> torch.Tensor:
    """Rows ``block`` of ``t`` (along its first dimension), or all of ``t`` for ``None``."""
    return t if block is None else t[block]


def row_blocks(rows: int, cols: int, device: torch.device) -> list[slice | None]:
    """Slices of rows small enough to stay in a CPU cache (about 1 MiB); ``[None]``: all at once.

    Several blocks only happen for CPU tensors of more than one row, which have 2 or more
    dimensions, so a block of rows of the (rows, columns) view is a slice of the first dimension.
    """
    step = max(1, _BLOCK_ELEMENTS // max(1, cols))  # a block of an empty vector has no columns
    if device.type != "cpu" or rows <= step:
        return [None]
    return [slice(lo, min(lo + step, rows)) for lo in range(0, rows, step)]


def square_sums(x2: torch.Tensor, ctx: Context | None,
                touched: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Row sums and column sums of ``x2 ** 2`` in one pass over ``x2`` (squares made per block).

    With ``touched``, also which rows have an entry other than 0 (NaN included): a row with a
    positive sum has one; a row whose sum is 0 may still have entries whose squares underflowed,
    so its largest and smallest entries decide, read while its block is in cache.
    """
    rows, cols = x2.shape
    row_sq = torch.empty(rows, device=x2.device)
    col_sq = torch.zeros(cols, device=x2.device)
    seen = torch.ones(rows, dtype=torch.bool, device=x2.device) if touched else None
    blocks = row_blocks(rows, cols, x2.device)
    shape = _part(x2, blocks[0]).shape
    scratch = torch.empty(shape, device=x2.device) if ctx is None else ctx.buffer(shape, x2.device)
    for block in blocks:
        part = _part(x2, block)
        sq = torch.square(part, out=scratch[: part.shape[0]])
        torch.sum(sq, dim=1, out=_part(row_sq, block))
        col_sq.add_(sq.sum(dim=0))
        if seen is not None and bool((_part(row_sq, block) == 0).any()):
            _part(seen, block).copy_(torch.amax(part, dim=1).ne(0) | torch.amin(part, dim=1).ne(0))
    return row_sq, col_sq, seen


def factored_statistics(x2: torch.Tensor, state: dict[str, torch.Tensor], rate: float | torch.Tensor,
                        ctx: Context | None, touched: bool = False) -> torch.Tensor | None:
    """The first pass of ``factored``: ``row``, ``col`` and ``total`` move by ``rate`` towards the row,
    column and global means of ``x2 ** 2`` (one pass over ``x2``); returns :func:`square_sums`' rows."""
    rows, cols = x2.shape
    row_sq, col_sq, seen = square_sums(x2, ctx, touched)
    state["row"].lerp_(row_sq.div_(cols), rate)
    state["total"].lerp_(row_sq.mean(), rate)
    state["col"].lerp_(col_sq.div_(rows), rate)
    return seen


def factored_roots(state: dict[str, torch.Tensor], correction: float | torch.Tensor,
                   floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``a`` (rows x 1) and ``b`` (1 x columns) with ``a[i] b[j] = sqrt(r[i] c[j] / s)``, ``r`` corrected."""
    row = state["row"].unsqueeze(1).div(correction)
    row = row.div_(state["total"].clamp(min=floor)).sqrt_()
    return row, state["col"].sqrt().unsqueeze(0)


@torch.library.custom_op("optispace::factored_roots", mutates_args=("row", "col", "total"))
def _factored_roots_op(x2: torch.Tensor, row: torch.Tensor, col: torch.Tensor, total: torch.Tensor,
                       rate: torch.Tensor, correction: torch.Tensor,
                       floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The first pass and the roots, for compiled code (:meth:`SecondMoment.pure`).

    An operator of its own, so that the compiler keeps its results as two small tensors: left to
    itself, it would remake the column roots inside the update's loop for every row.
    """
    state = {"row": row, "col": col, "total": total}
    factored_statistics(x2, state, rate.float(), None)
    a, b = factored_roots(state, correction, floor)
    return a.contiguous(), b.contiguous()


@_factored_roots_op.register_fake
def _(x2: torch.Tensor, row: torch.Tensor, col: torch.Tensor, total: torch.Tensor, rate: torch.Tensor,
      correction: torch.Tensor, floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    return row.new_empty((row.shape[0], 1)), col.new_empty((1, col.shape[0]))

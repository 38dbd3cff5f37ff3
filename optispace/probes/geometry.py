"""Gradient geometry per role: sparsity, factorability of the second moment, autocorrelation, row spread.

Measured on sampled steps (every ``every``-th), per role:

- ``nonzero_rows``: share of rows (first dim) with a non-zero gradient;
- ``factored_error``: ``|r c^T / s - v|_F / |v|_F``, where ``v`` is the per-entry EMA of ``g^2``
  (Adam's second moment) and ``r``, ``c``, ``s`` the EMAs of its row means, column means and global
  mean (the Ember / Adafactor estimator), all with the same ``beta2``. Bias correction multiplies
  both sides by the same ``1 / (1 - beta2^t)``, so it cancels from the ratio and is left out;
- ``autocorrelation``: lag-1, uncentred, ``<g_t, g_{t-1}> / (|g_t| |g_{t-1}|)`` over all the role's
  tensors together; 0 for white noise, 1 for a constant gradient (the paper's reason to drop
  momentum on tables is that this is near 0 there);
- ``row_spread``: ``p90 / p10`` of the L2 norms of the non-zero gradient rows.

A role with several tensors reports the mean over its tensors of ``nonzero_rows`` and ``row_spread``.

Gradients are read as the backward pass leaves them, before clipping (a common factor per step, so
the cosines, shares and spreads are unchanged; only the EMAs weigh steps slightly differently from
an optimizer fed clipped gradients). The EMAs are updated on every step (an EMA sampled every k
steps would be another estimator); tensors of more than two dims are viewed as ``(shape[0], -1)``,
as Adafactor does. Vectors get only the autocorrelation.
"""

from __future__ import annotations

import torch

from optispace.probes.tracking import params_by_role, sampled


def as_matrix(g: torch.Tensor) -> torch.Tensor:
    """``g`` viewed as rows x columns: ``(shape[0], -1)``."""
    return g.reshape(g.shape[0], -1)


def nonzero_rows(g: torch.Tensor) -> float:
    """Share of rows of ``g`` with at least one non-zero entry."""
    return as_matrix(g).ne(0).any(1).float().mean().item()


def row_spread(g: torch.Tensor) -> float | None:
    """``p90 / p10`` of the non-zero row norms of ``g``; None with fewer than two non-zero rows."""
    norms = torch.linalg.vector_norm(as_matrix(g).float(), dim=1)
    norms = norms[norms > 0]
    if norms.numel() < 2:
        return None
    p10, p90 = torch.quantile(norms.double(), torch.tensor([0.1, 0.9], dtype=torch.float64))
    return (p90 / p10).item()


def lag1_autocorrelation(previous: list[torch.Tensor], current: list[torch.Tensor]) -> float | None:
    """``sum <g_t, g_{t-1}> / sqrt(sum |g_t|^2 sum |g_{t-1}|^2)`` over paired tensors; None if either is 0."""
    dot = sum((p.double() * c.double()).sum() for p, c in zip(previous, current, strict=True))
    a = sum(p.double().square().sum() for p in previous)
    b = sum(c.double().square().sum() for c in current)
    if a == 0 or b == 0:
        return None
    return (dot / (a * b).sqrt()).item()


class SecondMoments:
    """The full EMA of ``g^2`` beside the factored one, for one tensor (viewed as a matrix)."""

    def __init__(self, shape: tuple[int, int], beta2: float, device: torch.device | str = "cpu") -> None:
        self.beta2 = beta2
        self.full = torch.zeros(shape, device=device)
        self.row = torch.zeros(shape[0], device=device)
        self.col = torch.zeros(shape[1], device=device)
        self.total = torch.zeros((), device=device)

    def update(self, g: torch.Tensor) -> None:
        """One EMA step of ``g^2`` for each estimator."""
        g = as_matrix(g).float()
        weight = 1 - self.beta2
        self.full.mul_(self.beta2).addcmul_(g, g, value=weight)
        row = torch.linalg.vector_norm(g, dim=1).square_() / g.shape[1]
        self.row.mul_(self.beta2).add_(row, alpha=weight)
        self.col.mul_(self.beta2).add_(
            torch.linalg.vector_norm(g, dim=0).square_() / g.shape[0], alpha=weight
        )
        self.total.mul_(self.beta2).add_(row.mean(), alpha=weight)

    def error_terms(self) -> tuple[float, float]:
        """``(|r c^T / s - v|_F^2, |v|_F^2)``, to be summed over a role's tensors before the ratio."""
        if self.total == 0:
            return 0.0, 0.0
        estimate = torch.outer(self.row, self.col) / self.total
        return (estimate - self.full).double().square().sum().item(), self.full.double().square().sum().item()


def factored_error(moments: list[SecondMoments]) -> float | None:
    """Relative Frobenius error of the factored estimate over a role's tensors; None before any gradient."""
    terms = [m.error_terms() for m in moments]
    denominator = sum(d for _, d in terms)
    return (sum(n for n, _ in terms) / denominator) ** 0.5 if denominator > 0 else None


class GeometryProbe:
    """Training callback: per role, on every ``every``-th step, the four measures above.

    ``value``: the lag-1 autocorrelation averaged over the sampled steps and the token tables.
    """

    name = "geometry"

    def __init__(self, every: int = 10, beta2: float = 0.999) -> None:
        self.every, self.beta2 = every, beta2

    def on_start(self, model, optimizer, roles, data) -> None:
        self.roles = params_by_role(optimizer, roles)
        self.moments = {
            role: {
                p: SecondMoments(tuple(as_matrix(p).shape), self.beta2, p.device)
                for p in params
                if p.ndim >= 2
            }
            for role, params in self.roles.items()
        }
        self.previous: dict[str, list[torch.Tensor]] = {}
        self.series: list[dict] = []

    def on_after_backward(self, step, model, optimizer, batch) -> None:
        for role, params in self.roles.items():
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            for p, g in zip(params, grads, strict=True):
                if p in self.moments[role]:
                    self.moments[role][p].update(g)
            if sampled(step, self.every) and role in self.previous:
                self.series.append(self._measure(step, role, grads))
            if sampled(step + 1, self.every):
                self.previous[role] = [g.detach().clone() for g in grads]
            else:
                self.previous.pop(role, None)

    def _measure(self, step: int, role: str, grads: list[torch.Tensor]) -> dict:
        matrices = [g for g in grads if g.ndim >= 2]
        row = {
            "step": step,
            "role": role,
            "autocorrelation": lag1_autocorrelation(self.previous[role], grads),
        }
        if matrices:
            row["nonzero_rows"] = _mean([nonzero_rows(g) for g in matrices])
            row["factored_error"] = factored_error(list(self.moments[role].values()))
            row["row_spread"] = _mean([row_spread(g) for g in matrices])
        return row

    def on_end(self, record) -> dict:
        summary = {}
        for role in self.roles:
            rows = [r for r in self.series if r["role"] == role]
            summary[role] = {
                key: _mean([r.get(key) for r in rows])
                for key in ("autocorrelation", "nonzero_rows", "factored_error", "row_spread")
            }
        tables = [summary[r]["autocorrelation"] for r in ("embed", "head") if r in summary]
        tables = [a for a in tables if a is not None]
        return {
            "every": self.every,
            "summary": summary,
            "series": self.series,
            "value": sum(tables) / len(tables) if tables else None,
        }


def _mean(values: list) -> float | None:
    """Mean of the values that are not None; None if there are none."""
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None

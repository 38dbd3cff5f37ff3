"""Update-size outliers on the token tables: which rows take steps far larger than the typical row?

On every ``every``-th step, per table, the per-row update norm ``u_i = |p_i(after) - p_i(before)|`` is
divided by the median over a population of rows, and the tail of those ratios is recorded:

- ``batch``: rows whose token is in this step's batch (inputs for ``embed``, targets for ``head``);
- ``moved``: every row that moved at all (``u_i > 0``; momentum and weight decay move unseen rows);
- ``per_grad``: ``u_i / |g_i|``, the step per unit of gradient norm, over in-batch rows with ``g_i != 0``,
  divided by its median. Gradient clipping scales every row alike, so the pre-clip gradient serves.

The paper reports Adam's ratios reaching 10^2 to 10^4 late in training on rare rows, Ember's staying
within 1 to 3. For the row with the largest ratio the probe records how often its token had been
seen, when it was first seen and when last seen before this step.
"""

from __future__ import annotations

import torch

from optispace.probes.geometry import as_matrix
from optispace.probes.tracking import TokenCounter, batch_tokens, params_by_role, sampled, table_params

POPULATIONS = ("batch", "moved", "per_grad")


def row_norms(t: torch.Tensor) -> torch.Tensor:
    """L2 norm of each row of ``t`` viewed as ``(shape[0], -1)``, in fp32."""
    return torch.linalg.vector_norm(as_matrix(t).float(), dim=1)


def tail(values: torch.Tensor, population: torch.Tensor) -> dict | None:
    """Ratios ``values[i] / median(values[population])`` over the population: max, p99 and the argmax row.

    None when the population is empty or its median is 0 (no scale to compare against).
    """
    rows = population.nonzero().squeeze(1)
    if rows.numel() == 0:
        return None
    median = values[rows].median()
    if median == 0:
        return None
    ratios = values[rows].double() / median.double()
    top = int(ratios.argmax())
    return {
        "max": ratios[top].item(),
        "p99": torch.quantile(ratios, 0.99).item(),
        "median": median.item(),
        "row": int(rows[top]),
    }


def update_outliers(
    update: torch.Tensor, grad: torch.Tensor, in_batch: torch.Tensor
) -> dict[str, dict | None]:
    """The three populations' tails from per-row update norms, gradient norms and the in-batch mask."""
    moved = update > 0
    with_grad = in_batch & (grad > 0)
    per_grad = torch.where(with_grad, update / grad.clamp_min(torch.finfo(grad.dtype).tiny), 0.0)
    return {
        "batch": tail(update, in_batch),
        "moved": tail(update, moved),
        "per_grad": tail(per_grad, with_grad),
    }


def phase_summary(series: list[dict], population: str) -> dict:
    """Early (first half of the sampled steps) vs late (second half): the largest max and the median p99."""
    tails = [r[population] for r in series if r[population] is not None]
    half = len(tails) // 2
    summary = {}
    for phase, part in (("early", tails[:half]), ("late", tails[half:])):
        if part:
            summary[f"{phase}_max"] = max(t["max"] for t in part)
            summary[f"{phase}_p99"] = torch.tensor([t["p99"] for t in part]).median().item()
    return summary


class OutlierProbe:
    """Training callback: per-row update-size ratios on ``embed`` and ``head`` every ``every`` steps.

    ``value``: the largest in-batch ratio on ``embed`` (``head`` when there is no embedding table) in the
    late half of the run.
    """

    name = "outliers"

    def __init__(self, every: int = 10) -> None:
        self.every = every

    def on_start(self, model, optimizer, roles, data) -> None:
        self.tables = table_params(params_by_role(optimizer, roles))
        self.counters = {role: TokenCounter(w.shape[0], w.device) for role, w in self.tables.items()}
        self.pending: dict[str, tuple] = {}
        self.series: list[dict] = []

    def on_after_backward(self, step, model, optimizer, batch) -> None:
        for role, weight in self.tables.items():
            counter = self.counters[role]
            last_seen = counter.last_seen.clone() if sampled(step, self.every) else None
            in_batch = counter.update(step, batch_tokens(role, batch))
            if last_seen is None:
                continue
            grad = row_norms(weight.grad) if weight.grad is not None else torch.zeros(weight.shape[0])
            self.pending[role] = (weight.detach().clone(), grad.cpu(), in_batch.cpu(), last_seen.cpu())

    def on_after_step(self, step, model, optimizer, batch) -> None:
        for role, (before, grad, in_batch, last_seen) in self.pending.items():
            update = row_norms(self.tables[role].detach() - before).cpu()
            row: dict = {"step": step, "role": role}
            for population, found in update_outliers(update, grad, in_batch).items():
                if found is not None:
                    token = found["row"]
                    found["seen"] = int(self.counters[role].counts[token])
                    found["first_seen"] = int(self.counters[role].first_seen[token])
                    found["previously_seen"] = int(last_seen[token])
                row[population] = found
            self.series.append(row)
        self.pending.clear()

    def on_end(self, record) -> dict:
        summary = {
            role: {p: phase_summary([r for r in self.series if r["role"] == role], p) for p in POPULATIONS}
            for role in self.tables
        }
        lead = "embed" if "embed" in summary else next(iter(summary), None)
        return {
            "every": self.every,
            "summary": summary,
            "series": self.series,
            "value": summary[lead]["batch"].get("late_max") if lead else None,
        }

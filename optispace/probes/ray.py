"""Ray fit of token trajectories: does each token's row move along one direction?

Snapshots of the rows of ``embed`` and ``head`` are taken at ``points`` evenly spaced steps (plus the
start). For a token with interval displacements ``d_1 .. d_k`` (row at snapshot t minus row at t-1) and
displacements from the start ``D_t = d_1 + ... + d_t``:

- ray fit: the share of the trajectory's variance along its first principal component, i.e.
  ``lambda_1 / sum_i lambda_i`` of the covariance of the k+1 points ``0, D_1, .., D_k``; 1 for a
  straight line. (Centred, as PCA is: about the start instead, a random walk already scores ~0.8 in
  8 steps, leaving little room above the null.)
- ``cos(d_t, D_k)``: each interval's displacement against the total, averaged over the intervals,
- ``cos(d_t, d_{t+1})``: successive displacements, averaged.

A high ray fit alone means little: a random walk whose steps shrink with the lr schedule scores high
too. Every statistic is therefore computed again on a null model of the same run (same rows, same
norm of every interval displacement, directions drawn uniformly at random), and summaries state the
margin, observed minus null. Summaries are by token-frequency decade (see ``tracking``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from optispace.probes.tracking import (
    TokenCounter,
    batch_tokens,
    bucket_order,
    frequency_bucket,
    params_by_role,
    table_params,
)

STATISTICS = ("ray_fit", "cos_total", "cos_successive")


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine along the last dim; NaN where either side is zero (no direction to compare)."""
    dot = (a * b).sum(-1)
    norms = a.norm(dim=-1) * b.norm(dim=-1)
    return torch.where(norms > 0, dot / norms, torch.full_like(dot, float("nan")))


def ray_fit(steps: torch.Tensor) -> torch.Tensor:
    """Per token, the variance share of the first principal component of its path; NaN if it never moved.

    ``steps``: interval displacements, shape (k, tokens, dim). The path is the k+1 points
    ``0, D_1, .., D_k`` (cumulative sums). The non-zero eigenvalues of the (k+1) x (k+1) Gram matrix
    of the centred points are those of their dim x dim scatter matrix, and cheaper when k << dim.
    """
    s = steps.double()
    points = torch.cat([torch.zeros_like(s[:1]), s.cumsum(0)]).transpose(0, 1)  # (tokens, k+1, dim)
    centred = points - points.mean(1, keepdim=True)
    gram = centred @ centred.transpose(1, 2)
    eigenvalues = torch.linalg.eigvalsh(gram)  # ascending
    total = eigenvalues.sum(-1)
    fit = eigenvalues[:, -1] / total
    return torch.where(total > 0, fit, torch.full_like(fit, float("nan"))).float()


def cos_total(steps: torch.Tensor) -> torch.Tensor:
    """Per token, the mean over intervals of ``cos(d_t, D_k)`` (intervals without movement skipped)."""
    total = steps.sum(0, keepdim=True)
    return _cosine(steps.double(), total.double()).nanmean(0).float()


def cos_successive(steps: torch.Tensor) -> torch.Tensor:
    """Per token, the mean over t of ``cos(d_t, d_{t+1})`` (pairs with a still interval skipped)."""
    s = steps.double()
    return _cosine(s[:-1], s[1:]).nanmean(0).float()


def trajectory_statistics(steps: torch.Tensor) -> dict[str, torch.Tensor]:
    """All three per-token statistics of interval displacements ``steps`` (k, tokens, dim)."""
    return {"ray_fit": ray_fit(steps), "cos_total": cos_total(steps), "cos_successive": cos_successive(steps)}


def null_steps(steps: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The null model: every interval keeps its norm, its direction is uniform on the sphere."""
    directions = torch.randn(steps.shape, generator=generator, dtype=torch.float64)
    directions /= directions.norm(dim=-1, keepdim=True)
    return (directions * steps.double().norm(dim=-1, keepdim=True)).to(steps.dtype)


def stratified_sample(counts: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` token ids (sorted), spread as evenly as possible over the frequency decades of ``counts``.

    Each decade gets an equal share; a decade with fewer tokens than its share gives the rest to the
    others. Within a decade the ids are drawn uniformly without replacement.
    """
    if n >= counts.numel():
        return torch.arange(counts.numel())
    labels = [frequency_bucket(int(c)) for c in counts.tolist()]
    members = {b: torch.tensor([i for i, lab in enumerate(labels) if lab == b]) for b in bucket_order(labels)}
    quota: dict[str, int] = {}
    left, buckets = n, sorted(members, key=lambda b: len(members[b]))
    for i, b in enumerate(buckets):  # smallest decades first, so leftovers flow to the larger ones
        quota[b] = min(len(members[b]), left // (len(buckets) - i))
        left -= quota[b]
    chosen = [members[b][torch.randperm(len(members[b]), generator=generator)[: quota[b]]] for b in buckets]
    return torch.cat(chosen).sort().values


def bucket_summary(
    observed: Mapping[str, torch.Tensor], null: Mapping[str, torch.Tensor], counts: torch.Tensor
) -> list[dict]:
    """One row per frequency decade and one for all tokens: median of each statistic, its null, the margin.

    ``beats_null`` is the share of tokens whose ray fit exceeds that of their own null trajectory.
    Tokens that never moved (NaN ray fit) are left out.
    """
    moved = ~observed["ray_fit"].isnan()
    labels = [frequency_bucket(int(c)) for c in counts.tolist()]
    groups = {"all": moved}
    for b in bucket_order(labels):
        groups[b] = moved & torch.tensor([lab == b for lab in labels])
    rows = []
    for bucket, mask in groups.items():
        if not mask.any():
            continue
        row: dict = {"bucket": bucket, "tokens": int(mask.sum())}
        for name in STATISTICS:
            obs, nul = observed[name][mask].nanmedian().item(), null[name][mask].nanmedian().item()
            row[name], row[f"{name}_null"], row[f"{name}_margin"] = obs, nul, obs - nul
        row["beats_null"] = (observed["ray_fit"][mask] > null["ray_fit"][mask]).float().mean().item()
        rows.append(row)
    return rows


def snapshot_steps(total_steps: int, points: int) -> list[int]:
    """``points`` steps spread evenly over ``1..total_steps``, the last one being ``total_steps``."""
    if total_steps < 1 or points < 1:
        raise ValueError(f"ray probe: total_steps={total_steps} and points={points} must both be >= 1")
    return sorted({max(1, round(i * total_steps / points)) for i in range(1, points + 1)})


class RayProbe:
    """Training callback: snapshots the token tables and summarises their trajectories at the end.

    ``points``: snapshots after the start (k); ``max_rows``: rows kept per table (all when the table
    is smaller, else a frequency-stratified sample chosen at the first snapshot from the counts so
    far); ``seed``: for the sample and the null directions.
    """

    name = "ray"

    def __init__(self, points: int = 8, max_rows: int = 8192, seed: int = 0) -> None:
        self.points, self.max_rows, self.seed = points, max_rows, seed

    def on_start(self, model, optimizer, roles, data) -> None:
        self.tables = table_params(params_by_role(optimizer, roles))
        self.counters = {role: TokenCounter(w.shape[0]) for role, w in self.tables.items()}
        self.steps_to_take = set(snapshot_steps(data.total_steps, self.points))
        self.rows: dict[str, torch.Tensor | None] = dict.fromkeys(self.tables)
        self.snapshots: dict[str, list[torch.Tensor]] = {r: [self._copy(r)] for r in self.tables}

    def _copy(self, role: str) -> torch.Tensor:
        weight = self.tables[role].detach()
        rows = self.rows.get(role)
        return (weight if rows is None else weight[rows.to(weight.device)]).to(
            "cpu", torch.float32, copy=True
        )

    def on_after_step(self, step, model, optimizer, batch) -> None:
        for role, counter in self.counters.items():
            counter.update(step, batch_tokens(role, batch))
        if step not in self.steps_to_take:
            return
        for role in self.tables:
            if len(self.snapshots[role]) == 1 and self.tables[role].shape[0] > self.max_rows:
                generator = torch.Generator().manual_seed(self.seed)
                self.rows[role] = stratified_sample(self.counters[role].counts, self.max_rows, generator)
                self.snapshots[role][0] = self.snapshots[role][0][self.rows[role]]
            self.snapshots[role].append(self._copy(role))

    def on_end(self, record) -> dict:
        generator = torch.Generator().manual_seed(self.seed + 1)
        result: dict = {"points": self.points, "tables": {}}
        for role, snaps in self.snapshots.items():
            if len(snaps) < 3:  # two intervals at least, or successive cosines are undefined
                continue
            steps = torch.stack(snaps).diff(dim=0)
            counts = self.counters[role].counts
            if self.rows[role] is not None:
                counts = counts[self.rows[role]]
            observed = trajectory_statistics(steps)
            null = trajectory_statistics(null_steps(steps, generator))
            result["tables"][role] = {
                "rows": steps.shape[1],
                "buckets": bucket_summary(observed, null, counts),
            }
        overall = [t["buckets"][0] for t in result["tables"].values() if t["buckets"]]
        result["value"] = min((row["ray_fit_margin"] for row in overall), default=None)
        return result

"""Ray fit of token trajectories: does each token's row move along one direction?

Snapshots of the rows of ``embed`` and ``head`` are taken at evenly spaced steps (plus the start; see
``Snapshots``). For a token with interval displacements ``d_1 .. d_k`` (row at snapshot t minus row at
t-1) and displacements from the start ``D_t = d_1 + ... + d_t``:

- ray fit: the share of the trajectory's variance along its first principal component, i.e.
  ``lambda_1 / sum_i lambda_i`` of the covariance of the k+1 points ``0, D_1, .., D_k``; 1 for a
  straight line. (Centred, as PCA is: about the start instead, a random walk already scores ~0.8 in
  8 steps, leaving little room above the null.)
- ``cos(d_t, D_k)``: each interval's displacement against the total, averaged over the intervals,
- ``cos(d_t, d_{t+1})``: successive displacements, averaged.

A high ray fit alone means little: a random walk whose steps shrink with the lr schedule scores high
too. Every statistic is therefore computed again on a null model of the same run (same rows, same
norm of every interval displacement, directions drawn uniformly at random), and summaries state the
margin, observed minus null. Summaries are by token-frequency decade (see ``tracking``) of the counts
seen in training. The probe's ``value`` is the ray-fit margin over all tokens of ``embed`` (``head``
when the table is tied or absent).
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


def _path(steps: torch.Tensor) -> torch.Tensor:
    """The k+1 points ``0, D_1, .., D_k`` (fp32) of interval displacements ``steps`` (k, tokens, dim).

    A running sum: torch's CPU cumsum along the first dim is several times slower on large tables.
    """
    points = torch.zeros((steps.shape[0] + 1, *steps.shape[1:]))
    for t, step in enumerate(steps):
        torch.add(points[t], step, out=points[t + 1])
    return points


def ray_fit(steps: torch.Tensor) -> torch.Tensor:
    """Per token, the variance share of the first principal component of its path; NaN if it never moved.

    ``steps``: interval displacements, shape (k, tokens, dim). The path is the k+1 points
    ``0, D_1, .., D_k`` (cumulative sums). The non-zero eigenvalues of the (k+1) x (k+1) Gram matrix
    of the centred points are those of their dim x dim scatter matrix, and cheaper when k << dim.
    """
    points = _path(steps)
    centred = points - points.mean(0)
    gram = torch.einsum("ktd,ltd->tkl", centred, centred)
    eigenvalues = torch.linalg.eigvalsh(gram.double())  # ascending
    total = eigenvalues.sum(-1)
    fit = eigenvalues[:, -1] / total
    return torch.where(total > 0, fit, torch.full_like(fit, float("nan"))).float()


def cos_total(steps: torch.Tensor) -> torch.Tensor:
    """Per token, the mean over intervals of ``cos(d_t, D_k)`` (intervals without movement skipped)."""
    s = steps.float()
    return _cosine(s, s.sum(0, keepdim=True)).nanmean(0)


def cos_successive(steps: torch.Tensor) -> torch.Tensor:
    """Per token, the mean over t of ``cos(d_t, d_{t+1})`` (pairs with a still interval skipped)."""
    s = steps.float()
    return _cosine(s[:-1], s[1:]).nanmean(0)


def trajectory_statistics(steps: torch.Tensor) -> dict[str, torch.Tensor]:
    """All three per-token statistics of interval displacements ``steps`` (k, tokens, dim)."""
    return {"ray_fit": ray_fit(steps), "cos_total": cos_total(steps), "cos_successive": cos_successive(steps)}


def null_steps(steps: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The null model: every interval keeps its norm, its direction is uniform on the sphere."""
    directions = torch.randn(steps.shape, generator=generator)
    directions /= directions.norm(dim=-1, keepdim=True)
    return (directions * steps.float().norm(dim=-1, keepdim=True)).to(steps.dtype)


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


def token_frequencies(data, vocab: int) -> torch.Tensor | None:
    """Unigram counts of the training stream of ``data`` (a ``TokenData``), or None if it has none."""
    stream = getattr(data, "train", None)
    if stream is None:
        return None
    counts = torch.zeros(vocab, dtype=torch.long)
    for array in stream.arrays:
        counts += torch.bincount(torch.from_numpy(array.astype("int64")), minlength=vocab)[:vocab]
    return counts


class Snapshots:
    """Copies of one table's rows at evenly spaced steps, without knowing how many steps there will be.

    A copy is taken every ``interval`` steps, starting at 1; when ``2 * points`` copies have piled up,
    every other one is dropped and the interval doubles. So between ``points`` and ``2 * points``
    evenly spaced copies remain (besides the start), and ``finish`` adds the last step if missing.
    """

    def __init__(self, weight: torch.Tensor, rows: torch.Tensor | None, points: int) -> None:
        self.weight, self.rows, self.points = weight, rows, points
        self.interval = 1
        self.steps: list[int] = [0]
        self.copies: list[torch.Tensor] = [self._copy()]

    def _copy(self) -> torch.Tensor:
        w = self.weight.detach()
        return (w if self.rows is None else w[self.rows.to(w.device)]).to("cpu", torch.float32, copy=True)

    def after_step(self, step: int) -> None:
        """Take a copy if ``step`` is on the grid; thin the grid when it is full."""
        if step % self.interval:
            return
        self.steps.append(step)
        self.copies.append(self._copy())
        if len(self.steps) - 1 == 2 * self.points:
            self.interval *= 2
            keep = [i for i, s in enumerate(self.steps) if s % self.interval == 0]
            self.steps = [self.steps[i] for i in keep]
            self.copies = [self.copies[i] for i in keep]

    def finish(self, last_step: int) -> torch.Tensor:
        """The interval displacements (intervals, rows, dim), the last one ending at ``last_step``."""
        if self.steps[-1] != last_step:
            self.steps.append(last_step)
            self.copies.append(self._copy())
        return torch.stack(self.copies).diff(dim=0)


class RayProbe:
    """Training callback: snapshots the token tables and summarises their trajectories at the end.

    ``points``: at least this many intervals, at most twice as many (see ``Snapshots``);
    ``max_rows``: rows kept per table; a larger table keeps a sample stratified by the unigram
    frequency of the training stream (uniform when ``data`` has none); ``seed``: for the sample and
    the null directions.
    """

    name = "ray"

    def __init__(self, points: int = 8, max_rows: int = 8192, seed: int = 0) -> None:
        self.points, self.max_rows, self.seed = points, max_rows, seed

    def on_start(self, model, optimizer, roles, data) -> None:
        tables = table_params(params_by_role(optimizer, roles))
        self.counters = {role: TokenCounter(w.shape[0], w.device) for role, w in tables.items()}
        self.snapshots = {
            role: Snapshots(w, self._rows(w.shape[0], data), self.points) for role, w in tables.items()
        }
        self.last_step = 0

    def _rows(self, vocab: int, data) -> torch.Tensor | None:
        if vocab <= self.max_rows:
            return None
        frequencies = token_frequencies(data, vocab)
        if frequencies is None:
            frequencies = torch.zeros(vocab, dtype=torch.long)
        return stratified_sample(frequencies, self.max_rows, torch.Generator().manual_seed(self.seed))

    def on_after_step(self, step, model, optimizer, batch) -> None:
        for role, counter in self.counters.items():
            counter.update(step, batch_tokens(role, batch))
            self.snapshots[role].after_step(step)
        self.last_step = step

    def on_end(self, record) -> dict:
        generator = torch.Generator().manual_seed(self.seed + 1)
        result: dict = {"tables": {}}
        measured = self.snapshots if self.last_step >= 2 else {}  # successive cosines need two intervals
        for role, snapshots in measured.items():
            steps = snapshots.finish(self.last_step)
            counts = self.counters[role].counts.cpu()
            if snapshots.rows is not None:
                counts = counts[snapshots.rows]
            observed = trajectory_statistics(steps)
            null = trajectory_statistics(null_steps(steps, generator))
            result["tables"][role] = {
                "rows": steps.shape[1],
                "snapshot_steps": snapshots.steps,
                "buckets": bucket_summary(observed, null, counts),
            }
        lead = next((result["tables"][r] for r in ("embed", "head") if r in result["tables"]), None)
        result["value"] = lead["buckets"][0]["ray_fit_margin"] if lead and lead["buckets"] else None
        return result

"""Ray fit on trajectories whose answer is known: straight lines, random walks, the null model."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from optispace.probes.ray import (
    RayProbe,
    Snapshots,
    bucket_summary,
    cos_successive,
    cos_total,
    null_steps,
    ray_fit,
    stratified_sample,
    token_frequencies,
    trajectory_statistics,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _straight_lines(k: int = 8, tokens: int = 200, dim: int = 16) -> torch.Tensor:
    """Each token moves along its own fixed direction, by uneven steps of 0.5 to 1."""
    g = _gen(1)
    direction = torch.randn(tokens, dim, generator=g)
    return (0.5 + 0.5 * torch.rand(k, tokens, 1, generator=g)) * direction


def _random_walk(k: int = 8, tokens: int = 400, dim: int = 16, decay: float = 1.0) -> torch.Tensor:
    """Isotropic steps of length ``decay ** t`` (t = 0 .. k-1)."""
    steps = torch.randn(k, tokens, dim, generator=_gen(2))
    return steps / steps.norm(dim=-1, keepdim=True) * (decay ** torch.arange(float(k))).view(k, 1, 1)


def _overall(steps: torch.Tensor) -> dict:
    observed = trajectory_statistics(steps)
    null = trajectory_statistics(null_steps(steps, _gen()))
    (row,) = [r for r in bucket_summary(observed, null, torch.zeros(steps.shape[1])) if r["bucket"] == "all"]
    return row


def test_straight_line_has_ray_fit_one_and_cosines_one():
    steps = _straight_lines()
    assert torch.allclose(ray_fit(steps), torch.ones(steps.shape[1]), atol=1e-6)
    assert torch.allclose(cos_total(steps), torch.ones(steps.shape[1]), atol=1e-6)
    assert torch.allclose(cos_successive(steps), torch.ones(steps.shape[1]), atol=1e-6)


def test_straight_line_beats_its_null_by_a_wide_margin():
    overall = _overall(_straight_lines())
    assert overall["ray_fit"] == pytest.approx(1.0)
    assert overall["ray_fit_margin"] > 0.3
    assert overall["cos_successive_margin"] > 0.8
    assert overall["beats_null"] == 1.0


def test_isotropic_random_walk_does_not_beat_its_null():
    overall = _overall(_random_walk())
    for name in ("ray_fit", "cos_total", "cos_successive"):
        assert abs(overall[f"{name}_margin"]) < 0.05, name
    assert 0.4 < overall["beats_null"] < 0.6


def test_shrinking_random_walk_scores_high_but_its_null_does_too():
    overall = _overall(_random_walk(decay=0.5))
    assert overall["ray_fit"] > 0.8
    assert abs(overall["ray_fit_margin"]) < 0.05


def test_reversal_along_one_line_is_still_a_ray_but_successive_cosine_is_minus_one():
    direction = torch.tensor([[1.0, 2.0, -1.0]])
    steps = torch.stack([direction, -0.5 * direction, direction])
    assert ray_fit(steps).item() == pytest.approx(1.0)
    assert cos_successive(steps).item() == pytest.approx(-1.0)


def test_right_angle_path_splits_variance_by_the_known_share():
    # points (0,0), (1,0), (1,1): scatter [[2/3, 1/3], [1/3, 2/3]], eigenvalues 1 and 1/3
    steps = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    assert ray_fit(steps).item() == pytest.approx(0.75, rel=1e-6)


def test_a_token_that_never_moved_is_left_out():
    steps = _straight_lines(tokens=3)
    steps[:, 1] = 0
    fit = ray_fit(steps)
    assert fit[1].isnan() and not fit[0].isnan()
    observed = trajectory_statistics(steps)
    rows = bucket_summary(
        observed, trajectory_statistics(null_steps(steps, _gen())), torch.tensor([0, 5, 50])
    )
    assert {r["bucket"]: r["tokens"] for r in rows} == {"all": 2, "0": 1, "10-99": 1}


@settings(max_examples=25, deadline=None)
@given(k=st.integers(2, 6), tokens=st.integers(1, 5), dim=st.integers(1, 6), seed=st.integers(0, 99))
def test_null_keeps_every_interval_norm_and_fit_stays_in_range(k, tokens, dim, seed):
    steps = torch.randn(k, tokens, dim, generator=_gen(seed))
    null = null_steps(steps, _gen(seed + 1))
    assert torch.allclose(null.norm(dim=-1), steps.norm(dim=-1), rtol=1e-5)
    fit = ray_fit(steps)
    assert ((fit >= 1 / min(k, dim) - 1e-6) & (fit <= 1 + 1e-6)).all()


def test_stratified_sample_spreads_over_frequency_decades():
    counts = torch.tensor([0] * 50 + [3] * 30 + [40] * 4 + [500] * 16)
    rows = stratified_sample(counts, 20, _gen())
    assert rows.tolist() == sorted(set(rows.tolist())) and len(rows) == 20
    per_bucket = torch.bincount(torch.bucketize(counts[rows], torch.tensor([0, 9, 99])), minlength=4)
    # the 4 tokens of 10-99 are all taken; 16 left over 3 decades: 5, 5, and the remainder 6 to the largest
    assert per_bucket.tolist() == [6, 5, 4, 5]
    assert stratified_sample(counts, 1000, _gen()).tolist() == list(range(100))


def test_snapshots_stay_evenly_spaced_without_knowing_the_run_length():
    weight = torch.zeros(3, 2)
    snaps = Snapshots(weight, None, points=2)
    for step in range(1, 12):
        weight += 1.0
        snaps.after_step(step)
    assert snaps.steps == [0, 4, 8]  # 1,2,3,4 -> 2,4 -> 2,4,6,8 -> 4,8 -> 4,8 (12 not reached)
    steps = snaps.finish(11)
    assert snaps.steps == [0, 4, 8, 11]
    assert steps[:, 0, 0].tolist() == [4.0, 4.0, 3.0]


def test_snapshots_of_a_row_sample_copy_only_those_rows():
    weight = torch.arange(12.0).view(6, 2)
    snaps = Snapshots(weight, torch.tensor([1, 4]), points=2)
    assert snaps.copies[0].tolist() == [[2.0, 3.0], [8.0, 9.0]]


class _Data:
    """Stands for ``TokenData``: a training stream made of token arrays."""

    def __init__(self, *arrays):
        self.train = SimpleNamespace(arrays=[np.array(a, dtype=np.uint16) for a in arrays])


def test_token_frequencies_count_the_training_stream():
    assert token_frequencies(_Data([0, 1, 1], [3, 1]), 5).tolist() == [1, 3, 0, 1, 0]
    assert token_frequencies(object(), 5) is None


def test_probe_on_straight_and_random_rows_reports_buckets_with_their_null():
    vocab, dim = 40, 8
    embed, head = torch.zeros(vocab, dim), torch.zeros(vocab, dim)
    # a real optimizer whose param groups carry a role, as optispace.Optimizer's do
    opt = torch.optim.SGD([{"role": "embed", "params": [embed]}, {"role": "head", "params": [head]}], lr=0.0)
    probe = RayProbe(points=4, max_rows=30)
    probe.on_start(None, opt, None, _Data(range(10)))  # the stream holds tokens 0..9 only
    direction, g = torch.randn(vocab, dim, generator=_gen(3)), _gen(4)
    x = torch.arange(10).view(1, 10)  # tokens 0..9 seen every step, the rest never
    for step in range(1, 21):
        embed += 0.01 * direction  # every row of embed moves on a straight line
        head += 0.01 * torch.randn(vocab, dim, generator=g)  # head rows random-walk
        probe.on_after_step(step, None, opt, (x, x))
    result = probe.on_end(None)
    embed_rows, head_rows = result["tables"]["embed"], result["tables"]["head"]
    assert embed_rows["rows"] == 30 and embed_rows["snapshot_steps"][-1] == 20
    assert [b["bucket"] for b in embed_rows["buckets"]] == ["all", "0", "10-99"]
    assert [b["tokens"] for b in embed_rows["buckets"]] == [30, 20, 10]  # stratified: all 10 seen rows kept
    assert embed_rows["buckets"][0]["ray_fit"] == pytest.approx(1.0)
    assert embed_rows["buckets"][0]["ray_fit_margin"] > 0.2
    assert abs(head_rows["buckets"][0]["ray_fit_margin"]) < 0.1
    assert result["value"] == embed_rows["buckets"][0]["ray_fit_margin"]

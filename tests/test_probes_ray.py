"""Ray fit on trajectories whose answer is known: straight lines, random walks, the null model."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from optispace.probes.ray import (
    bucket_summary,
    cos_successive,
    cos_total,
    null_steps,
    ray_fit,
    snapshot_steps,
    stratified_sample,
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


def test_snapshot_steps_are_even_and_end_at_the_last_step():
    assert snapshot_steps(100, 4) == [25, 50, 75, 100]
    assert snapshot_steps(3, 8) == [1, 2, 3]
    with pytest.raises(ValueError, match="total_steps"):
        snapshot_steps(0, 4)

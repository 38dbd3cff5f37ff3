"""Gradient geometry on gradients whose answer is known."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from optispace.probes.geometry import (
    GeometryProbe,
    SecondMoments,
    factored_error,
    lag1_autocorrelation,
    nonzero_rows,
    row_spread,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 8), cols=st.integers(1, 8), steps=st.integers(1, 4), seed=st.integers(0, 999))
def test_rank_one_g_squared_has_zero_factored_error(rows, cols, steps, seed):
    g = _gen(seed)
    a, b = torch.rand(rows, generator=g) + 0.1, torch.rand(cols, generator=g) + 0.1
    signs = torch.where(torch.rand(rows, cols, generator=g) < 0.5, -1.0, 1.0)
    moments = SecondMoments((rows, cols), beta2=0.9)
    for t in range(steps):  # g^2 = (t+1)^2 a b^T: a rank-one matrix that changes scale each step
        moments.update((t + 1) * signs * torch.outer(a, b).sqrt())
    assert factored_error([moments]) == pytest.approx(0.0, abs=1e-5)


def test_full_rank_g_squared_has_the_known_factored_error():
    # g^2 = identity (2 x 2): r = c = (1/2, 1/2), s = 1/2, so the estimate is 1/2 everywhere;
    # error |[[-.5, .5], [.5, -.5]]| / |I| = 1 / sqrt 2
    moments = SecondMoments((2, 2), beta2=0.5)
    moments.update(torch.eye(2))
    assert factored_error([moments]) == pytest.approx(2**-0.5, rel=1e-6)
    assert factored_error([SecondMoments((2, 2), beta2=0.5)]) is None


def test_white_noise_has_autocorrelation_near_zero_and_a_constant_gradient_one():
    noise = torch.randn(2001, 64, 16, generator=_gen())
    values = [lag1_autocorrelation([noise[t - 1]], [noise[t]]) for t in range(1, 2001)]
    assert abs(sum(values) / len(values)) < 0.01
    constant = torch.randn(64, 16, generator=_gen(1))
    assert lag1_autocorrelation([constant, constant[0]], [2 * constant, 2 * constant[0]]) == pytest.approx(
        1.0
    )
    assert lag1_autocorrelation([constant], [-constant]) == pytest.approx(-1.0)
    assert lag1_autocorrelation([torch.zeros(3)], [torch.ones(3)]) is None


def test_nonzero_rows_and_row_spread():
    g = torch.zeros(10, 4)
    g[:5] = torch.arange(1.0, 6.0).view(5, 1)  # row norms 2, 4, 6, 8, 10 (4 columns)
    assert nonzero_rows(g) == pytest.approx(0.5)
    p10, p90 = 2 + 0.4 * 2, 8 + 0.6 * 2  # linear interpolation between the sorted norms
    assert row_spread(g) == pytest.approx(p90 / p10)
    assert row_spread(torch.zeros(3, 3)) is None


def test_probe_records_each_sampled_step_per_role():
    table = torch.nn.Parameter(torch.zeros(6, 3))
    bias = torch.nn.Parameter(torch.zeros(3))
    # a real optimizer whose param groups carry a role, as optispace.Optimizer's do
    opt = torch.optim.SGD(
        [{"role": "embed", "params": [table]}, {"role": "vector", "params": [bias]}], lr=0.0
    )
    probe = GeometryProbe(every=2, beta2=0.9)
    probe.on_start(None, opt, None, None)
    constant = torch.arange(18.0).view(6, 3)
    constant[2] = 0  # a row that never gets a gradient
    for step in range(1, 8):
        table.grad, bias.grad = constant.clone(), torch.randn(3, generator=_gen(step))
        probe.on_after_backward(step, None, opt, None)
    result = probe.on_end(None)
    assert [(r["step"], r["role"]) for r in result["series"]] == [
        (s, r) for s in (3, 5, 7) for r in ("embed", "vector")
    ]
    embed = result["summary"]["embed"]
    assert embed["autocorrelation"] == pytest.approx(1.0)
    assert embed["nonzero_rows"] == pytest.approx(5 / 6)
    assert embed["factored_error"] == pytest.approx(factored_error([_moments_of(constant, 7, 0.9)]), rel=1e-5)
    assert result["summary"]["vector"]["nonzero_rows"] is None
    assert result["value"] == pytest.approx(1.0)


def _moments_of(g: torch.Tensor, steps: int, beta2: float) -> SecondMoments:
    """The EMA of the same gradient ``steps`` times, written out: v = (1 - beta2^steps) g^2, and so on."""
    moments = SecondMoments(tuple(g.shape), beta2)
    scale = 1 - beta2**steps
    moments.full, moments.row, moments.col = scale * g**2, scale * (g**2).mean(1), scale * (g**2).mean(0)
    moments.total = scale * (g**2).mean()
    return moments

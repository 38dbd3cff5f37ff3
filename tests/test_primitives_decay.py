"""Weight decay, decoupled (on the parameter, by the group lr) and coupled (an L2 gradient term)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from test_primitives_base import (
    randn,
    seeds,
    shapes_any,
    updates,
)

from primitives import L2, WeightDecay

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

rates = st.floats(0.0, 1.0)
lrs = st.floats(1e-4, 1.0)


@given(shapes_any, seeds, rates, lrs)
def test_decoupled_decay_shrinks_the_parameter_by_lr_times_rate(shape, seed, rate, lr) -> None:
    p, g = randn(shape, seed), randn(shape, seed + 1)
    (step,) = updates(f"weight_decay({rate!r})", [g], lr=lr, param=p)
    torch.testing.assert_close(step, p - p * (1 - lr * rate) + lr * g, rtol=1e-5, atol=1e-6)


@given(shapes_any, seeds, rates)
def test_decoupled_decay_ignores_step_size_scaling(shape, seed, rate) -> None:
    p, g = randn((4, 2), seed), randn((4, 2), seed + 1)
    (step,) = updates(f"weight_decay({rate!r}) > relative_step(0.5)", [g], lr=0.1, param=p)
    shrunk = p * (1 - 0.1 * rate)
    step_size = max(0.5, shrunk.square().mean().sqrt().item()) * 0.1
    torch.testing.assert_close(step, p - shrunk + step_size * g, rtol=1e-5, atol=1e-6)


@given(shapes_any, seeds, rates)
def test_l2_adds_to_the_direction_and_to_what_statistics_read(shape, seed, rate) -> None:
    p, g = randn(shape, seed), randn(shape, seed + 1)
    (plain,) = updates(f"l2({rate!r})", [g], param=p)
    torch.testing.assert_close(plain, g + rate * p)
    (sign,) = updates(f"l2({rate!r}) > second_moment(full, eps=0.0)", [g], param=p)
    torch.testing.assert_close(sign, torch.sign(g + rate * p))


@pytest.mark.parametrize("cls", [WeightDecay, L2])
@pytest.mark.parametrize("rate", [-0.1, float("nan"), float("inf")])
def test_bad_rates_are_refused(cls, rate) -> None:
    with pytest.raises(ValueError, match=rf"^{cls.name}: rate=.* must be a finite number >= 0"):
        cls(rate)

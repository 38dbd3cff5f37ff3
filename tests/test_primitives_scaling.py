"""Step-size scaling: Muon's shape scaling and Adafactor's parameter-relative step."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from test_primitives_base import (
    randn,
    seeds,
    shapes_2d,
    updates,
)

from primitives import RelativeStep, ShapeScale

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@given(shapes_2d, seeds)
def test_shape_scale_rules(shape, seed) -> None:
    g = randn(shape, seed)
    rows, cols = shape
    (original,) = updates("shape_scale", [g], lr=0.1)
    torch.testing.assert_close(original, 0.1 * math.sqrt(max(1.0, rows / cols)) * g)
    (moonshot,) = updates("shape_scale(match_rms_adamw)", [g], lr=0.1)
    torch.testing.assert_close(moonshot, 0.1 * 0.2 * math.sqrt(max(rows, cols)) * g)


@given(shapes_2d, seeds, st.floats(0.0, 1.0), st.floats(1e-2, 10.0))
def test_relative_step_is_adafactors(shape, seed, eps, lr) -> None:
    p, grads = randn(shape, seed), [randn(shape, seed + t) for t in range(1, 4)]
    steps = updates(f"relative_step({eps!r})", grads, lr=lr, param=p)
    for t, (g, step) in enumerate(zip(grads, steps, strict=True), start=1):
        size = max(eps, p.square().mean().sqrt().item()) * min(lr, 1 / math.sqrt(t))
        # The step is read back as start - (start - step): exact to fp32 rounding of start (~1).
        torch.testing.assert_close(step, size * g, rtol=1e-5, atol=1e-6)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="shape_scale: rule='sqrt' .* original, match_rms_adamw"):
        ShapeScale("sqrt")
    with pytest.raises(ValueError, match="relative_step: eps=-1.0 .* >= 0"):
        RelativeStep(-1.0)

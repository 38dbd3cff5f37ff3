"""Sign: outputs only -1, 0, 1, and is blind to the gradient's scale."""

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

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

powers_of_two = st.integers(-20, 20).map(lambda k: 2.0**k)


@given(shapes_any, seeds)
def test_sign_outputs_only_minus_one_zero_one(shape, seed) -> None:
    g = randn(shape, seed) * (randn(shape, seed + 1) > 0)
    (u,) = updates("sign", [g])
    assert set(u.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert torch.equal(u, torch.sign(g))


SIGN_CHAINS = ["sign", "momentum(0.9, kind=lion, beta2=0.99) > sign",
               "momentum(0.9, bias_correction=False) > sign"]


@given(shapes_any, seeds, powers_of_two, st.sampled_from(SIGN_CHAINS))
def test_sign_chains_ignore_the_gradient_scale(shape, seed, c, chain) -> None:
    grads = [randn(shape, seed + t) for t in range(4)]
    scaled = updates(chain, [c * g for g in grads])
    assert all(torch.equal(a, b) for a, b in zip(updates(chain, grads), scaled, strict=True))

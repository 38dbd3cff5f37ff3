"""Momentum: the formulas of each kind, its invariants, and its refusals."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from test_primitives_base import (
    assert_refused,
    randn,
    seeds,
    shapes_any,
    updates,
)

from primitives import Momentum

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

betas = st.floats(0.0, 0.99)


@given(shapes_any, seeds, st.sampled_from(["momentum(0.0)", "momentum(0.0, bias_correction=False)",
                                           "momentum(0.0, kind=heavy_ball)", "momentum(0.0, nesterov=True)",
                                           "momentum(0.0, kind=lion, beta2=0.0)"]))
def test_beta_zero_is_the_identity(shape, seed, chain) -> None:
    grads = [randn(shape, seed + t) for t in range(3)]
    for g, u in zip(grads, updates(chain, grads), strict=True):
        assert torch.equal(u, g)


@given(shapes_any, seeds, betas)
def test_bias_corrected_ema_of_a_constant_is_that_constant(shape, seed, beta) -> None:
    g = randn(shape, seed)
    for u in updates(f"momentum({beta!r})", [g] * 6):
        torch.testing.assert_close(u, g, rtol=1e-5, atol=1e-6)


@given(seeds, betas, st.floats(0.0, 1.0))
def test_heavy_ball_is_torch_sgd_momentum(seed, beta, dampening) -> None:
    grads = [randn((3, 2), seed + t) for t in range(4)]
    m = grads[0].clone()
    expected = [m.clone()]
    for g in grads[1:]:
        m = beta * m + (1 - dampening) * g
        expected.append(m.clone())
    got = updates(f"momentum({beta!r}, kind=heavy_ball, dampening={dampening!r})", grads)
    for u, e in zip(got, expected, strict=True):
        torch.testing.assert_close(u, e, rtol=1e-5, atol=1e-6)


@given(seeds, betas)
def test_nesterov_kinds(seed, beta) -> None:
    grads = [randn((2, 3), seed + t) for t in range(4)]
    heavy, ema = torch.zeros(2, 3), torch.zeros(2, 3)
    want_heavy, want_ema = [], []
    for t, g in enumerate(grads):
        heavy = g.clone() if t == 0 else beta * heavy + g
        want_heavy.append(g + beta * heavy)
        ema = beta * ema + (1 - beta) * g
        want_ema.append((1 - beta) * g + beta * ema)
    for got, want in ((updates(f"momentum({beta!r}, kind=heavy_ball, nesterov=True)", grads), want_heavy),
                      (updates(f"momentum({beta!r}, nesterov=True)", grads), want_ema)):
        for u, e in zip(got, want, strict=True):
            torch.testing.assert_close(u, e, rtol=1e-5, atol=1e-6)


@given(seeds, betas, betas)
def test_lion_interpolates_with_the_old_momentum(seed, beta1, beta2) -> None:
    grads = [randn((4,), seed + t) for t in range(4)]
    m, want = torch.zeros(4), []
    for g in grads:
        want.append(beta1 * m + (1 - beta1) * g)
        m = beta2 * m + (1 - beta2) * g
    for u, e in zip(updates(f"momentum({beta1!r}, kind=lion, beta2={beta2!r})", grads), want, strict=True):
        torch.testing.assert_close(u, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"beta": 1.0}, ["beta=1.0", "[0, 1)"]),
    ({"beta": -0.1}, ["beta=-0.1"]),
    ({"beta": float("nan")}, ["beta=nan"]),
    ({"kind": "adam"}, ["kind='adam'", "ema, heavy_ball, lion"]),
    ({"kind": "lion"}, ["beta2=None", "given with kind=lion"]),
    ({"beta2": 0.9}, ["beta2=0.9", "unless kind=lion"]),
    ({"dampening": 0.5}, ["dampening=0.5", "kind=heavy_ball"]),
    ({"kind": "heavy_ball", "nesterov": True, "dampening": 0.1}, ["dampening=0.1", "nesterov=True"]),
    ({"kind": "heavy_ball", "bias_correction": True}, ["bias_correction=True", "unless kind=ema"]),
    ({"nesterov": True, "bias_correction": True}, ["bias_correction=True", "nesterov=True"]),
    ({"kind": "lion", "beta2": 0.9, "nesterov": True}, ["nesterov=True", "kind=lion"]),
    ({"nesterov": 1}, ["nesterov=1", "True or False"]),
])
def test_bad_arguments_name_primitive_argument_value_and_what_is_allowed(kwargs, words) -> None:
    assert_refused(Momentum, kwargs, words)

"""Normalization to a target RMS or L2 norm, and Adafactor's clipping by RMS."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from test_primitives_base import (
    assert_refused,
    randn,
    seeds,
    shapes_2d,
    shapes_any,
    updates,
)

from primitives import ClipRMS, Normalize

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

targets = st.floats(0.01, 100.0)
scales = st.floats(1e-3, 1e3)


def rms(x: torch.Tensor) -> float:
    return x.square().mean().sqrt().item()


@given(shapes_any, seeds, targets, scales)
def test_rms_normalization_gives_the_target_rms(shape, seed, target, scale) -> None:
    (u,) = updates(f"normalize(rms, target={target!r})", [randn(shape, seed, scale)])
    assert math.isclose(rms(u), target, rel_tol=1e-5)


@given(shapes_2d, seeds, targets, st.sampled_from(["row", "col"]))
def test_row_and_column_normalization_give_each_the_target_norm(shape, seed, target, kind) -> None:
    (u,) = updates(f"normalize({kind}, target={target!r})", [randn(shape, seed)])
    norms = u.norm(dim=1 if kind == "row" else 0)
    torch.testing.assert_close(norms, torch.full_like(norms, target), rtol=1e-5, atol=0)


@given(shapes_2d, seeds, st.sampled_from(["rms", "row", "col"]))
def test_a_zero_row_stays_zero(shape, seed, kind) -> None:
    g = randn(shape, seed)
    g[0] = 0.0
    (u,) = updates(f"normalize({kind})", [g])
    assert not u[0].any() and torch.isfinite(u).all()


@given(shapes_any, seeds, scales, st.floats(0.1, 10.0))
def test_clipping_caps_the_rms_and_leaves_small_updates_alone(shape, seed, scale, threshold) -> None:
    g = randn(shape, seed, scale)
    (u,) = updates(f"clip_rms({threshold!r})", [g])
    if rms(g) <= threshold:
        assert torch.equal(u, g)
    else:
        assert math.isclose(rms(u), threshold, rel_tol=1e-5)


@pytest.mark.parametrize(("cls", "kwargs", "words"), [
    (Normalize, {"kind": "frobenius"}, ["kind='frobenius'", "rms, row, col"]),
    (Normalize, {"target": 0.0}, ["target=0.0", "> 0"]),
    (Normalize, {"eps": -1.0}, ["eps=-1.0", "> 0"]),
    (ClipRMS, {"threshold": 0.0}, ["threshold=0.0", "> 0"]),
    (ClipRMS, {"threshold": float("inf")}, ["threshold=inf", "finite"]),
])
def test_bad_arguments_are_refused(cls, kwargs, words) -> None:
    assert_refused(cls, kwargs, words)

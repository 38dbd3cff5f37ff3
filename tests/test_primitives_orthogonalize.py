"""Newton-Schulz orthogonalization: torch.optim.Muon's iteration, its band, 2-D only."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from test_primitives_base import (
    assert_refused,
    seeds,
    updates,
)
from torch.optim._muon import _zeropower_via_newtonschulz

from optispace import Optimizer
from primitives import Orthogonalize
from primitives.orthogonalize import MUON_COEFFICIENTS

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

dims = st.integers(2, 8)


def with_singular_values(rows: int, cols: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A matrix U diag(s) V^T with s in [0.05, 1] (so five iterations reach the band), and U, V."""
    gen = torch.Generator().manual_seed(seed)
    k = min(rows, cols)
    u, _ = torch.linalg.qr(torch.randn(rows, k, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, k, generator=gen, dtype=torch.float64))
    s = 0.05 + 0.95 * torch.rand(k, generator=gen, dtype=torch.float64)
    return (u * s) @ v.T, u, v


@given(dims, dims, seeds)
def test_fp32_output_keeps_singular_vectors_with_values_in_muons_band(rows, cols, seed) -> None:
    g, u, v = with_singular_values(rows, cols, seed)
    (out,) = updates("orthogonalize(dtype=float32)", [g.float()])
    core = u.T @ out.double() @ v  # diagonal when the singular vectors are kept
    diag = core.diagonal()
    assert (core - torch.diag(diag)).abs().max() < 1e-4
    assert ((diag > 0.5) & (diag < 1.5)).all(), diag


@given(dims, dims, seeds, st.floats(1e-3, 1e3))
def test_bf16_is_torch_muons_iteration(rows, cols, seed, scale) -> None:
    g = scale * torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    (out,) = updates("orthogonalize", [g])
    want = _zeropower_via_newtonschulz(g, MUON_COEFFICIENTS, 5, 1e-7).float()
    assert torch.equal(out, want)


@given(dims, dims, seeds)
def test_a_zero_row_stays_zero(rows, cols, seed) -> None:
    g = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    g[0] = 0.0
    (out,) = updates("orthogonalize(dtype=float32)", [g])
    assert not out[0].any()


def test_one_dimensional_parameters_are_refused_when_the_optimizer_is_built() -> None:
    with pytest.raises(ValueError) as e:
        Optimizer([torch.nn.Parameter(torch.zeros(4))], {"vector": "orthogonalize"}, lr=0.1)
    for w in ("'0'", "orthogonalize", "(4,)", "2-D"):
        assert w in str(e.value)


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"steps": 100}, ["steps=100", "[0, 100)"]),
    ({"steps": 2.5}, ["steps=2.5", "whole number"]),
    ({"coefficients": (1.0, 2.0)}, ["coefficients=(1.0, 2.0)", "three finite numbers"]),
    ({"eps": 0.0}, ["eps=0.0", "> 0"]),
    ({"dtype": "float16"}, ["dtype='float16'", "bfloat16, float32"]),
])
def test_bad_arguments_are_refused(kwargs, words) -> None:
    assert_refused(Orthogonalize, kwargs, words)

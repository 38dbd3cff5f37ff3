"""The primitive contract: state specs, the (rows, columns) view, step-size deferral, argument types.

``updates`` (used by the other ``test_primitives_*`` files) runs a chain through the optimizer on one
parameter held at zero, so each step's parameter change is exactly ``-step_size * u``.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from optispace import Optimizer
from primitives import (
    Context,
    Momentum,
    Primitive,
    StateSpec,
    WeightDecay,
    Workspace,
    matrix_shape,
    register,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

shapes_2d = st.tuples(st.integers(1, 7), st.integers(1, 7))
shapes_any = st.one_of(shapes_2d, st.tuples(st.integers(1, 9)), st.just(()),
                       st.tuples(*[st.integers(1, 3)] * 3))
seeds = st.integers(0, 2**16)


def randn(shape: Sequence[int], seed: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed))


def updates(chain: str, grads: Sequence[torch.Tensor], lr: float = 1.0,
            param: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Each step's ``step_size * u`` for ``chain`` fed ``grads`` (the parameter is reset each step)."""
    start = torch.zeros_like(grads[0]) if param is None else param
    p = torch.nn.Parameter(start.clone())
    opt = Optimizer([p], {"matrix": chain, "vector": chain}, lr=lr)
    out = []
    for g in grads:
        with torch.no_grad():
            p.copy_(start)
        p.grad = g.clone()
        opt.step()
        out.append((start - p).detach())
    return out


def assert_refused(cls: type[Primitive], kwargs: dict, words: Sequence[str]) -> None:
    """``cls(**kwargs)`` raises the house ValueError: the primitive's name first, then ``words``."""
    with pytest.raises(ValueError) as e:
        cls(**kwargs)
    assert str(e.value).startswith(f"{cls.name}: ")
    for w in words:
        assert w in str(e.value)


def test_state_spec_counts_bytes_by_dtype() -> None:
    assert StateSpec("v", (3, 5)).nbytes == 60
    assert StateSpec("v", (3, 5), torch.bfloat16).nbytes == 30
    assert StateSpec("s", ()).nbytes == 4


@given(shapes_any)
def test_matrix_view_keeps_every_entry(shape: tuple[int, ...]) -> None:
    rows, cols = matrix_shape(shape)
    assert rows * cols == torch.zeros(shape).numel()
    assert rows == (shape[0] if len(shape) >= 2 else 1)


def test_context_folds_a_factor_into_the_step_only_when_allowed() -> None:
    u = torch.ones(3)
    ctx = Context(grad=u, param=u, step=1, lr=0.5)
    assert ctx.step_size == 0.5
    assert torch.equal(ctx.scaled(u, 2.0), 2 * u) and ctx.step_size == 0.5
    ctx.deferrable = True
    assert ctx.scaled(u, 2.0) is u and ctx.step_size == 1.0


def test_workspace_buffers_never_alias_until_released() -> None:
    ws = Workspace()
    cpu = torch.device("cpu")
    first = [ws.take((3,), cpu).fill_(1.0), ws.take((1,), cpu).fill_(1.0), ws.take((1,), cpu).fill_(1.0)]
    ptrs = {t.data_ptr() for t in first}
    assert len(ptrs) == 3
    ws.release()
    again = [ws.take((1,), cpu), ws.take((1,), cpu), ws.take((2, 1), cpu), ws.take((4,), cpu)]
    assert len({t.data_ptr() for t in again}) == 4
    assert {t.data_ptr() for t in again[:3]} == ptrs  # reused, smallest fitting first
    assert [tuple(t.shape) for t in again] == [(1,), (1,), (2, 1), (4,)]


def test_integer_arguments_of_float_fields_become_floats() -> None:
    assert WeightDecay(1).rate == 1.0 and isinstance(WeightDecay(1).rate, float)
    assert Momentum(0) == Momentum(0.0)


def test_a_name_registers_once() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        register(type("Again", (Primitive,), {"name": "sign"}))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_updates_helper_reports_the_step(dtype: torch.dtype) -> None:
    g = torch.tensor([1.0, -2.0], dtype=dtype)
    assert torch.equal(updates("identity", [g], lr=0.5)[0], 0.5 * g)

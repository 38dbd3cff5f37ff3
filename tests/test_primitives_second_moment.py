"""Second moment: each shape's estimate, scale invariance, rank-one factoring, rows never seen."""

from __future__ import annotations

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

from primitives import SecondMoment
from primitives.second_moment import SHAPES

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

powers_of_two = st.integers(-12, 12).map(lambda k: 2.0**k)
beta2s = st.floats(0.5, 0.999)


def direct_estimate(shape: str, grads: list[torch.Tensor], beta2: float) -> torch.Tensor:
    """v_hat of ``shape`` after ``grads``, from the definition (bias-corrected by the step count)."""
    g2 = [g.reshape(g.shape[0], -1).square() if g.ndim >= 2 else g.reshape(1, -1).square() for g in grads]
    weights = [(1 - beta2) * beta2 ** (len(g2) - 1 - t) / (1 - beta2 ** len(g2)) for t in range(len(g2))]

    def ema(f):
        return sum(w * f(x) for w, x in zip(weights, g2, strict=True))

    rows = ema(lambda x: x.mean(dim=1, keepdim=True))
    cols = ema(lambda x: x.mean(dim=0, keepdim=True))
    total = ema(lambda x: x.mean())
    v = {"full": ema(lambda x: x), "row": rows, "col": cols, "factored": rows * cols / total,
         "scalar": total}[shape]
    return v.expand(g2[0].shape).reshape(grads[0].shape)


@given(shapes_any, seeds, st.sampled_from(SHAPES), beta2s)
def test_each_shape_divides_by_the_root_of_its_estimate(shape, seed, kind, beta2) -> None:
    grads = [randn(shape, seed + t, scale=1 + t) for t in range(3)]
    got = updates(f"second_moment({kind}, beta2={beta2!r}, eps=0.0)", grads)[-1]
    want = grads[-1] / direct_estimate(kind, grads, beta2).sqrt()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@given(shapes_any, seeds, powers_of_two, st.sampled_from(SHAPES), st.sampled_from(["add", "floor"]),
       st.sampled_from(["step", "none"]))
def test_preconditioned_updates_ignore_the_gradient_scale(shape, seed, c, kind, mode, correction) -> None:
    chain = f"momentum(0.9) > second_moment({kind}, eps=0.0, eps_mode={mode}, bias_correction={correction})"
    grads = [randn(shape, seed + t) for t in range(4)]
    for a, b in zip(updates(chain, grads), updates(chain, [c * g for g in grads]), strict=True):
        assert torch.equal(a, b)


@given(shapes_2d, seeds, st.lists(st.floats(0.1, 10.0), min_size=1, max_size=4), beta2s)
def test_factored_equals_full_when_the_squared_gradient_is_rank_one(shape, seed, scales, beta2) -> None:
    a, b = randn(shape[:1], seed), randn(shape[1:], seed + 1)
    grads = [k * torch.outer(a, b) for k in scales]
    full = updates(f"second_moment(full, beta2={beta2!r})", grads)
    factored = updates(f"second_moment(factored, beta2={beta2!r})", grads)
    for x, y in zip(factored, full, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)


@given(shapes_2d, seeds, st.sampled_from(SHAPES), st.sampled_from(["step", "row"]))
def test_a_row_without_gradient_gets_no_update(shape, seed, kind, correction) -> None:
    if correction == "row" and kind in ("col", "scalar"):
        return
    grads = [randn(shape, seed + t) for t in range(3)]
    grads[-1][0] = 0.0
    u = updates(f"second_moment({kind}, bias_correction={correction})", grads)[-1]
    assert not u[0].any()
    assert torch.isfinite(u).all()


@given(seeds, st.integers(2, 6), st.sampled_from(["full", "row", "factored"]))
def test_per_row_correction_does_not_underestimate_a_row_first_seen_late(seed, late, kind) -> None:
    grads = [randn((3, 4), seed + t) for t in range(late)]
    for t in range(late - 1):
        grads[t][0] = 0.0
    grads[-1][0] = 1.0  # a constant row: its own corrected estimate is exactly 1
    per_row = updates(f"second_moment({kind}, eps=0.0, bias_correction=row)", grads)[-1]
    per_step = updates(f"second_moment({kind}, eps=0.0)", grads)[-1]
    if kind == "full":
        torch.testing.assert_close(per_row[0], torch.ones(4))
    # Corrected by the global step, the late row looks (1 + beta2 + ...) times smaller than it is.
    assert (per_step[0].abs() > per_row[0].abs() * 1.4).all()


@given(shapes_any, seeds)
def test_adafactor_schedule_starts_from_the_first_gradient(shape, seed) -> None:
    g = randn(shape, seed)
    (u,) = updates("second_moment(full, beta2_decay=-0.8, eps=0.0, eps_mode=floor)", [g])
    torch.testing.assert_close(u, torch.sign(g))


@given(shapes_any, seeds)
def test_statistics_of_the_incoming_direction(shape, seed) -> None:
    g = randn(shape, seed)
    (of_update,) = updates("sign > second_moment(full, eps=0.0, source=update)", [g])
    (of_grad,) = updates("sign > second_moment(full, eps=0.0)", [g])
    torch.testing.assert_close(of_update, torch.sign(g))
    torch.testing.assert_close(of_grad, torch.sign(g) / g.abs())


def test_floor_mode_is_torch_adafactor_clamp() -> None:
    g = torch.tensor([[1e-9, 2.0], [3.0, 0.0]])
    (u,) = updates("second_moment(full, eps=1e-3, eps_mode=floor, bias_correction=none, beta2=0.0)", [g])
    torch.testing.assert_close(u, g * g.square().clamp(min=1e-6).rsqrt())


def test_row_correction_counts_steps_with_a_non_zero_row() -> None:
    p = torch.nn.Parameter(torch.zeros(2, 3))
    from optispace import Optimizer

    opt = Optimizer([p], {"matrix": "second_moment(row, bias_correction=row)"}, lr=0.0)
    for t in range(3):
        p.grad = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]) if t else torch.ones(2, 3)
        opt.step()
    assert opt.state[p]["second_moment.count"].tolist() == [3.0, 1.0]


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"shape": "diagonal"}, ["shape='diagonal'", "full, row, col, factored, scalar"]),
    ({"beta2": 1.0}, ["beta2=1.0", "[0, 1)"]),
    ({"eps": -1e-8}, ["eps=-1e-08", ">= 0"]),
    ({"eps": float("inf")}, ["eps=inf", "finite"]),
    ({"eps_mode": "sqrt"}, ["eps_mode='sqrt'", "add, floor"]),
    ({"bias_correction": "global"}, ["bias_correction='global'", "step, row, none"]),
    ({"source": "param"}, ["source='param'", "grad, update"]),
    ({"beta2_decay": 0.5}, ["beta2_decay=0.5", "<= 0"]),
    ({"beta2_decay": -0.8, "beta2": 0.9}, ["beta2=0.9", "beta2_decay"]),
    ({"shape": "col", "bias_correction": "row"}, ["bias_correction='row'", "no rows"]),
    ({"beta2_decay": -0.8, "bias_correction": "row"}, ["bias_correction='row'", "schedule"]),
])
def test_bad_arguments_name_primitive_argument_value_and_what_is_allowed(kwargs, words) -> None:
    assert_refused(SecondMoment, kwargs, words)


def sparse_rows(rows: int, cols: int, seed: int, kept: float) -> torch.Tensor:
    """A gradient whose rows are zero but for a fraction ``kept`` (as a token table's)."""
    keep = torch.rand(rows, generator=torch.Generator().manual_seed(seed)) < kept
    return randn((rows, cols), seed) * keep.unsqueeze(1)


# kept 0.1 and 0.45: the row-sparse update (one and two gathered blocks); 0.7: dense; 0.99: a decay waits
@pytest.mark.parametrize(("scale", "kept"),
                         [(1.0, 1.0), (0.99, 1.0), (1.0, 0.1), (1.0, 0.45), (1.0, 0.7), (0.99, 0.1)])
def test_factored_as_last_primitive_updates_block_by_block_with_the_same_bits(scale: float,
                                                                              kept: float) -> None:
    from primitives import Context, Workspace

    rows, cols = 700, 1000  # three blocks of rows on CPU
    grads = [sparse_rows(rows, cols, seed, kept) for seed in (0, 2)]
    # a row whose squares underflow to 0 is still a row with a gradient
    grads[1][5] = 1e-30
    start = randn((rows, cols), 1)
    start[5] = 0.0
    prim = SecondMoment("factored", beta2=0.95)
    results, scratch = [], []
    for final in (False, True):
        param, state, workspace = start.clone(), prim.init_state((rows, cols), start.device), Workspace()
        for step, grad in enumerate(grads, 1):
            ctx = Context(grad=grad, param=param, step=step, lr=0.1, workspace=workspace, final=final,
                          param_scale=scale)
            u = prim.apply(grad, state, ctx)
            assert ctx.applied is final
            if not ctx.applied:
                ctx.update(param, u)
            scratch.append(max(b.numel() for b in workspace._taken))
            workspace.release()
        results.append(param)
    assert torch.equal(results[0], results[1])
    assert (results[1][5] != 0).all()
    # Fused, the scratch is a block of rows and the squares' block, never a table-sized direction.
    assert max(scratch[2:]) < rows * cols // 2 <= max(scratch[:2])

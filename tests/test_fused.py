"""The fused step: each primitive's pure form against its eager one, the compiled step against the
eager step (tolerance below), no recompilation across numbers, resume bit for bit.

Tolerance: the scalar factors are the eager step's (made in Python floats, passed as float64), but
the compiler orders and contracts the float32 element arithmetic its own way (fused multiply-adds,
lerp), so the two are not bit for bit: every parameter agrees to 1e-6 of its largest entry
(measured: 8e-8 and 7e-8 after 6 steps of ``adamw`` and ``ember`` on a small model).
"""

from __future__ import annotations

import io

import pytest
import torch
from test_primitives_base import one_thread  # noqa: F401 (autouse fixture)
from torch import nn

import optispace.fused as fused
from optispace import Optimizer, parse_chain

FUSABLE = [
    "weight_decay(0.1) > momentum(0.9) > second_moment(full)",
    "l2(0.01) > momentum(0.9, kind=heavy_ball, dampening=0.1)",
    "momentum(0.9, kind=heavy_ball, nesterov=True)",
    "weight_decay(0.1) > momentum(0.9, kind=lion, beta2=0.99) > sign",
    "momentum(0.95, nesterov=True) > shape_scale(match_rms_adamw)",
    "momentum(0.9, bias_correction=False) > second_moment(factored, beta2=0.95)",
    "second_moment(factored, beta2_decay=-0.8, eps=0.001, eps_mode=floor)",
    "second_moment(row, eps=0.001) > momentum(0.9)",
    "second_moment(col, bias_correction=none)",
    "second_moment(scalar)",
    "momentum(0.9) > second_moment(full, eps=0.001, eps_mode=floor, source=update)",
    "l2(0.01) > second_moment(full, beta2=0.99, bias_correction=none) > momentum(0.5, kind=heavy_ball)",
]


def params(seed: int = 0) -> list[tuple[str, nn.Parameter]]:
    gen = torch.Generator().manual_seed(seed)
    return [("w", nn.Parameter(torch.randn(6, 5, generator=gen))),
            ("t", nn.Parameter(torch.randn(9, 4, generator=gen)))]


def run(opt: Optimizer, ps: list[tuple[str, nn.Parameter]], steps: range) -> None:
    for s in steps:
        gen = torch.Generator().manual_seed(100 + s)
        for _, p in ps:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()


def assert_close(a: list, b: list, rtol: float) -> None:
    for (name, x), (_, y) in zip(a, b, strict=True):
        err = (x - y).abs().max().item()
        assert err <= rtol * y.abs().max().item(), f"{name}: max difference {err:.3g}"


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty cache of compiled steps, so what a test compiles is its own."""
    monkeypatch.setattr(fused, "_COMPILED", {})


@pytest.mark.parametrize("text", FUSABLE)
def test_each_pure_form_computes_what_apply_does(text: str, fresh: None,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fused, "BACKEND", None)
    assert parse_chain(text).fusable
    eager, pure = params(), params()
    opts = [Optimizer(ps, {"matrix": text}, lr=1e-2, fused=f) for ps, f in ((eager, None), (pure, True))]
    for opt, ps in zip(opts, (eager, pure), strict=True):
        run(opt, ps, range(5))
    assert_close(pure, eager, 1e-6)


@pytest.mark.parametrize("text", ["momentum(0.9) > orthogonalize", "normalize(row)", "clip_rms",
                                  "relative_step > second_moment(factored)",
                                  "second_moment(full, bias_correction=row)"])
def test_a_chain_without_pure_forms_steps_eagerly_under_fused(text: str, fresh: None) -> None:
    assert not parse_chain(text).fusable
    eager, pure = params(), params()
    opts = [Optimizer(ps, {"matrix": text}, lr=1e-2, fused=f) for ps, f in ((eager, None), (pure, True))]
    for opt, ps in zip(opts, (eager, pure), strict=True):
        run(opt, ps, range(3))
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(eager, pure, strict=True))
    assert fused._COMPILED == {}


def test_compiled_numbers_are_inputs_so_trials_do_not_recompile(fresh: None,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    monkeypatch.setattr(fused, "BACKEND", counter)
    gen = torch.Generator().manual_seed(0)
    for trial in range(20):
        lr, b1, b2, wd = (10 ** (-4 + 2 * torch.rand((), generator=gen).item()), 0.8 + 0.01 * trial,
                          0.95 + 0.002 * trial, 0.01 * (trial + 1))
        ps = params(trial)
        opt = Optimizer(ps, "adamw", lr=lr, betas=(b1, b2), weight_decay=wd, fused=True)
        run(opt, ps, range(3))
    # one compilation per layout (the role's tensors), whatever the lr, betas, decay and step
    assert counter.frame_count == 1


def test_the_compiled_step_matches_eager_and_resumes_bit_for_bit(fresh: None) -> None:
    recipe = {"matrix": "weight_decay(0.1) > momentum(0.9) > second_moment(full)",
              "vector": "weight_decay(0.1) > second_moment(factored)"}
    ps = [("w", nn.Parameter(torch.randn(6, 5))), ("b", nn.Parameter(torch.randn(7)))]
    eager = [(n, nn.Parameter(p.detach().clone())) for n, p in ps]
    opt = Optimizer(ps, recipe, lr=1e-2, fused=True)
    run(opt, ps, range(3))
    run_eager = Optimizer(eager, recipe, lr=1e-2)
    run(run_eager, eager, range(3))
    saved_p = [(n, p.detach().clone()) for n, p in ps]
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    run(opt, ps, range(3, 6))
    run(run_eager, eager, range(3, 6))
    assert_close(ps, eager, 1e-6)

    resumed = [(n, nn.Parameter(p)) for n, p in saved_p]
    opt2 = Optimizer(resumed, recipe, lr=1e-2, fused=True)
    buffer.seek(0)
    opt2.load_state_dict(torch.load(buffer))
    run(opt2, resumed, range(3, 6))
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(ps, resumed, strict=True))
    assert len(fused._COMPILED) == 2


def test_fused_and_foreach_together_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot be given together"):
        Optimizer(params(), "adamw", fused=True, foreach=True)

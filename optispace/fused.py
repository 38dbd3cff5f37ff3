"""The fused step: a chain's pure update over every tensor of a group, compiled by ``torch.compile``.

``Optimizer(..., fused=True)`` steps a group whose chain is fusable (every primitive has a pure
form) through :func:`step`: one compiled function per (chain structure, layout of the group's
tensors: shapes, dtypes, device), in which the lr and each primitive's scalars at each parameter's
step (``Chain.scalars``: ``1 - beta2``, bias corrections, ``1 - lr * rate``, made in Python floats
as the eager step makes them) come in as float64 tensors. Chains that differ only in numbers (the
trials of a search over lrs and betas) therefore run the same compiled code, without recompiling;
inductor fuses each parameter's whole update into one loop over its elements (C++ on CPU, Triton
on CUDA), as torch's ``fused=True`` kernels do. What differs from the eager step is how the
compiler orders and contracts the float32 element arithmetic (``tests/test_fused.py`` states the
tolerance).
"""

from __future__ import annotations

import shutil
import types
from collections.abc import Callable
from typing import Any

import torch

from optispace.chain import Chain
from optispace.native import install as install_native
from primitives import PureContext

# The factored second moment's one-read first pass, for the eager step (which imports this module) too.
install_native()

#: The ``torch.compile`` backend; ``None`` runs the pure update uncompiled (tests check its math
#: that way, and count compilations with a counting backend here).
BACKEND: Any = "inductor"
_COMPILED: dict[tuple, tuple[Chain, Callable]] = {}


def unavailable(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot run the fused step on ``device``, or ``None`` when it can."""
    try:
        torch._dynamo.eval_frame.check_if_dynamo_supported()
    except RuntimeError as e:
        return str(e)
    if device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "clang++", "c++")):
        return "torch.compile needs a C++ compiler on CPU and none is on the PATH"
    return None


def step(chain: Chain, params: list[torch.Tensor], states: list[dict[str, Any]], lr: float) -> None:
    """One step of ``chain`` for ``params`` (with gradients, on one device) and their state.

    Each state's ``step`` count is already advanced; the tensor state is updated in place.
    """
    device = params[0].device
    key = (chain.structure, tuple((tuple(p.shape), p.dtype, p.grad.dtype) for p in params), device)
    if key not in _COMPILED:
        code = _own_code(_update, len(_COMPILED))
        _COMPILED[key] = (chain, code if BACKEND is None else
                          torch.compile(code, backend=BACKEND, fullgraph=True, dynamic=False))
    representative, compiled = _COMPILED[key]

    names = tuple(name for keys in chain.state_keys for name in keys.values())
    scalars = _scalars(chain, states, lr, device)
    # Flat lists, not dicts: dynamo checks every container of the inputs on every call.
    compiled(representative, names, tuple(tuple(hp) for hp in scalars), params, [p.grad for p in params],
             [s[k] for s in states for k in names], torch.tensor(lr, dtype=torch.float64, device=device),
             [t for hp in scalars for t in hp.values()])


def _scalars(chain: Chain, states: list[dict[str, Any]], lr: float,
             device: torch.device) -> list[dict[str, torch.Tensor]]:
    """Per primitive, name -> a float64 tensor of that scalar for each parameter (its own step)."""
    by_step = {step: chain.scalars(step, lr) for step in {s["step"] for s in states}}
    if len(by_step) == 1:  # the usual case: every parameter took every step
        (one,) = by_step.values()
        return [{name: torch.full((len(states),), value, dtype=torch.float64, device=device)
                 for name, value in hp.items()} for hp in one]
    each = [by_step[s["step"]] for s in states]
    return [{name: torch.tensor([e[j][name] for e in each], dtype=torch.float64, device=device)
             for name in first} for j, first in enumerate(each[0])]


def _update(chain: Chain, state_names: tuple[str, ...], scalar_names: tuple[tuple[str, ...], ...],
            params: list[torch.Tensor], grads: list[torch.Tensor], states: list[torch.Tensor],
            lr: torch.Tensor, scalars: list[torch.Tensor]) -> None:
    """``p <- p' - step_size * chain(g)`` for every parameter, ``p'`` the parameter as the chain left it.

    ``states``: each parameter's state tensors in ``state_names`` order, one parameter after the
    other; ``scalars``: per primitive, per name of ``scalar_names``, one value per parameter.
    """
    named, at = [], 0
    for names in scalar_names:
        named.append(dict(zip(names, scalars[at: at + len(names)], strict=True)))
        at += len(names)
    n = len(state_names)
    for i, p in enumerate(params):
        grad = grads[i].float()
        ctx = PureContext(grad=grad, param=p.float(), lr=lr, step_size=lr)
        state = dict(zip(state_names, states[i * n: (i + 1) * n], strict=True))
        u = chain.pure(grad, state, ctx, [{k: t[i] for k, t in hp.items()} for hp in named])
        p.copy_(ctx.param - ctx.step_size * u)


def _own_code(fn: types.FunctionType, n: int) -> types.FunctionType:
    """``fn`` with a code object of its own: dynamo keeps its compiled entries per code object, and
    a study's many (structure, layout) pairs would otherwise exhaust one object's recompile limit."""
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{n}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)

"""The contract every primitive keeps.

A primitive turns an update direction ``u`` (a tensor shaped like the parameter) into a new one.
It declares its state before anything is allocated (so memory is counted exactly), and it may
read a :class:`Context`: the raw gradient, the parameter, the step count, the learning rate.

Primitives are frozen dataclasses: their fields are their arguments, equality and hashing are by
value, and the canonical text form of a chain is generated from the fields (see
``optispace.chain``). Only torch and einops may be imported under ``primitives/``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

REGISTRY: dict[str, type[Primitive]] = {}


def register(cls: type[Primitive]) -> type[Primitive]:
    """Class decorator: make ``cls`` reachable from chain text under ``cls.name``."""
    if cls.name in REGISTRY:
        raise ValueError(f"primitive name {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


@dataclass(frozen=True)
class StateSpec:
    """One state tensor a primitive keeps per parameter: ``name``, ``shape``, ``dtype``."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=self.dtype).element_size()


class Workspace:
    """Scratch buffers reused from one step to the next, for what a step computes and drops.

    On CPU every fresh allocation of a large tensor is fresh memory from the OS and page-faults on
    first touch, which for a 50K x 768 table costs more than the arithmetic; so CPU buffers are
    kept and handed out again. On accelerators the caching allocator already does this, and a
    buffer is a plain ``torch.empty``. Buffers are workspace, not optimizer state: they hold
    nothing from one step to the next and are not counted in state bytes.
    """

    def __init__(self) -> None:
        self._free: list[torch.Tensor] = []
        self._taken: list[torch.Tensor] = []

    def take(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """An uninitialized fp32 tensor of ``shape``, not aliasing any other taken buffer."""
        if device.type != "cpu":
            return torch.empty(shape, device=device)
        n = math.prod(shape)
        # The smallest free buffer that fits; found by position, since tensors compare by value.
        fitting = sorted((b.numel(), i) for i, b in enumerate(self._free) if b.numel() >= n)
        buf = self._free.pop(fitting[0][1]) if fitting else torch.empty(n)
        self._taken.append(buf)
        return (buf if buf.numel() == n else buf[:n]).view(shape)

    def release(self) -> None:
        """Every taken buffer is free again (the step that used them is over)."""
        self._free.extend(self._taken)
        self._taken.clear()


@dataclass(frozen=True)
class Shard:
    """Where a parameter's local block sits in the whole: FSDP2's ``Shard(0)`` over a 1-D mesh.

    ``mesh`` is the ``DeviceMesh`` (its group is the shard group), ``shape`` the whole tensor's
    shape, ``offset`` the first index along dim 0 held here (torch.chunk's split: the last ranks may
    hold fewer entries, or none). On the (rows, columns) view (:func:`matrix_shape`) dim 0 is the rows
    of a tensor of 2 or more dimensions and the columns of a vector: :attr:`split` says which.
    """

    mesh: Any
    shape: tuple[int, ...]
    offset: int

    @property
    def split(self) -> int:
        """The axis of the (rows, columns) view the shard cuts: 0 (rows), 1 for a vector (columns)."""
        return 0 if len(self.shape) >= 2 else 1

    @property
    def group(self) -> Any:
        """The process group whose ranks hold the other blocks."""
        return self.mesh.get_group()

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """The whole tensor from every rank's ``local`` block (one all-gather, DTensor's)."""
        from torch.distributed.tensor import DTensor
        from torch.distributed.tensor import Shard as DimShard

        stride = torch.empty(self.shape, device="meta").stride()
        whole = DTensor.from_local(local, self.mesh, [DimShard(0)], run_check=False, shape=self.shape,
                                   stride=stride)
        return whole.full_tensor()

    def mine(self, whole: torch.Tensor, n: int) -> torch.Tensor:
        """This rank's block of ``whole``: ``n`` entries of dim 0 from :attr:`offset`."""
        return whole[self.offset: self.offset + n]


@dataclass
class Context:
    """What a primitive may read besides ``u``.

    ``grad`` is the raw gradient in fp32; ``param`` is the parameter in fp32 (for a bf16 or fp16
    parameter, a working copy the optimizer writes back), which primitives like decoupled weight
    decay change in place; ``step`` is the 1-based count of steps this parameter has taken; ``lr``
    is the learning rate of its group.

    ``step_size`` is what the optimizer finally multiplies the direction by (``param -= step_size
    * u``); it starts at ``lr``, and scaling primitives (shape scaling, Adafactor's relative step)
    change it instead of touching ``u``, so that clipping and normalization never see the scale.
    ``deferrable`` is set by the chain: True when every later primitive is homogeneous (see
    :attr:`Primitive.homogeneous`), so a scalar factor may be folded into ``step_size``.
    ``workspace`` hands out scratch buffers (:meth:`buffer`) that live until the parameter's update
    is applied.

    The update is ``param <- param_scale * param - step_size * u`` (:meth:`update`). ``param_scale``
    is a decoupled decay not yet applied: a decay may wait for the update (one pass over the
    parameter instead of two) when ``param_settled``, i.e. no later primitive reads ``param``.
    ``final`` (set by the optimizer's chain for the last primitive) allows the primitive to make the
    update itself, e.g. block by block while its direction is in cache; it then sets ``applied``.

    ``shard`` is set when ``grad``, ``param`` and the state are one rank's block of a sharded
    parameter (:class:`Shard`); ``sums`` then holds the sum over the shard group of what this
    primitive's :meth:`Primitive.partials` returned (``None`` when it returned nothing).
    """

    grad: torch.Tensor
    param: torch.Tensor
    step: int
    lr: float
    step_size: float | None = None
    deferrable: bool = False
    workspace: Workspace | None = None
    param_scale: float = 1.0
    param_settled: bool = False
    final: bool = False
    applied: bool = False
    shard: Shard | None = None
    sums: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.step_size is None:
            self.step_size = self.lr

    def scaled(self, u: torch.Tensor, factor: float) -> torch.Tensor:
        """``factor * u``: folded into ``step_size`` when no later primitive would see the difference.

        ``u`` may be a state tensor (momentum returns its buffer), so it is never scaled in place.
        """
        if factor == 1.0:
            return u
        if self.deferrable:
            self.step_size *= factor
            return u
        return torch.mul(u, factor, out=self.buffer(u.shape, u.device))

    def update(self, param: torch.Tensor, u: torch.Tensor) -> None:
        """``param <- param_scale * param - step_size * u`` in place (``param`` may be a block of rows).

        The decay and the step are two roundings, as torch AdamW's ``mul_`` then ``add_``.
        """
        if self.param_scale != 1.0:
            param.mul_(self.param_scale)
        param.add_(u, alpha=-self.step_size)

    def buffer(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """A scratch fp32 tensor (uninitialized) for a result this step computes."""
        if self.workspace is None:
            return torch.empty(shape, device=device)
        return self.workspace.take(tuple(shape), device)


@dataclass
class PureContext:
    """What a primitive's :meth:`Primitive.pure` reads: :class:`Context` with every number a tensor.

    ``lr`` and ``step_size`` are 0-d float64 tensors, so code compiled for one chain runs any chain
    of the same structure (other lrs, betas, step counts) without recompiling, and so the scalars
    are :class:`Context`'s Python floats to the bit (in float32, ``1 - beta2`` of 0.999 would be off
    by 1.3e-5 of itself). ``param`` is the parameter's fp32 value as the chain has left it so far
    (a decoupled decay replaces it by the decayed value, functionally); the update is
    ``param - step_size * u``. ``deferrable`` is :class:`Context`'s: a scalar factor may ride on
    ``step_size``.
    """

    grad: torch.Tensor
    param: torch.Tensor
    lr: torch.Tensor
    step_size: torch.Tensor
    deferrable: bool = False

    def scaled(self, u: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        """``factor * u``, folded into ``step_size`` when no later primitive would see the difference."""
        if self.deferrable:
            self.step_size = self.step_size * factor
            return u
        return u * factor


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """The (rows, columns) view every shape-aware primitive uses.

    A tensor of shape ``(d0, d1, ..., dk)`` is ``d0`` rows of ``d1 * ... * dk`` columns (an
    embedding table is V rows of D); a vector is one row; a scalar is one row of one column.
    """
    if len(shape) < 2:
        return 1, math.prod(shape)
    return shape[0], math.prod(shape[1:])


def square_sum(t: torch.Tensor) -> torch.Tensor:
    """``sum(t^2)`` as a 1-element fp32 vector: a shard's part of a norm (see :meth:`Primitive.partials`)."""
    return torch.linalg.vector_norm(t.float()).square_().reshape(1)


def check_arg(primitive: str, arg: str, value: Any, ok: bool, allowed: str) -> None:
    """Raise the house ``ValueError`` (primitive, argument, value, what is allowed) unless ``ok``."""
    if not ok:
        raise ValueError(f"{primitive}: {arg}={value!r} is not allowed; {arg} must be {allowed}")


def check_finite(primitive: str, arg: str, value: Any, *, positive: bool) -> None:
    """The house check for a finite number, ``> 0`` when ``positive`` else ``>= 0``."""
    ok = isinstance(value, float) and (value > 0.0 if positive else value >= 0.0) and value < math.inf
    check_arg(primitive, arg, value, ok, f"a finite number {'>' if positive else '>='} 0")


@dataclass(frozen=True)
class Primitive:
    """Base class. Subclasses are ``@register``-ed frozen dataclasses that set ``name``.

    ``positional`` names the fields written without ``key=`` in the canonical text, in order
    (e.g. ``second_moment(factored, beta2=0.95)``); every other field is written as ``key=value``
    when it differs from its default.
    """

    name: ClassVar[str] = ""
    positional: ClassVar[tuple[str, ...]] = ()
    #: Fields that take one of a few words: field -> the words allowed (checked before validate()).
    choices: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: True when ``apply(c * u) == c * apply(u)`` for every scalar ``c > 0`` and the state never
    #: stores ``u``: an earlier primitive may then fold a scalar into ``Context.step_size``.
    homogeneous: ClassVar[bool] = False
    #: True when ``apply`` reads ``ctx.param`` (or changes it): an earlier decay must then be made first.
    reads_param: ClassVar[bool] = False

    def __post_init__(self) -> None:
        for field, value in _as_declared_floats(self).items():
            object.__setattr__(self, field, value)
        for field, allowed in self.choices.items():
            value = getattr(self, field)
            check_arg(self.name, field, value, value in allowed, f"one of {', '.join(allowed)}")
        self.validate()

    def validate(self) -> None:
        """Check the arguments; raise ``ValueError`` via :func:`check_arg`."""

    def check_shape(self, shape: tuple[int, ...]) -> None:
        """Raise ``ValueError`` when this primitive cannot act on a parameter of ``shape``."""

    def state_specs(self, shape: tuple[int, ...]) -> list[StateSpec]:
        """The state kept for a parameter of ``shape`` (names do not depend on it); empty if none."""
        return []

    def init_state(self, shape: tuple[int, ...], device: torch.device) -> dict[str, torch.Tensor]:
        """Allocate exactly what :meth:`state_specs` declares, zero-filled."""
        return {
            s.name: torch.zeros(s.shape, dtype=s.dtype, device=device) for s in self.state_specs(shape)
        }

    def apply(self, u: torch.Tensor, state: dict[str, torch.Tensor], ctx: Context) -> torch.Tensor:
        """Return the new direction. May update ``state`` (and, for decay, ``ctx.param``) in place."""
        raise NotImplementedError

    def partials(self, u: torch.Tensor, state: dict[str, torch.Tensor], ctx: Context) -> torch.Tensor | None:
        """On a shard (``ctx.shard``): the local sums that :meth:`apply` needs summed over the shard
        group, as one fp32 vector (their sum reaches ``apply`` as ``ctx.sums``); ``None``: none needed.

        Called just before :meth:`apply`, with the same arguments. Elementwise primitives need none.
        """
        return None

    def apply_many(self, us: list[torch.Tensor], states: list[dict[str, torch.Tensor]],
                   ctxs: list[Context]) -> list[torch.Tensor]:
        """:meth:`apply` for several parameters at once, with the same results.

        Primitives on the hot path override it with ``torch._foreach_*`` operations, which launch
        one kernel for all the tensors of a group on an accelerator instead of one per tensor.
        """
        return [self.apply(u, s, c) for u, s, c in zip(us, states, ctxs, strict=True)]

    @property
    def fusable(self) -> bool:
        """Has this primitive a :meth:`pure` form (so a chain of such can be compiled whole)?"""
        return type(self).pure is not Primitive.pure

    def numbers(self) -> dict[str, float]:
        """The float arguments that are set (``beta``, ``eps``, ...): what :meth:`pure` takes as tensors.

        Everything else (words, flags, integers, ``None``) is the primitive's structure.
        """
        return {name: getattr(self, name) for name, is_tuple in _float_fields(type(self))
                if not is_tuple and getattr(self, name) is not None}

    def scalars(self, step: int, lr: float) -> dict[str, float]:
        """The numbers :meth:`pure` uses at this step (bias corrections, ``1 - beta``, ...), made
        with the Python float arithmetic :meth:`apply` uses; by default :meth:`numbers`.

        They are made outside compiled code because there each would be made again for every
        vector of elements (a ``pow`` per 8 floats); and the same names at every step and lr."""
        return self.numbers()

    def pure(self, u: torch.Tensor, state: dict[str, torch.Tensor], ctx: PureContext,
             hp: dict[str, torch.Tensor]) -> torch.Tensor:
        """:meth:`apply` as tensor operations only, with :meth:`scalars` given as 0-d float64 ``hp``.

        No branch on a number and no ``.item()``: ``torch.compile`` traces it once per structure.
        State may be updated in place; the parameter is not (see :class:`PureContext`).
        """
        raise NotImplementedError(f"{self.name} has no pure form")

    def arguments(self) -> dict[str, Any]:
        """The fields as a name -> value mapping, in declaration order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@functools.cache
def _float_fields(cls: type[Primitive]) -> tuple[tuple[str, bool], ...]:
    """(field, is_tuple) for the fields declared ``float``, ``float | None`` or ``tuple[float, ...]``."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        args = typing.get_args(hints[f.name])
        if typing.get_origin(hints[f.name]) is tuple:
            if args and args[0] is float:
                out.append((f.name, True))
        elif hints[f.name] is float or float in args:
            out.append((f.name, False))
    return tuple(out)


def _as_declared_floats(p: Primitive) -> dict[str, Any]:
    """The integer values of float fields, as floats: ``momentum(1)`` and ``momentum(1.0)`` are one."""

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    out: dict[str, Any] = {}
    for name, is_tuple in _float_fields(type(p)):
        value = getattr(p, name)
        if is_tuple and isinstance(value, tuple | list):
            out[name] = tuple(float(v) if is_int(v) else v for v in value)
        elif is_int(value):
            out[name] = float(value)
    return out

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
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * torch.empty((), dtype=self.dtype).element_size()


@dataclass
class Context:
    """What a primitive may read besides ``u``.

    ``grad`` is the raw gradient in fp32; ``param`` is the parameter itself (it may be bf16:
    primitives that change it, like decoupled weight decay, do so in place); ``step`` is the
    1-based count of steps this parameter has taken; ``lr`` is the learning rate of its group.
    """

    grad: torch.Tensor
    param: torch.Tensor
    step: int
    lr: float


def check_arg(primitive: str, arg: str, value: Any, ok: bool, allowed: str) -> None:
    """Raise the house ``ValueError`` (primitive, argument, value, what is allowed) unless ``ok``."""
    if not ok:
        raise ValueError(f"{primitive}: {arg}={value!r} is not allowed; {arg} must be {allowed}")


@dataclass(frozen=True)
class Primitive:
    """Base class. Subclasses are ``@register``-ed frozen dataclasses that set ``name``.

    ``positional`` names the fields written without ``key=`` in the canonical text, in order
    (e.g. ``second_moment(factored, beta2=0.999)``); every other field is written as ``key=value``
    when it differs from its default.
    """

    name: ClassVar[str] = ""
    positional: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check the arguments; raise ``ValueError`` via :func:`check_arg`."""

    def check_shape(self, shape: tuple[int, ...]) -> None:
        """Raise ``ValueError`` when this primitive cannot act on a parameter of ``shape``."""

    def state_specs(self, shape: tuple[int, ...]) -> list[StateSpec]:
        """The state kept for a parameter of ``shape``; empty for stateless primitives."""
        return []

    def init_state(self, shape: tuple[int, ...], device: torch.device) -> dict[str, torch.Tensor]:
        """Allocate exactly what :meth:`state_specs` declares, zero-filled."""
        return {
            s.name: torch.zeros(s.shape, dtype=s.dtype, device=device) for s in self.state_specs(shape)
        }

    def apply(self, u: torch.Tensor, state: dict[str, torch.Tensor], ctx: Context) -> torch.Tensor:
        """Return the new direction. May update ``state`` (and, for decay, ``ctx.param``) in place."""
        raise NotImplementedError

    def arguments(self) -> dict[str, Any]:
        """The fields as a name -> value mapping, in declaration order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

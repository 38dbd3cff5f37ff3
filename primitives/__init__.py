"""Composable optimizer primitives: small tensor transforms that declare their own state.

Importing this package registers every primitive in :data:`REGISTRY` under its chain-text name.
"""

from primitives.base import (
    REGISTRY,
    Context,
    Primitive,
    PureContext,
    Shard,
    StateSpec,
    Workspace,
    check_arg,
    matrix_shape,
    register,
)
from primitives.decay import L2, WeightDecay
from primitives.momentum import Momentum
from primitives.normalize import ClipRMS, Normalize
from primitives.orthogonalize import Orthogonalize
from primitives.scaling import RelativeStep, ShapeScale
from primitives.second_moment import SecondMoment
from primitives.sign import Sign

__all__ = [
    "L2", "REGISTRY", "ClipRMS", "Context", "Momentum", "Normalize", "Orthogonalize", "Primitive",
    "PureContext", "RelativeStep", "SecondMoment", "Shard", "ShapeScale", "Sign", "StateSpec", "WeightDecay",
    "Workspace", "check_arg", "matrix_shape", "register",
]

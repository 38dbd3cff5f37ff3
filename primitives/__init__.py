"""Composable optimizer primitives: small tensor transforms that declare their own state."""

from primitives.base import REGISTRY, Context, Primitive, StateSpec, check_arg, register

__all__ = ["REGISTRY", "Context", "Primitive", "StateSpec", "check_arg", "register"]

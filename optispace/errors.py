"""Errors a user can cause. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations

import importlib
from types import ModuleType


class UserError(Exception):
    """A mistake in the user's input: say what was wrong, where, and what to do instead."""


class MissingExtra(UserError, ImportError):
    """An optional dependency is not installed: names the extra that brings it."""


#: optispace's extras (pyproject's optional dependencies) -> the package each brings.
EXTRAS = {"tensorboard": "tensorboard", "wandb": "wandb", "postgres": "psycopg2-binary", "gp": "scipy"}


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtra` saying that ``what`` needs ``extra``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f"{what} needs {EXTRAS[extra]}, which is not installed; install it with "
                           f"pip install 'optispace[{extra}]'") from None

"""optispace: optimizer design-space exploration for Transformer training.

The public names load on first use (PEP 562), so importing the package, as ``optispace --help``
does, loads neither torch nor anything else heavy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name -> the module that defines it.
_EXPORTS = {
    "Chain": "optispace.chain",
    "parse_chain": "optispace.chain",
    "Optimizer": "optispace.optimizer",
    "state_bytes_for": "optispace.optimizer",
    "sharded_state_bytes": "optispace.optimizer",
    "RECIPES": "optispace.recipes",
    "Recipe": "optispace.recipes",
    "ROLES": "optispace.roles",
    "assign_roles": "optispace.roles",
}

__all__ = [
    "RECIPES", "ROLES", "Chain", "Optimizer", "Recipe", "assign_roles", "parse_chain", "sharded_state_bytes",
    "state_bytes_for",
]

if TYPE_CHECKING:
    from optispace.chain import Chain, parse_chain
    from optispace.optimizer import Optimizer, sharded_state_bytes, state_bytes_for
    from optispace.recipes import RECIPES, Recipe
    from optispace.roles import ROLES, assign_roles


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'optispace' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})

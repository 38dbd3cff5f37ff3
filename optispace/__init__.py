"""optispace: optimizer design-space exploration for Transformer training."""

from optispace.chain import Chain, parse_chain
from optispace.optimizer import Optimizer, state_bytes_for
from optispace.recipes import RECIPES, Recipe
from optispace.roles import ROLES, assign_roles

__all__ = [
    "RECIPES", "ROLES", "Chain", "Optimizer", "Recipe", "assign_roles", "parse_chain", "state_bytes_for",
]

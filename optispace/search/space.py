"""Define-by-run sampling of one configuration: a chain and its numbers per role.

Optuna parameter names are ``<role>.<family>`` for choices and ``<role>.<number>`` for numbers
(``lr``, ``beta1``, ``beta2``, ``weight_decay``). A number is sampled only when the sampled chain
uses it (``beta1`` only with a momentum), so the space is conditional and never carries dead
parameters. A tied role copies the draw of the role it is tied to. Choices that cannot act on a
role were already refused by the spec, so every sampled chain is valid by construction.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import optuna

from optispace.chain import Chain, parse_chain
from optispace.search.families import FAMILIES, WEIGHT_DECAY, Choice, uses
from optispace.search.spec import ROLES, Number, Range, RecipeChoice, RoleSpace, SearchSpec, Values
from optispace.trial import without_idle


@dataclass(frozen=True)
class Draw:
    """One role's sample: the structure label, the chain trained, its lr and tuned numbers.

    The label is the chain trained with the tuned numbers at their defaults, primitive for
    primitive; a primitive a tuned number turns off (a weight decay of 0) is in neither.
    """

    structure: str
    trained: str
    lr: float
    numbers: dict[str, float]


@dataclass(frozen=True)
class Configuration:
    """A trial's sample for every role, in role order."""

    draws: dict[str, Draw]

    @property
    def structure(self) -> str:
        """``embed: ... | head: ... | matrix: ... | vector: ...``."""
        return " | ".join(f"{role}: {self.draws[role].structure}" for role in ROLES)

    @property
    def recipe(self) -> dict[str, str]:
        """The chain text trained per role, as ``TrainConfig(recipe=...)`` takes it."""
        return {role: draw.trained for role, draw in self.draws.items()}

    @property
    def role_lr(self) -> dict[str, float]:
        return {role: draw.lr for role, draw in self.draws.items()}

    @property
    def hp(self) -> dict[str, float]:
        """Every tuned number other than lr, as ``<role>.<name>``."""
        return {f"{role}.{name}": v for role, draw in self.draws.items() for name, v in draw.numbers.items()}


def sample_configuration(trial: optuna.Trial, spec: SearchSpec) -> Configuration:
    """Draw a configuration from the search's ``[recipes]``, else from its role spaces."""
    return sample_recipe(trial, spec.recipes) if spec.recipes else sample(trial, spec.roles)


def sample_recipe(trial: optuna.Trial, recipes: dict[str, RecipeChoice]) -> Configuration:
    """A ``[recipes]`` label (parameter ``recipe`` when there are several): its recipe with the
    hyperparameters it gives, and its lr (parameter ``<label>.lr``) on every role; its chains are
    their own structure labels."""
    from optispace.recipes import get_recipe

    labels = list(recipes)
    label = labels[0] if len(labels) == 1 else trial.suggest_categorical("recipe", labels)
    choice = recipes[label]
    lr = _suggest(trial, f"{label}.lr", choice.lr)
    chains = get_recipe(choice.recipe).chains(**choice.hyperparameters)
    return Configuration({role: Draw(str(chains[role]), str(chains[role]), lr, {}) for role in ROLES})


def configurations(spec: SearchSpec) -> int:
    """How many distinct configurations an enumerable search holds (see :func:`grid_size`)."""
    if spec.recipes:
        return sum(len(c.lr.values) if isinstance(c.lr, Values) else 1 for c in spec.recipes.values())
    return grid_size(spec.roles)


def sample(trial: optuna.Trial, roles: dict[str, RoleSpace]) -> Configuration:
    """Draw a configuration for ``trial`` from the validated role spaces."""
    draws: dict[str, Draw] = {}
    for role in ROLES:
        if roles[role].tie is None:
            draws[role] = _draw(trial, roles[role])
    for role in ROLES:
        tie = roles[role].tie
        if tie is not None:
            draws[role] = draws[tie]
    return Configuration({role: draws[role] for role in ROLES})


def _draw(trial: optuna.Trial, space: RoleSpace) -> Draw:
    role = space.role
    if space.chain is not None:
        text = str(parse_chain(space.chain))
        return Draw(text, text, _suggest(trial, f"{role}.lr", space.numbers["lr"]), {})
    picked: list[Choice] = []
    wanted: set[str] = set()
    for family, options in space.families.items():
        name = options[0] if len(options) == 1 else trial.suggest_categorical(f"{role}.{family}", options)
        picked.append(FAMILIES[family][name])
        wanted.update(n for n in space.numbers if uses(family, name, n))
    if "weight_decay" in space.numbers:
        picked.append(WEIGHT_DECAY)
        wanted.add("weight_decay")
    lr = _suggest(trial, f"{role}.lr", space.numbers["lr"])
    numbers = {n: _suggest(trial, f"{role}.{n}", space.numbers[n]) for n in space.numbers if n in wanted}
    structure, trained = without_idle(
        Chain(tuple(p for c in picked for p in c.primitives())),
        Chain(tuple(p for c in picked for p in c.with_numbers(numbers))),
    )
    return Draw(str(structure), str(trained), lr, numbers)


def _suggest(trial: optuna.Trial, name: str, number: Number) -> float:
    if isinstance(number, Range):
        return trial.suggest_float(name, number.low, number.high, log=number.log)
    if isinstance(number, Values):
        if len(number.values) == 1:
            return number.values[0]
        return float(trial.suggest_categorical(name, number.values))
    return number


def grid_size(roles: dict[str, RoleSpace]) -> int:
    """How many distinct configurations an enumerable space holds (no ranges in it).

    Per role, the sum over its family choices of the product of the value counts of the numbers
    those choices use; over roles, the product (a tied role adds nothing).
    """
    total = 1
    for space in roles.values():
        if space.tie is None:
            total *= _role_grid_size(space)
    return total


def _role_grid_size(space: RoleSpace) -> int:
    def values(name: str) -> int:
        number = space.numbers[name]
        return len(number.values) if isinstance(number, Values) else 1

    if space.chain is not None:
        return values("lr")
    size = 0
    for picked in itertools.product(*space.families.values()):
        used = {"lr"} | ({"weight_decay"} & set(space.numbers))
        used |= {
            n
            for family, name in zip(space.families, picked, strict=True)
            for n in space.numbers
            if uses(family, name, n)
        }
        size += math.prod(values(n) for n in used)
    return size

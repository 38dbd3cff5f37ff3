"""The named points of the space: each known optimizer as one chain per role.

Every recipe takes the hyperparameter names and defaults of the reference it matches (the test
``tests/test_recipes.py`` checks each against it, step for step). A hyperparameter that switches a
primitive off (a weight decay of 0) drops that primitive from the chain.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from optispace.chain import Chain, parse_call, parse_chain
from optispace.roles import ROLES
from primitives.second_moment import BIAS_CORRECTIONS

Hyperparameters = Mapping[str, Any]


@dataclass(frozen=True)
class Recipe:
    """A named optimizer: ``build(hyperparameters) -> {role: chain text}`` with its defaults."""

    name: str
    summary: str
    reference: str
    lr: float
    defaults: Mapping[str, Any]
    build: Callable[[Hyperparameters], dict[str, str]] = field(repr=False)

    def resolve(self, given: Hyperparameters) -> dict[str, Any]:
        """The defaults updated with ``given``; ``ValueError`` for a name this recipe does not take."""
        unknown = sorted(set(given) - set(self.defaults))
        if unknown:
            raise ValueError(f"recipe {self.name!r}: unknown hyperparameter(s) {', '.join(unknown)}; "
                             f"it takes {', '.join(self.defaults) or 'none'} (and lr, role_lr)")
        hp = dict(self.defaults)
        for key, value in given.items():
            hp[key] = _check_like(self.name, key, value, self.defaults[key])
        return hp

    def chains(self, **hyperparameters: Any) -> dict[str, Chain]:
        """One chain per role, for these hyperparameters (defaults for the rest)."""
        texts = self.build(self.resolve(hyperparameters))
        try:
            return {role: parse_chain(texts[role]) for role in ROLES}
        except ValueError as e:  # a value the recipe passes on that its primitive refuses
            raise ValueError(f"recipe {self.name!r}: {e}") from None


def _check_like(recipe: str, key: str, value: Any, default: Any) -> Any:
    """``value`` in the form of ``default`` (a sequence of the same length as a tuple default)."""
    if isinstance(default, tuple):
        if not isinstance(value, tuple | list) or len(value) != len(default):
            raise ValueError(f"recipe {recipe!r}: {key}={value!r} is not allowed; {key} must be "
                             f"a sequence of {len(default)} values like {default!r}")
        return tuple(value)
    if isinstance(default, float) and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ValueError(f"recipe {recipe!r}: {key}={value!r} is not allowed; {key} must be a number")
    if key in _CHOICES and value not in _CHOICES[key]:
        raise ValueError(f"recipe {recipe!r}: {key}={value!r} is not allowed; {key} must be one of "
                         f"{', '.join(_CHOICES[key])}")
    return value


#: Hyperparameters that take one of a few words: the primitive's own choices.
_CHOICES = {"bias_correction": BIAS_CORRECTIONS}


def _chain(*parts: str | None) -> str:
    """Join the parts that are present; nothing present is the plain gradient."""
    return " > ".join(p for p in parts if p) or "identity"


def _all_roles(text: str) -> dict[str, str]:
    return dict.fromkeys(ROLES, text)


def _decoupled(hp: Hyperparameters, key: str = "weight_decay") -> str | None:
    return f"weight_decay({hp[key]!r})" if hp[key] else None


def _coupled(hp: Hyperparameters) -> str | None:
    return f"l2({hp['weight_decay']!r})" if hp["weight_decay"] else None


def _adam_text(betas: tuple[float, float], eps: float, decay: str | None) -> str:
    return _chain(decay, f"momentum({betas[0]!r})", f"second_moment(full, beta2={betas[1]!r}, eps={eps!r})")


def _sgd(hp: Hyperparameters) -> dict[str, str]:
    momentum = None
    if hp["momentum"] or hp["dampening"] or hp["nesterov"]:
        momentum = (f"momentum({hp['momentum']!r}, kind=heavy_ball, dampening={hp['dampening']!r}, "
                    f"nesterov={hp['nesterov']!r})")
    return _all_roles(_chain(_coupled(hp), momentum))


def _adam(hp: Hyperparameters) -> dict[str, str]:
    return _all_roles(_adam_text(hp["betas"], hp["eps"], _coupled(hp)))


def _adamw(hp: Hyperparameters) -> dict[str, str]:
    return _all_roles(_adam_text(hp["betas"], hp["eps"], _decoupled(hp)))


def _rmsprop(hp: Hyperparameters) -> dict[str, str]:
    momentum = f"momentum({hp['momentum']!r}, kind=heavy_ball)" if hp["momentum"] else None
    second = f"second_moment(full, beta2={hp['alpha']!r}, eps={hp['eps']!r}, bias_correction=none)"
    return _all_roles(_chain(_coupled(hp), second, momentum))


def _adafactor(hp: Hyperparameters) -> dict[str, str]:
    eps1, eps2 = hp["eps"]
    # torch uses the parameter dtype's machine epsilon when eps1 is None; ours is fp32 throughout.
    eps1 = torch.finfo(torch.float32).eps if eps1 is None else eps1

    def text(shape: str) -> str:
        second = (f"second_moment({shape}, beta2_decay={hp['beta2_decay']!r}, eps={eps1!r}, "
                  "eps_mode=floor)")
        return _chain(f"relative_step({eps2!r})", _decoupled(hp), second, f"clip_rms({hp['d']!r})")

    # torch Adafactor factors tensors of 2 or more dimensions and keeps vectors whole.
    return {"embed": text("factored"), "head": text("factored"), "matrix": text("factored"),
            "vector": text("full")}


def _sign_text(hp: Hyperparameters, momentum: str) -> dict[str, str]:
    return _all_roles(_chain(_decoupled(hp), momentum, "sign"))


def _lion(hp: Hyperparameters) -> dict[str, str]:
    beta1, beta2 = hp["betas"]
    return _sign_text(hp, f"momentum({beta1!r}, kind=lion, beta2={beta2!r})")


def _signum(hp: Hyperparameters) -> dict[str, str]:
    return _sign_text(hp, f"momentum({hp['momentum']!r}, bias_correction=False)")


def _muon(hp: Hyperparameters) -> dict[str, str]:
    momentum = (f"momentum({hp['momentum']!r}, nesterov=True)" if hp["nesterov"]
                else f"momentum({hp['momentum']!r}, bias_correction=False)")
    coefficients = tuple(hp["ns_coefficients"])
    orthogonalize = (f"orthogonalize(steps={hp['ns_steps']!r}, coefficients={coefficients!r}, "
                     f"eps={hp['eps']!r}, dtype={hp['ns_dtype']})")
    scale = f"shape_scale({hp['adjust_lr_fn'] or 'original'})"
    adamw = _adam_text(hp["adamw_betas"], hp["adamw_eps"], _decoupled(hp, "adamw_weight_decay"))
    return {"embed": adamw, "head": adamw, "matrix": _chain(_decoupled(hp), momentum, orthogonalize, scale),
            "vector": adamw}


def _ember(hp: Hyperparameters) -> dict[str, str]:
    # "row" divides each row by 1 - beta2^n[i], n[i] the steps its gradient was nonzero, not by the
    # step's 1 - beta2^t: a row first seen late is then not under-corrected into an outsized step.
    correction = "" if hp["bias_correction"] == "step" else f", bias_correction={hp['bias_correction']}"
    second = f"second_moment(factored, beta2={hp['beta2']!r}, eps={hp['eps']!r}{correction})"
    tables = _chain(_decoupled(hp), second)
    adamw = _adam_text(hp["betas"], hp["eps"], _decoupled(hp))
    return {"embed": tables, "head": tables, "matrix": adamw, "vector": adamw}


_SGD_DEFAULTS = {"momentum": 0.0, "dampening": 0.0, "nesterov": False, "weight_decay": 0.0}
_ADAM_DEFAULTS = {"betas": (0.9, 0.999), "eps": 1e-8}

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe("sgd", "plain gradient descent", "torch.optim.SGD", 1e-3, _SGD_DEFAULTS, _sgd),
        Recipe("momentum", "SGD with heavy-ball momentum", "torch.optim.SGD(momentum=0.9)", 1e-3,
               {**_SGD_DEFAULTS, "momentum": 0.9}, _sgd),
        Recipe("nesterov", "SGD with Nesterov momentum", "torch.optim.SGD(momentum=0.9, nesterov=True)",
               1e-3, {**_SGD_DEFAULTS, "momentum": 0.9, "nesterov": True}, _sgd),
        Recipe("adam", "Adam (weight decay as an L2 term)", "torch.optim.Adam", 1e-3,
               {**_ADAM_DEFAULTS, "weight_decay": 0.0}, _adam),
        Recipe("adamw", "AdamW (decoupled weight decay)", "torch.optim.AdamW", 1e-3,
               {**_ADAM_DEFAULTS, "weight_decay": 1e-2}, _adamw),
        Recipe("rmsprop", "RMSprop", "torch.optim.RMSprop", 1e-2,
               {"alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0, "momentum": 0.0}, _rmsprop),
        Recipe("adafactor", "Adafactor: factored second moment, beta2 schedule, clipping, relative step",
               "torch.optim.Adafactor", 1e-2,
               {"beta2_decay": -0.8, "eps": (None, 1e-3), "d": 1.0, "weight_decay": 0.0}, _adafactor),
        Recipe("lion", "Lion: sign of an interpolated momentum", "lion_pytorch.Lion", 1e-4,
               {"betas": (0.9, 0.99), "weight_decay": 0.0}, _lion),
        Recipe("signum", "Signum: sign of momentum", "lion_pytorch.Lion with betas (momentum, momentum)",
               1e-4, {"momentum": 0.9, "weight_decay": 0.0}, _signum),
        Recipe("muon", "Muon on hidden matrices, AdamW elsewhere", "torch.optim.Muon + torch.optim.AdamW",
               1e-3,
               {"momentum": 0.95, "nesterov": True, "weight_decay": 0.1,
                "ns_coefficients": (3.4445, -4.775, 2.0315), "eps": 1e-7, "ns_steps": 5,
                "adjust_lr_fn": None, "ns_dtype": "bfloat16",
                "adamw_betas": (0.9, 0.999), "adamw_eps": 1e-8, "adamw_weight_decay": 1e-2},
               _muon),
        Recipe("ember", "Ember: factored second moment, no momentum, on the token tables; AdamW elsewhere",
               "the Ember formulas of the Token Geometry paper (arXiv 2607.01455)", 1e-3,
               {"beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "betas": (0.9, 0.999),
                "bias_correction": "step"}, _ember),
    ]
}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; ``ValueError`` listing the names otherwise."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; the recipes are {', '.join(RECIPES)}")
    return RECIPES[name]


def check_lr(lr: float, where: str) -> float:
    """``lr`` as a float, or ``ValueError`` unless it is a finite number >= 0."""
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not (0.0 <= lr < math.inf):
        raise ValueError(f"{where}: lr={lr!r} is not allowed; lr must be a finite number >= 0")
    return float(lr)


@dataclass(frozen=True)
class Variant:
    """A recipe with some hyperparameters (and perhaps its lr) given, as ``ember(bias_correction=row)``."""

    recipe: Recipe
    hyperparameters: dict[str, Any]
    lr: float | None = None


def parse_variant(text: str) -> Variant:
    """``name`` or ``name(key=value, ...)``, values written as in chain text (``lr`` among them or
    not): a recipe whose chains build with these hyperparameters; ``ValueError`` otherwise."""
    name, given = parse_call(text.strip(), "recipe")
    recipe = get_recipe(name)
    lr = given.pop("lr", None)
    if lr is not None:
        lr = check_lr(lr, f"recipe {name!r}")
    resolved = recipe.resolve(given)
    recipe.chains(**given)
    return Variant(recipe, {key: resolved[key] for key in given}, lr)

"""The primitive families a search file chooses from, and the chain each choice stands for.

A role's chain is built family by family in a fixed order (momentum, second moment,
normalization, then decoupled weight decay when the role searches it), e.g. the choices
``momentum = "ema"``, ``second_moment = "full"`` give ``momentum(0.9) > second_moment(full)``
(Adam). The numbers a search tunes (``beta1``, ``beta2``, ``weight_decay``) are written into the
primitive field each choice names; the structure label of a trial keeps those fields at their
defaults so that trials differing only in tuned numbers share one label.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from primitives.base import Primitive
from primitives.second_moment import SHAPES as SECOND_MOMENT_SHAPES

#: A representative parameter shape per role, for ``Primitive.check_shape``.
ROLE_SHAPES: dict[str, tuple[int, ...]] = {
    "embed": (16, 8),
    "head": (16, 8),
    "matrix": (8, 8),
    "vector": (8,),
}


@dataclass(frozen=True)
class Choice:
    """One option of a family: its chain text (``None``: nothing) and the numbers it takes.

    ``numbers`` maps a search number (``beta1``, ``beta2``, ``weight_decay``) to the field of the
    choice's first primitive that receives it.
    """

    text: str | None
    numbers: dict[str, str] = field(default_factory=dict)

    def primitives(self) -> tuple[Primitive, ...]:
        """The choice's primitives with their default arguments (none for ``None``)."""
        if self.text is None:
            return ()
        from optispace.chain import parse_chain

        return parse_chain(self.text).primitives

    def with_numbers(self, values: dict[str, float]) -> tuple[Primitive, ...]:
        """The primitives with the given search numbers written into the first one's fields."""
        primitives = self.primitives()
        fields = {self.numbers[name]: float(v) for name, v in values.items() if name in self.numbers}
        if not fields:
            return primitives
        return (dataclasses.replace(primitives[0], **fields), *primitives[1:])


FAMILIES: dict[str, dict[str, Choice]] = {
    "momentum": {
        "none": Choice(None),
        "ema": Choice("momentum(0.9)", {"beta1": "beta"}),
        "nesterov": Choice("momentum(0.95, nesterov=True, bias_correction=False)", {"beta1": "beta"}),
        "heavy_ball": Choice("momentum(0.9, kind=heavy_ball)", {"beta1": "beta"}),
        "lion": Choice("momentum(0.9, kind=lion, beta2=0.99)", {"beta1": "beta"}),
    },
    # Every shape of the primitive: full (Adam), row (Adam-mini), col, factored (Ember,
    # Adafactor), scalar (Adalayer).
    "second_moment": {
        "none": Choice(None),
        **{shape: Choice(f"second_moment({shape})", {"beta2": "beta2"}) for shape in SECOND_MOMENT_SHAPES},
    },
    "normalization": {
        "none": Choice(None),
        "sign": Choice("sign"),
        "rms": Choice("normalize(rms)"),
        "row": Choice("normalize(row)"),
        "col": Choice("normalize(col)"),
        "clip": Choice("clip_rms(1.0)"),
        # Muon's: Newton-Schulz, then the step scaled by the matrix's aspect ratio.
        "orthogonalize": Choice("orthogonalize > shape_scale"),
    },
}

#: Decoupled weight decay, appended to a role's chain when the role sets ``weight_decay``.
WEIGHT_DECAY = Choice("weight_decay", {"weight_decay": "rate"})


def incompatible_choice(role: str, family: str, choice: str) -> str | None:
    """Why ``choice`` of ``family`` cannot act on ``role``'s parameters, or ``None`` if it can."""
    try:
        for primitive in FAMILIES[family][choice].primitives():
            primitive.check_shape(ROLE_SHAPES[role])
    except ValueError as e:
        return f"{choice!r} cannot act on the {role} role's {len(ROLE_SHAPES[role])}-D tensors ({e})"
    return None


def uses(family: str, choice: str, number: str) -> bool:
    """Whether ``choice`` of ``family`` takes the search number ``number``."""
    return number in FAMILIES[family][choice].numbers

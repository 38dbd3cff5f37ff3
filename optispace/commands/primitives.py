"""``optispace primitives``: every primitive with its arguments, defaults, choices and state cost.

State cost is a formula of the (rows, columns) view of the tensor, ``V x D`` (an embedding table
is V rows of D; a vector is one row), read off the primitive's own state declaration.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect

from primitives import REGISTRY, Primitive

# Distinct primes, so that every state size names its factors unambiguously.
_V, _D = 1009, 1013
_TERMS = {_V * _D: "V·D", _V: "V", _D: "D", 1: "1"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", metavar="NAME", help="primitives to show (default: all)")


def state_formula(primitive: Primitive) -> str:
    """The bytes of state for a V x D tensor, e.g. ``4·(V + D + 1)``; ``none`` when stateless."""
    counts: dict[str, int] = {}
    sizes = set()
    for spec in primitive.state_specs((_V, _D)):
        sizes.add(spec.nbytes // spec.numel)
        term = _TERMS[spec.numel]
        counts[term] = counts.get(term, 0) + 1
    if not counts:
        return "none"
    terms = [f"{counts[t]}·{t}" if counts[t] > 1 else t for t in _TERMS.values() if t in counts]
    (element,) = sizes  # every state tensor of a primitive has one dtype
    if terms == ["1"]:
        return str(element)
    inner = " + ".join(terms)
    return f"{element}·({inner})" if len(terms) > 1 else f"{element}·{inner}"


def _variants(cls: type[Primitive]) -> list[tuple[str, str]]:
    """(label, formula) for the defaults and each single choice that changes the state."""
    default = cls()
    rows = [("", state_formula(default))]
    for field, allowed in cls.choices.items():
        for value in allowed:
            if value == getattr(default, field):
                continue
            try:
                variant = cls(**{field: value})
            except ValueError:
                continue
            formula = state_formula(variant)
            if formula != rows[0][1]:
                rows.append((f"{field}={value}", formula))
    return rows


def _signature(cls: type[Primitive]) -> str:
    args = []
    for f in dataclasses.fields(cls):
        value = f.default
        text = repr(value) if isinstance(value, float | tuple) else str(value)
        args.append(f"{f.name}={text}")
    return f"{cls.name}({', '.join(args)})" if args else cls.name


def describe(cls: type[Primitive]) -> list[str]:
    """The lines that present one primitive."""
    doc = inspect.getdoc(cls) or ""
    lines = [_signature(cls), "    " + doc.split("\n\n")[0].replace("\n", " ").replace("``", "")]
    if cls.positional:
        lines.append(f"    written positionally: {', '.join(cls.positional)}")
    for field, allowed in cls.choices.items():
        lines.append(f"    {field}: {' | '.join(allowed)}")
    variants = _variants(cls)
    if len(variants) == 1:
        lines.append(f"    state bytes for a V x D tensor: {variants[0][1]}")
    else:
        lines.append("    state bytes for a V x D tensor:")
        lines += [f"      {label or 'defaults'}: {formula}" for label, formula in variants]
    return lines


def run(args: argparse.Namespace) -> int:
    from optispace.errors import UserError

    unknown = [n for n in args.names if n not in REGISTRY]
    if unknown:
        raise UserError(f"unknown primitive {unknown[0]!r}; known: {', '.join(sorted(REGISTRY))}")
    names = args.names or sorted(REGISTRY)
    print("Primitives, as written in chain text (`a > b > c`); state is fp32 unless noted.\n")
    for name in names:
        print("\n".join(describe(REGISTRY[name])))
        print()
    return 0

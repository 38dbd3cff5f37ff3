"""Chains: an ordered list of primitives, with one canonical text form.

Text: primitives joined by `` > ``; each is ``name(pos1, key=value, ...)`` with the positional
fields first, then the keyword fields that differ from their default, in field order; a primitive
with nothing written is just ``name``; floats are written with ``repr``; the empty chain (the plain
gradient direction) is ``identity``. ``parse_chain(str(c)) == c``, and ``str(parse_chain(t))`` is
the canonical form of ``t``. Example: ``momentum(0.9) > second_moment(factored, beta2=0.95)``.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import torch

from primitives import REGISTRY, Context, Primitive, PureContext, StateSpec

IDENTITY = "identity"

_TOKEN = re.compile(
    r"\s*(?:(?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|(?P<name>[A-Za-z_]\w*)|(?P<punct>[(),=>]))"
)
_CONSTANTS = {"True": True, "False": False, "None": None}


@dataclass(frozen=True)
class Chain:
    """An ordered tuple of primitives; equal and hashable by value; ``str`` is the canonical text."""

    primitives: tuple[Primitive, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "primitives", tuple(self.primitives))
        for p in self.primitives:
            if not isinstance(p, Primitive):
                raise ValueError(f"chain: {p!r} is not a primitive; a chain holds primitives.Primitive "
                                 "objects")
        # Computed now, not on first use inside torch.compile'd code, which cannot take the lock
        # functools.cached_property holds while computing.
        for name in ("state_keys", "_deferrable", "_settled", "structure"):
            getattr(self, name)

    def __str__(self) -> str:
        return " > ".join(_format_primitive(p) for p in self.primitives) or IDENTITY

    @functools.cached_property
    def state_keys(self) -> tuple[dict[str, str], ...]:
        """Per primitive, its state field -> the stable name in the optimizer state.

        The name is ``<primitive>.<field>`` (``momentum.m``); a primitive that appears again is
        numbered from its second occurrence (``momentum#2.m``).
        """
        seen: dict[str, int] = {}
        keys = []
        for p in self.primitives:
            seen[p.name] = seen.get(p.name, 0) + 1
            prefix = p.name if seen[p.name] == 1 else f"{p.name}#{seen[p.name]}"
            fields = [s.name for s in p.state_specs((1, 1))]
            keys.append({f: f"{prefix}.{f}" for f in fields})
        return tuple(keys)

    def check_shape(self, shape: tuple[int, ...]) -> None:
        """Raise ``ValueError`` when a primitive of the chain cannot act on ``shape``."""
        for p in self.primitives:
            p.check_shape(tuple(shape))

    def state_specs(self, shape: tuple[int, ...]) -> list[StateSpec]:
        """Every state tensor the chain keeps for a parameter of ``shape``, under its stable name."""
        return [
            dataclasses.replace(spec, name=keys[spec.name])
            for p, keys in zip(self.primitives, self.state_keys, strict=True)
            for spec in p.state_specs(tuple(shape))
        ]

    def init_state(self, shape: tuple[int, ...], device: torch.device) -> dict[str, torch.Tensor]:
        """Allocate exactly what :meth:`state_specs` declares, zero-filled."""
        return {
            keys[field]: tensor
            for p, keys in zip(self.primitives, self.state_keys, strict=True)
            for field, tensor in p.init_state(tuple(shape), device).items()
        }

    def state_bytes(self, shape: tuple[int, ...]) -> int:
        return sum(s.nbytes for s in self.state_specs(shape))

    @functools.cached_property
    def _deferrable(self) -> tuple[bool, ...]:
        """Per position: is every later primitive homogeneous (so a scalar may ride on the step)?"""
        out, tail = [], True
        for p in reversed(self.primitives):
            out.append(tail)
            tail = tail and p.homogeneous
        return tuple(reversed(out))

    @property
    def fusable(self) -> bool:
        """Has every primitive a pure form (:meth:`pure`), so the chain can be compiled whole?"""
        return all(p.fusable for p in self.primitives)

    @functools.cached_property
    def structure(self) -> tuple:
        """The chain with its numbers left out: chains equal here run the same compiled code."""
        out = []
        for p, numbers in zip(self.primitives, self.numbers(), strict=True):
            words = tuple((k, v) for k, v in p.arguments().items() if k not in numbers)
            out.append((p.name, words, tuple(numbers)))
        return tuple(out)

    def numbers(self) -> list[dict[str, float]]:
        """Per primitive, its numbers (``Primitive.numbers``): what is left out of :attr:`structure`."""
        return [p.numbers() for p in self.primitives]

    def scalars(self, step: int, lr: float) -> list[dict[str, float]]:
        """Per primitive, the numbers its pure form uses at ``step`` (``Primitive.scalars``)."""
        return [p.scalars(step, lr) for p in self.primitives]

    def pure(self, u: torch.Tensor, state: dict[str, Any], ctx: PureContext,
             scalars: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """:meth:`apply` through every primitive's pure form; ``scalars`` as :meth:`scalars`, as tensors.

        The caller makes the update, ``param <- ctx.param - ctx.step_size * u``.
        """
        for p, keys, deferrable, hp in zip(self.primitives, self.state_keys, self._deferrable, scalars,
                                           strict=True):
            ctx.deferrable = deferrable
            u = p.pure(u, {f: state[k] for f, k in keys.items()}, ctx, hp)
        return u

    @functools.cached_property
    def _settled(self) -> tuple[bool, ...]:
        """Per position: does no later primitive read the parameter (so a decay may wait)?"""
        out, tail = [], True
        for p in reversed(self.primitives):
            out.append(tail)
            tail = tail and not p.reads_param
        return tuple(reversed(out))

    def _positions(self) -> Iterator[tuple[Primitive, dict[str, str], bool, bool, bool]]:
        """Per primitive: (primitive, state keys, deferrable, param settled, final)."""
        last = len(self.primitives) - 1
        for i, (p, keys) in enumerate(zip(self.primitives, self.state_keys, strict=True)):
            yield p, keys, self._deferrable[i], self._settled[i], i == last

    def apply(self, u: torch.Tensor, state: dict[str, Any], ctx: Context) -> torch.Tensor:
        """Run every primitive in order on ``u``; ``state`` is the flat per-parameter state.

        The caller then makes the update, ``ctx.update(param, u)``, unless ``ctx.applied`` says
        the last primitive made it.
        """
        for p, keys, deferrable, settled, final in self._positions():
            ctx.deferrable, ctx.param_settled, ctx.final = deferrable, settled, final
            u = p.apply(u, {f: state[k] for f, k in keys.items()}, ctx)
        return u

    def steps(self, u: torch.Tensor, state: dict[str, Any],
              ctx: Context) -> Generator[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`apply` for one rank's block of a sharded parameter (``ctx.shard``), as a generator.

        Before each primitive whose :meth:`~primitives.Primitive.partials` are not ``None`` it yields
        them and expects their sum over the shard group back (``send``), which the primitive reads as
        ``ctx.sums``; it returns the direction. The caller sums the yields of many parameters at once.
        """
        for p, keys, deferrable, settled, final in self._positions():
            ctx.deferrable, ctx.param_settled, ctx.final = deferrable, settled, final
            own = {f: state[k] for f, k in keys.items()}
            partial = p.partials(u, own, ctx)
            ctx.sums = None if partial is None else (yield partial)
            u = p.apply(u, own, ctx)
        return u

    def apply_many(self, us: list[torch.Tensor], states: list[dict[str, Any]],
                   ctxs: list[Context]) -> list[torch.Tensor]:
        """:meth:`apply` for several parameters at once (``torch._foreach_*`` where a primitive can)."""
        for p, keys, deferrable, settled, final in self._positions():
            for ctx in ctxs:
                ctx.deferrable, ctx.param_settled, ctx.final = deferrable, settled, final
            us = p.apply_many(us, [{f: s[k] for f, k in keys.items()} for s in states], ctxs)
        return us


def _format_value(v: Any) -> str:
    if isinstance(v, tuple):
        return "(" + ", ".join(_format_value(x) for x in v) + ")"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _format_primitive(p: Primitive) -> str:
    fields = dataclasses.fields(p)
    args = [_format_value(getattr(p, name)) for name in p.positional]
    args += [
        f"{f.name}={_format_value(getattr(p, f.name))}"
        for f in fields
        if f.name not in p.positional and getattr(p, f.name) != f.default
    ]
    return f"{p.name}({', '.join(args)})" if args else p.name


class _Parser:
    """A recursive-descent parser over the tokens of one chain text; errors name the column."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, Any, int]] = []  # (kind, value, 1-based column)
        pos = 0
        while (m := _TOKEN.match(text, pos)) is not None:
            kind = m.lastgroup
            self.tokens.append((kind, m.group(kind), m.start(kind) + 1))
            pos = m.end()
        rest = text[pos:]
        if rest.strip():
            col = pos + 1 + len(rest) - len(rest.lstrip())
            self.fail(col, f"unexpected character {text[col - 1]!r}")
        self.i = 0

    def fail(self, col: int, message: str) -> NoReturn:
        raise ValueError(f"chain {self.text!r}, column {col}: {message}")

    def peek(self) -> tuple[str, Any, int]:
        return self.tokens[self.i] if self.i < len(self.tokens) else ("end", None, len(self.text) + 1)

    def take(self, kind: str, value: str | None = None) -> tuple[str, Any, int]:
        tok = self.peek()
        if tok[0] != kind or (value is not None and tok[1] != value):
            want = repr(value) if value else {"end": "the end of the text", "name": "a primitive name"}[kind]
            got = "the end of the text" if tok[0] == "end" else repr(tok[1])
            self.fail(tok[2], f"expected {want}, found {got}")
        self.i += 1
        return tok

    def chain(self) -> Chain:
        if self.peek()[:2] == ("name", IDENTITY):
            self.i += 1
            self.take("end")
            return Chain(())
        prims = [self.primitive()]
        while self.peek()[:2] == ("punct", ">"):
            self.i += 1
            prims.append(self.primitive())
        self.take("end")
        return Chain(tuple(prims))

    def primitive(self) -> Primitive:
        _, name, col = self.take("name")
        cls = REGISTRY.get(name)
        if cls is None:
            self.fail(col, f"unknown primitive {name!r}; known: {', '.join(sorted(REGISTRY))} "
                           f"(or {IDENTITY!r} alone for the empty chain)")
        kwargs = self.arguments(cls) if self.peek()[:2] == ("punct", "(") else {}
        try:
            return cls(**kwargs)
        except ValueError as e:
            self.fail(col, str(e))

    def arguments(self, cls: type[Primitive]) -> dict[str, Any]:
        self.take("punct", "(")
        fields = [f.name for f in dataclasses.fields(cls)]
        kwargs: dict[str, Any] = {}
        n_positional = 0
        while self.peek()[:2] != ("punct", ")"):
            tok = self.peek()
            after = self.tokens[self.i + 1] if self.i + 1 < len(self.tokens) else ("end", None, 0)
            if tok[0] == "name" and after[:2] == ("punct", "="):
                self.i += 2
                key = tok[1]
                if key not in fields:
                    self.fail(tok[2], f"{cls.name} has no argument {key!r}; "
                                      f"its arguments: {', '.join(fields)}")
            else:
                if len(kwargs) > n_positional:
                    self.fail(tok[2], "a positional argument after a keyword argument")
                if n_positional >= len(cls.positional):
                    self.fail(tok[2], f"{cls.name} takes {len(cls.positional)} positional argument(s) "
                                      f"({', '.join(cls.positional) or 'none'}); write the rest as key=value")
                key = cls.positional[n_positional]
                n_positional += 1
            if key in kwargs:
                self.fail(tok[2], f"argument {key!r} given twice")
            kwargs[key] = self.value()
            if self.peek()[:2] != ("punct", ")"):
                self.take("punct", ",")
        self.take("punct", ")")
        return kwargs

    def value(self) -> Any:
        kind, text, col = self.peek()
        if kind == "number":
            self.i += 1
            return float(text) if any(c in text for c in ".eE") else int(text)
        if kind == "name":
            self.i += 1
            return _CONSTANTS.get(text, text)
        if (kind, text) == ("punct", "("):
            self.i += 1
            items = []
            while self.peek()[:2] != ("punct", ")"):
                items.append(self.value())
                if self.peek()[:2] != ("punct", ")"):
                    self.take("punct", ",")
            self.take("punct", ")")
            return tuple(items)
        self.fail(col, f"expected a value, found {'the end of the text' if kind == 'end' else repr(text)}")


@functools.lru_cache(maxsize=1024)
def parse_chain(text: str) -> Chain:
    """Parse chain text (see the module docstring); ``ValueError`` names the column on a mistake."""
    if not isinstance(text, str):
        raise ValueError(f"chain: expected text such as 'momentum(0.9) > sign', got {text!r}")
    return _Parser(text).chain()

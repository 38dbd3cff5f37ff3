"""Chain text: canonical form, exact round trip, parse errors with the column."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from optispace import Chain, parse_chain
from primitives import (
    L2,
    REGISTRY,
    ClipRMS,
    Momentum,
    Normalize,
    Orthogonalize,
    RelativeStep,
    SecondMoment,
    ShapeScale,
    Sign,
    WeightDecay,
    momentum,
    normalize,
    scaling,
    second_moment,
)

unit = st.floats(0.0, 1.0, exclude_max=True)
positive = st.floats(1e-12, 1e3)
small = st.floats(0.0, 1.0)

FIELDS = {
    Momentum: {"beta": unit, "kind": st.sampled_from(momentum.KINDS), "nesterov": st.booleans(),
               "dampening": st.one_of(st.just(0.0), small), "beta2": st.one_of(st.none(), unit),
               "bias_correction": st.sampled_from([None, True, False])},
    SecondMoment: {"shape": st.sampled_from(second_moment.SHAPES), "beta2": unit,
                   "beta2_decay": st.one_of(st.none(), st.floats(-2.0, 0.0)), "eps": small,
                   "eps_mode": st.sampled_from(second_moment.EPS_MODES),
                   "bias_correction": st.sampled_from(second_moment.BIAS_CORRECTIONS),
                   "source": st.sampled_from(second_moment.SOURCES)},
    Sign: {},
    Normalize: {"kind": st.sampled_from(normalize.KINDS), "target": positive, "eps": positive},
    ClipRMS: {"threshold": positive},
    Orthogonalize: {"steps": st.integers(0, 8), "coefficients": st.tuples(*[st.floats(-5, 5)] * 3),
                    "eps": positive, "dtype": st.sampled_from(["bfloat16", "float32"])},
    WeightDecay: {"rate": small},
    L2: {"rate": small},
    ShapeScale: {"rule": st.sampled_from(scaling.RULES)},
    RelativeStep: {"eps": small},
}


def _build(cls, kwargs):
    try:
        return cls(**kwargs)
    except ValueError:
        return None


def primitive_of(cls) -> st.SearchStrategy:
    """Valid instances of ``cls`` with generated arguments (invalid combinations are dropped)."""
    return (st.fixed_dictionaries({}, optional=FIELDS[cls]).map(lambda kw: _build(cls, kw))
            .filter(lambda p: p is not None))


primitives_ = st.one_of(*[primitive_of(cls) for cls in FIELDS])
chains = st.lists(primitives_, max_size=5).map(lambda ps: Chain(tuple(ps)))


def test_every_registered_primitive_has_a_strategy() -> None:
    assert {cls.name for cls in FIELDS} == set(REGISTRY)


@given(chains)
def test_text_round_trips_exactly(chain: Chain) -> None:
    text = str(chain)
    assert parse_chain(text) == chain
    assert str(parse_chain(text)) == text
    assert hash(parse_chain(text)) == hash(chain)


@pytest.mark.parametrize(("text", "canonical"), [
    ("identity", "identity"),
    ("momentum(0.9)>second_moment( factored ,beta2=0.95)",
     "momentum(0.9) > second_moment(factored, beta2=0.95)"),
    ("momentum", "momentum(0.9)"),
    ("momentum(1e-1, bias_correction=True)", "momentum(0.1)"),
    ("momentum(0.95, nesterov=True, bias_correction=False)", "momentum(0.95, nesterov=True)"),
    ("second_moment(beta2_decay=-0.8, bias_correction=none)", "second_moment(full, beta2_decay=-0.8)"),
    ("weight_decay(0) > sign()", "weight_decay(0.0) > sign"),
    ("orthogonalize(coefficients=(3, -4.5, 2), steps=3)",
     "orthogonalize(steps=3, coefficients=(3.0, -4.5, 2.0))"),
])
def test_canonical_form(text: str, canonical: str) -> None:
    assert str(parse_chain(text)) == canonical


def test_equal_behaviour_is_one_chain() -> None:
    assert parse_chain("weight_decay(1)") == parse_chain("weight_decay(1.0)")
    assert parse_chain("momentum(0.9, bias_correction=True)") == Chain((Momentum(0.9),))
    assert parse_chain("momentum(0.9)") != parse_chain("momentum(0.8)")


@pytest.mark.parametrize(("text", "column", "words"), [
    ("momentum(0.9) > foo", 17, ["unknown primitive 'foo'", "second_moment", "identity"]),
    ("momentum(0.9", 13, ["expected ','", "end of the text"]),
    ("sign > $", 8, ["unexpected character '$'"]),
    ("momentum(beta=0.9, 0.5)", 20, ["positional argument after a keyword"]),
    ("second_moment(bias=1)", 15, ["no argument 'bias'", "eps_mode"]),
    ("sign > momentum(1.5)", 8, ["momentum", "beta=1.5", "[0, 1)"]),
    ("momentum(0.9, 0.5)", 15, ["1 positional argument"]),
    ("momentum(0.9, beta=0.8)", 15, ["'beta' given twice"]),
    ("", 1, ["expected a primitive name"]),
    ("identity > sign", 10, ["expected the end of the text, found '>'"]),
])
def test_parse_errors_name_the_column(text: str, column: int, words: list[str]) -> None:
    with pytest.raises(ValueError) as e:
        parse_chain(text)
    assert f"column {column}:" in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_state_names_are_stable_and_distinct() -> None:
    chain = parse_chain("momentum(0.9) > momentum(0.5) > second_moment(factored, bias_correction=row)")
    names = [s.name for s in chain.state_specs((6, 4))]
    assert names == ["momentum.m", "momentum#2.m", "second_moment.row", "second_moment.col",
                     "second_moment.total", "second_moment.count"]
    assert chain.state_bytes((6, 4)) == 4 * (24 + 24 + 6 + 4 + 1 + 6)


@given(chains)
def test_declared_state_is_what_init_allocates(chain: Chain) -> None:
    state = chain.init_state((5, 3), torch.device("cpu"))
    specs = chain.state_specs((5, 3))
    allocated = [(k, tuple(v.shape), v.dtype) for k, v in state.items()]
    assert [(s.name, s.shape, s.dtype) for s in specs] == allocated
    assert chain.state_bytes((5, 3)) == sum(v.nbytes for v in state.values())
    assert all(v.dtype == torch.float32 and not v.any() for v in state.values())


def test_a_chain_holds_primitives_only() -> None:
    with pytest.raises(ValueError, match="not a primitive"):
        Chain(("momentum",))
    with pytest.raises(ValueError, match="expected text"):
        parse_chain(3)


@given(chains, st.integers(1, 10**6), st.floats(0.0, 1.0))
def test_the_scalars_of_a_fusable_chain_have_the_same_names_at_every_step(chain: Chain, step: int,
                                                                          lr: float) -> None:
    # The compiled step takes them as flat lists, named by the first step's names.
    if chain.fusable:
        assert [list(s) for s in chain.scalars(step, lr)] == [list(s) for s in chain.scalars(1, 0.5)]


def test_structure_leaves_out_the_numbers_only() -> None:
    adam = parse_chain("weight_decay(0.1) > momentum(0.9) > second_moment(full, beta2=0.95)")
    other = parse_chain("weight_decay(0.01) > momentum(0.8) > second_moment(full, eps=1e-06)")
    assert adam != other and adam.structure == other.structure
    for text in ["weight_decay(0.1) > momentum(0.9, nesterov=True) > second_moment(full)",
                 "weight_decay(0.1) > momentum(0.9) > second_moment(factored)",
                 "momentum(0.9) > second_moment(full)"]:
        assert parse_chain(text).structure != adam.structure

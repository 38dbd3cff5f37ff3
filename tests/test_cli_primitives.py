"""``optispace primitives``: every primitive, its arguments and defaults, and its state as a formula."""

from __future__ import annotations

import pytest

from optispace.cli import main
from optispace.commands.primitives import state_formula
from primitives import REGISTRY, Momentum, SecondMoment, Sign


def test_lists_every_primitive_with_defaults(capsys) -> None:
    assert main(["primitives"]) == 0
    out = capsys.readouterr().out
    for name in REGISTRY:
        assert f"\n{name}" in out
    assert "second_moment(shape=full, beta2=0.999, beta2_decay=None, eps=1e-08" in out
    assert "shape: full | row | col | factored | scalar" in out
    assert "shape=factored: 4·(V + D + 1)" in out


@pytest.mark.parametrize(("primitive", "formula"), [
    (Momentum(), "4·V·D"),
    (SecondMoment(), "4·V·D"),
    (SecondMoment("row"), "4·V"),
    (SecondMoment("col"), "4·D"),
    (SecondMoment("factored", bias_correction="row"), "4·(2·V + D + 1)"),
    (SecondMoment("scalar"), "4"),
    (Sign(), "none"),
])
def test_state_formulas_read_the_declared_state(primitive, formula) -> None:
    assert state_formula(primitive) == formula


def test_an_unknown_name_is_one_line_exit_2(capsys) -> None:
    assert main(["primitives", "sgn"]) == 2
    err = capsys.readouterr().err
    assert err == ("optispace primitives: error: unknown primitive 'sgn'; known: "
                   f"{', '.join(sorted(REGISTRY))}\n")

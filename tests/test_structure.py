"""``--recipe`` text: a structure (chain text per role) parses to canonical chains, as a trial writes it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_chain import chains

from optispace import ROLES
from optispace.errors import UserError
from optispace.structure import parse_structure, recipe_argument


@given(st.lists(chains, min_size=4, max_size=4))
def test_a_structure_label_parses_to_its_canonical_chains(drawn) -> None:
    text = " | ".join(f"{role}: {chain}" for role, chain in zip(ROLES, drawn, strict=True))
    assert parse_structure(text) == {role: str(c) for role, c in zip(ROLES, drawn, strict=True)}


def test_a_name_is_a_recipe_and_a_repeated_role_is_refused() -> None:
    assert recipe_argument("ember").recipe == "ember"
    with pytest.raises(UserError, match="role 'head' is given twice"):
        recipe_argument("head: sign | head: identity")

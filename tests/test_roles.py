"""Role assignment: embed, head, matrix, vector; tied heads; overrides."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from optispace import ROLES, assign_roles


class LM(nn.Module):
    def __init__(self, tied: bool = False, head_name: str = "lm_head") -> None:
        super().__init__()
        self.wte = nn.Embedding(40, 8)
        self.wpe = nn.Embedding(16, 8)
        self.mix = nn.Linear(8, 16)  # out_features equals the positional table's rows: not a head
        self.norm = nn.LayerNorm(8)
        setattr(self, head_name, nn.Linear(8, 40, bias=False))
        if tied:
            getattr(self, head_name).weight = self.wte.weight
        self.gain = nn.Parameter(torch.ones(()))
        self.frozen = nn.Parameter(torch.ones(3), requires_grad=False)


def roles_of(model_or_params, override=None) -> dict[str, str]:
    return {name: role for name, (role, _) in assign_roles(model_or_params, override).items()}


def test_roles_of_a_language_model() -> None:
    assert roles_of(LM()) == {
        "wte.weight": "embed", "wpe.weight": "embed", "mix.weight": "matrix", "mix.bias": "vector",
        "norm.weight": "vector", "norm.bias": "vector", "lm_head.weight": "head", "gain": "vector",
    }


def test_a_head_is_found_by_shape_when_not_named_lm_head() -> None:
    assert roles_of(LM(head_name="proj_out"))["proj_out.weight"] == "head"


def test_a_tied_head_is_the_embedding_updated_once() -> None:
    roles = assign_roles(LM(tied=True))
    assert roles["wte.weight"][0] == "embed"
    assert "lm_head.weight" not in roles
    assert sum(p is roles["wte.weight"][1] for _, p in roles.values()) == 1


def test_bare_parameters_get_roles_from_shapes() -> None:
    params = [nn.Parameter(torch.zeros(shape)) for shape in ((4, 3), (3,), (2, 2, 2))]
    assert roles_of(params) == {"0": "matrix", "1": "vector", "2": "matrix"}
    assert roles_of([("a", params[0]), ("b", params[1])]) == {"a": "matrix", "b": "vector"}


def test_overrides_by_mapping_and_function() -> None:
    assert roles_of(LM(), {"mix.weight": "head"})["mix.weight"] == "head"
    by_fn = roles_of(LM(), lambda name, p: "vector" if name.startswith("mix") else None)
    assert by_fn["mix.weight"] == "vector"
    assert by_fn["wte.weight"] == "embed"


@pytest.mark.parametrize("override", [{"mix.weight": "hidden"}, lambda n, p: "bias"])
def test_unknown_roles_are_refused_with_the_list(override) -> None:
    with pytest.raises(ValueError, match="unknown role") as e:
        assign_roles(LM(), override)
    assert all(r in str(e.value) for r in ROLES)


def test_an_override_for_a_missing_name_is_refused() -> None:
    with pytest.raises(ValueError, match="no trainable parameter named 'nope'"):
        assign_roles(LM(), {"nope": "matrix"})

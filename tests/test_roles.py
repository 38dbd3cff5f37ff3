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


class Llama(nn.Module):
    """Meta's names: tok_embeddings, output; an MLP whose hidden width equals the vocabulary."""

    def __init__(self, ffn_named: str = "w1", head_named: str = "output") -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(40, 8)
        setattr(self, ffn_named, nn.Linear(8, 40, bias=False))
        self.w2 = nn.Linear(40, 8, bias=False)
        setattr(self, head_named, nn.Linear(8, 40, bias=False))


@pytest.mark.parametrize(("embed", "head"), [("wte", "lm_head"), ("model.embed_tokens", "lm_head"),
                                             ("tok_embeddings", "output"), ("word_embeddings", "embed_out")])
def test_named_parameters_get_token_roles_from_their_names(embed: str, head: str) -> None:
    shapes = {f"{embed}.weight": (40, 8), "h.0.w1.weight": (8, 8), f"{head}.weight": (40, 8),
              "norm.weight": (8,)}
    params = [(name, nn.Parameter(torch.zeros(shape))) for name, shape in shapes.items()]
    assert list(roles_of(params).values()) == ["embed", "matrix", "head", "vector"]


def test_named_parameters_of_a_model_get_the_models_roles() -> None:
    assert roles_of(Llama().named_parameters()) == roles_of(Llama())


def test_a_feed_forward_layer_as_wide_as_the_vocabulary_is_not_the_named_head() -> None:
    assert roles_of(Llama()) == {"tok_embeddings.weight": "embed", "w1.weight": "matrix",
                                 "w2.weight": "matrix", "output.weight": "head"}


def test_a_tied_head_leaves_a_vocabulary_wide_layer_a_matrix() -> None:
    model = Llama()
    model.output.weight = model.tok_embeddings.weight
    assert roles_of(model)["w1.weight"] == "matrix"


def test_head_candidates_no_name_settles_are_an_error_listing_them() -> None:
    with pytest.raises(ValueError, match="2 tensors could be the head .*: up.weight, proj.weight") as e:
        assign_roles(Llama(ffn_named="up", head_named="proj"))
    assert "roles={'proj.weight': 'head'}" in str(e.value)
    settled = roles_of(Llama(ffn_named="up", head_named="proj"), {"proj.weight": "head"})
    assert settled["up.weight"] == "matrix" and settled["proj.weight"] == "head"
    by_elimination = roles_of(Llama(ffn_named="up", head_named="proj"),
                              lambda n, p: "matrix" if n == "up.weight" else None)
    assert by_elimination["proj.weight"] == "head"


def test_the_model_as_override_gives_bare_parameters_its_roles() -> None:
    model = LM()
    assert list(roles_of(list(model.parameters()), model).values()) == list(roles_of(model).values())


def test_named_parameters_of_the_proxies_get_the_models_roles() -> None:
    from optispace.proxies.model import GPT
    from optispace.proxies.tiers import TIERS

    model = GPT(TIERS["tiny"].model)
    assert roles_of(model.named_parameters()) == roles_of(model)


def test_lm_head_is_the_head_whatever_its_rows() -> None:
    model = LM()
    model.lm_head = nn.Linear(8, 48, bias=False)  # a vocabulary padded past the table's 40 rows
    assert roles_of(model)["lm_head.weight"] == "head"

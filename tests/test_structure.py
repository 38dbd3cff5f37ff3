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


def test_a_recipe_call_gives_its_hyperparameters_and_lr() -> None:
    argument = recipe_argument("ember(lr=3e-3, bias_correction=row)")
    assert (argument.recipe, argument.settings) == ("ember", {"hyperparameters": {"bias_correction": "row"},
                                                              "lr": 3e-3})
    with pytest.raises(UserError, match="--recipe: recipe 'ember': unknown hyperparameter"):
        recipe_argument("ember(beta1=0.9)")


def test_a_swept_trial_replays_at_its_scale_point_with_the_lrs_it_trained(tmp_path) -> None:
    from test_search_scale import WidthTrainer, load, scaled_text

    from optispace.search.run import run_search
    from optispace.search.spec import parse_search_text
    from optispace.trial import read

    url = str(tmp_path / "s.journal")
    spec = parse_search_text(scaled_text(extra='[scaling]\nlr_rule = "mup"'), "scaled.toml")
    run_search(spec, url, n_trials=4, trainer=WidthTrainer(), progress=False)
    for trial in load(url, "scaled").trials:
        argument = recipe_argument(f"study:scaled#{trial.number}", url)
        shape, lr = argument.settings["shape"], read(trial).roles["matrix"].lr
        assert {axis: shape[axis] for axis in ("dim", "batch_size")} == read(trial).scale
        assert shape["output_mult"] == pytest.approx(16 / shape["dim"])
        assert argument.role_lr["matrix"] == pytest.approx(lr * 16 / shape["dim"])
        assert argument.role_lr["embed"] == lr


def test_a_trial_of_several_ranks_retrains_in_the_processes_train_is_given(tmp_path) -> None:
    from test_search_scale import WidthTrainer, scaled_text

    from optispace.proxies import TrainConfig
    from optispace.search.run import run_search
    from optispace.search.spec import parse_search_text

    url = str(tmp_path / "s.journal")
    spec = parse_search_text(scaled_text(extra='nproc = 2\nparallel = "fsdp2"'), "scaled.toml")
    run_search(spec, url, n_trials=1, trainer=WidthTrainer(), progress=False)
    argument = recipe_argument("study:scaled#0", url)
    assert "nproc" not in argument.settings and argument.settings["parallel"] == "fsdp2"
    TrainConfig(recipe=argument.recipe, role_lr=argument.role_lr, **argument.settings)

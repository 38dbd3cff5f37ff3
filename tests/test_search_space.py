"""Sampling a configuration: a structure label has exactly the primitives its trial trains."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from optuna.trial import FixedTrial

from optispace.chain import parse_chain
from optispace.search.space import sample
from optispace.search.spec import parse_search_text
from optispace.trial import RoleRun, primitive_names

SEARCH = """\
[study]
name = "space"
question = "q?"
trials = 3

[proxy]
tier = "tiny"
tokens = 4096

[roles.embed]
second_moment = ["full", "factored"]
lr = [1e-3, 1e-1]
beta2 = [0.9, 0.999]

[roles.head]
tie = "embed"

[roles.matrix]
momentum = ["none", "ema", "lion"]
normalization = ["none", "sign", "orthogonalize"]
lr = [1e-3, 1e-1]
beta1 = [0.8, 0.95]
weight_decay = {values = [0.0, 0.01, 0.1]}

[roles.vector]
chain = "momentum(0.9) > second_moment(full) > weight_decay(0.0)"
lr = 3e-3
"""
SPEC = parse_search_text(SEARCH)


@given(
    second_moment=st.sampled_from(["full", "factored"]),
    beta2=st.floats(0.9, 0.999),
    momentum=st.sampled_from(["none", "ema", "lion"]),
    normalization=st.sampled_from(["none", "sign", "orthogonalize"]),
    beta1=st.floats(0.8, 0.95),
    weight_decay=st.sampled_from([0.0, 0.01, 0.1]),
)
def test_a_label_has_exactly_the_primitives_the_trial_trains(
    second_moment, beta2, momentum, normalization, beta1, weight_decay
):
    params = {
        "embed.second_moment": second_moment,
        "embed.lr": 1e-2,
        "embed.beta2": beta2,
        "matrix.momentum": momentum,
        "matrix.normalization": normalization,
        "matrix.lr": 1e-2,
        "matrix.beta1": beta1,
        "matrix.weight_decay": weight_decay,
    }
    configuration = sample(FixedTrial(params), SPEC.roles)
    for role, draw in configuration.draws.items():
        trained = parse_chain(draw.trained)
        assert primitive_names(draw.structure) == [p.name for p in trained.primitives], role
        RoleRun(draw.trained, draw.structure)  # the record accepts it
    matrix = configuration.draws["matrix"]
    # A weight decay of 0 decays nothing: the trial runs no decay, so no label may show one.
    assert ("weight_decay" in matrix.structure) == (weight_decay != 0.0)
    assert ("weight_decay" in matrix.trained) == (weight_decay != 0.0)
    if weight_decay:
        assert f"weight_decay({weight_decay!r})" in matrix.trained


def test_a_fixed_chain_is_trained_and_labelled_as_written():
    params = {
        "embed.second_moment": "full",
        "embed.lr": 1e-2,
        "embed.beta2": 0.99,
        "matrix.momentum": "none",
        "matrix.normalization": "sign",
        "matrix.lr": 1e-2,
        "matrix.weight_decay": 0.0,
    }
    vector = sample(FixedTrial(params), SPEC.roles).draws["vector"]
    assert vector.structure == vector.trained == "momentum(0.9) > second_moment(full) > weight_decay(0.0)"


RECIPES = """
[study]
name = "r"
question = "q?"
sampler = "grid"

[proxy]
tier = "tiny"
steps = 4

[recipes]
adamw = {lr = {values = [1e-3, 3e-3]}}
ember = {lr = 2e-3}
adafactor = {lr = {values = [1e-2, 3e-2, 1e-1]}}
ember_row = {recipe = "ember", bias_correction = "row", lr = {values = [1e-3, 3e-3]}}
"""


def test_a_recipe_is_drawn_with_its_own_lr_and_trains_its_chains_on_every_role() -> None:
    from optispace.recipes import get_recipe
    from optispace.search.space import configurations, sample_configuration

    spec = parse_search_text(RECIPES, "r.toml")
    assert configurations(spec) == 2 + 1 + 3 + 2
    drawn = sample_configuration(FixedTrial({"recipe": "ember", "ember.lr": 2e-3}), spec)
    chains = get_recipe("ember").chains()
    assert drawn.recipe == {role: str(chain) for role, chain in chains.items()}
    assert set(drawn.role_lr.values()) == {2e-3}
    assert drawn.structure == " | ".join(f"{role}: {chain}" for role, chain in chains.items())


def test_a_recipe_variant_is_its_label_with_the_recipes_chains_at_its_hyperparameters() -> None:
    from optispace.search.space import sample_configuration

    spec = parse_search_text(RECIPES, "r.toml")
    row = sample_configuration(FixedTrial({"recipe": "ember_row", "ember_row.lr": 3e-3}), spec)
    ember = sample_configuration(FixedTrial({"recipe": "ember", "ember.lr": 2e-3}), spec)
    assert row.recipe["embed"] == row.recipe["head"] == "second_moment(factored, bias_correction=row)"
    assert (row.recipe["matrix"], row.recipe["vector"]) == (ember.recipe["matrix"], ember.recipe["vector"])
    assert row.structure != ember.structure


def test_the_grid_sampler_enumerates_every_label_and_lr_exactly_once() -> None:
    import optuna

    from optispace.search.space import configurations, sample_configuration
    from optispace.search.study import make_sampler

    spec = parse_search_text(RECIPES, "r.toml")
    seen = []

    def objective(trial: optuna.Trial) -> float:
        drawn = sample_configuration(trial, spec)
        seen.append((trial.params["recipe"], drawn.role_lr["embed"], drawn.recipe["embed"]))
        return 0.0

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(sampler=make_sampler(spec, 0)).optimize(objective, n_trials=configurations(spec))
    expected = {("adamw", 1e-3), ("adamw", 3e-3), ("ember", 2e-3), ("adafactor", 1e-2), ("adafactor", 3e-2),
                ("adafactor", 1e-1), ("ember_row", 1e-3), ("ember_row", 3e-3)}
    assert sorted((label, lr) for label, lr, _ in seen) == sorted(expected)
    assert {chain for label, _, chain in seen if label == "ember_row"} == {
        "second_moment(factored, bias_correction=row)"}

"""``optispace recipes``: chains per role and state bytes on a model shape, computed without allocating."""

from __future__ import annotations

import re

import pytest

from optispace import RECIPES
from optispace.cli import main
from optispace.roles import transformer_shapes


def test_lists_every_recipe_with_its_chains_and_bytes(capsys) -> None:
    assert main(["recipes", "--vocab", "1000", "--dim", "16", "--layers", "2"]) == 0
    out = capsys.readouterr().out
    for name, recipe in RECIPES.items():
        assert f"{name}: {recipe.summary}" in out
        for chain in recipe.chains().values():
            assert str(chain) in out
    # adam keeps 2 fp32 numbers per parameter; the model has V*D*2 + 2*12*D*D + 5*D of them.
    params = 2 * 1000 * 16 + 2 * 12 * 16 * 16 + 5 * 16
    assert f"{8 * params:,} B" in out
    assert "ember" in out.split("State bytes relative to adam")[1]


def test_ember_table_state_is_about_1500_times_smaller_than_adams_at_50k_by_768(capsys) -> None:
    assert main(["recipes", "adam", "ember"]) == 0
    out = capsys.readouterr().out
    ember_line = next(line for line in out.splitlines() if line.startswith("  ember "))
    assert "(1/1,512.9)" in ember_line
    assert f"{4 * (50304 + 768 + 1):,} B" in out  # Ember's state on one 50304 x 768 table


def test_a_tied_head_has_no_head_row(capsys) -> None:
    assert main(["recipes", "ember", "--vocab", "64", "--dim", "8", "--layers", "1", "--tied"]) == 0
    out = capsys.readouterr().out
    assert "tied to the table" in out and not re.search(r"^  head ", out, re.M)


def test_world_prints_bytes_per_rank_and_over_all_ranks(capsys) -> None:
    assert main(["recipes", "adam", "ember", "--world", "8"]) == 0
    out = capsys.readouterr().out
    rows = -(-50304 // 8)  # 6288: the table's padded shard
    ember_embed = next(line for line in out.split("ember:")[1].splitlines() if line.startswith("  embed "))
    ember = 4 * (rows + 768 + 1)
    assert f"{ember:,} B" in ember_embed and f"all 8 ranks {8 * ember:,} B" in ember_embed
    assert f"{4 * 2 * rows * 768:,} B" in out.split("ember:")[0]
    assert "State bytes per rank relative to adam" in out


def test_world_1_prints_what_the_unsharded_listing_prints(capsys) -> None:
    assert main(["recipes", "--world", "1"]) == 0
    sharded = capsys.readouterr().out
    assert main(["recipes"]) == 0
    assert capsys.readouterr().out == sharded


@pytest.mark.parametrize(("argv", "message"), [
    (["recipes", "adamx"], "unknown recipe 'adamx'; known: sgd"),
    (["recipes", "--vocab", "0"], "--vocab=0 is not allowed"),
    (["recipes", "--layers", "-1"], "--layers=-1 is not allowed"),
    (["recipes", "--world", "0"], "--world=0 is not allowed"),
])
def test_mistakes_are_one_line_exit_2(argv, message, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("optispace recipes: error:")


def test_transformer_shapes_are_the_proxies_layout() -> None:
    shapes = transformer_shapes(100, 8, 3)
    assert shapes["embed"] == shapes["head"] == [(100, 8)]
    assert shapes["matrix"][:4] == [(24, 8), (8, 8), (32, 8), (8, 32)] and len(shapes["matrix"]) == 12
    assert shapes["vector"] == [(8,)] * 7

"""Search files: what a valid file becomes, and one precise message for each kind of mistake."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from optispace.errors import UserError
from optispace.search.locate import key_lines, line_of
from optispace.search.space import grid_size
from optispace.search.spec import Range, RecipeChoice, Values, parse_search, parse_search_text

SEARCHES = sorted((Path(__file__).parent.parent / "searches").glob("*.toml"))

VALID = """\
[study]
name = "t"
question = "q?"
trials = 3

[proxy]
tier = "tiny"
tokens = 4096

[roles.embed]
second_moment = ["full", "factored"]
lr = [1e-3, 1e-1]

[roles.head]
tie = "embed"

[roles.matrix]
momentum = ["none", "ema"]
normalization = ["sign", "orthogonalize"]
lr = {values = [1e-3, 1e-2]}
beta1 = 0.9
weight_decay = [0.0, 0.1]

[roles.vector]
chain = "momentum(0.9) > second_moment(full)"
lr = 3e-3
"""


@pytest.mark.parametrize("path", SEARCHES, ids=lambda p: p.name)
def test_every_search_file_in_the_repository_is_valid(path: Path) -> None:
    spec = parse_search(path)
    assert spec.name == path.stem and spec.question


def test_a_valid_file_becomes_its_spec() -> None:
    spec = parse_search_text(VALID)
    assert (spec.name, spec.trials, spec.seeds, spec.sampler, spec.pruner) == ("t", 3, (0,), "tpe", "median")
    assert spec.proxy.tokens == 4096 and spec.proxy.steps is None and spec.proxy.probes == ()
    matrix = spec.roles["matrix"]
    assert matrix.families == {"momentum": ("none", "ema"), "normalization": ("sign", "orthogonalize")}
    assert matrix.numbers == {
        "lr": Values((1e-3, 1e-2)),
        "beta1": 0.9,
        "weight_decay": Range(0.0, 0.1, log=False),
    }
    assert spec.roles["embed"].numbers["lr"] == Range(1e-3, 1e-1, log=True)
    assert spec.roles["head"].tie == "embed"
    assert spec.roles["vector"].chain == "momentum(0.9) > second_moment(full)"
    assert spec.raw["roles"]["head"] == {"tie": "embed"}


def test_probes_are_read_in_the_order_given() -> None:
    spec = parse_search_text(VALID.replace("tokens = 4096", 'tokens = 4096\nprobes = ["outliers", "ray"]'))
    assert spec.proxy.probes == ("outliers", "ray")


def test_regime_and_its_settings_are_read() -> None:
    default = parse_search_text(VALID).proxy
    assert (default.regime, default.regime_settings) == ("pretrain", {})
    settings = 'tokens = 4096\nregime = "rl"\ngroup_size = 4\nkl = 0.1\nformat_steps = 200'
    spec = parse_search_text(VALID.replace("tokens = 4096", settings))
    assert spec.proxy.regime == "rl"
    assert spec.proxy.regime_settings == {"group_size": 4, "kl": 0.1, "format_steps": 200}


def test_pareto_searches_default_to_no_pruner() -> None:
    text = VALID.replace("trials = 3", 'trials = 3\nobjectives = ["val_loss", "state_bytes"]')
    assert parse_search_text(text).pruner == "none"


def bad(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


# (edit of VALID, the message expected: "<path>:<line>: <key>: <problem>")
MISTAKES = [
    (('tier = "tiny"', 'tier = "tiny'), r"invalid TOML: .*\(at line 7, column"),
    (("trials = 3", "trials = 3\ncolour = 1"), r"t.toml:5: study.colour: unknown key; allowed here: name,"),
    (("trials = 3", 'trials = "3"'), r"t.toml:4: study.trials: must be an integer >= 1, not '3'"),
    (
        ('momentum = ["none", "ema"]', "momentum = []"),
        r"t.toml:18: roles.matrix.momentum: must be a non-empty",
    ),
    (
        ("lr = [1e-3, 1e-1]", "lr = [1e-1, 1e-3]"),
        r"t.toml:12: roles.embed.lr: range \[0.1, 0.001\] is reversed",
    ),
    (
        ('chain = "momentum(0.9) > second_moment(full)"', 'chain = "momentum(0.9) > adamw"'),
        r"t.toml:25: roles.vector.chain: not a valid chain: .*adamw",
    ),
    (("[roles.vector]", "[roles.bias]"), r"t.toml:24: roles.bias: unknown role; the roles are embed, head,"),
    (
        ('"sign", "orthogonalize"', '"sign", "orthogonalise"'),
        r"t.toml:19: roles.matrix.normalization: unknown choice 'orthogonalise'; allowed: none, sign,",
    ),
    (
        ('chain = "momentum(0.9) > second_moment(full)"', 'normalization = ["orthogonalize"]'),
        r"t.toml:25: roles.vector.normalization: 'orthogonalize' cannot act on the vector role's 1-D",
    ),
    (
        ('chain = "momentum(0.9) > second_moment(full)"', 'chain = "orthogonalize"'),
        r"t.toml:25: roles.vector.chain: cannot act on the vector role's 1-D tensors",
    ),
    (("beta1 = 0.9", "beta1 = 1.0"), r"t.toml:21: roles.matrix.beta1: must be a number >= 0.0 and < 1.0"),
    (
        ('momentum = ["none", "ema"]', 'momentum = ["none"]'),
        r"t.toml:21: roles.matrix.beta1: no choice of this",
    ),
    (('tie = "embed"', 'tie = "head"'), r"t.toml:15: roles.head.tie: must name another role"),
    (
        ("tokens = 4096", "tokens = 4096\nsteps = 10"),
        r"t.toml:6: proxy: give the budget per trial as exactly one",
    ),
    (
        ("tokens = 4096", 'tokens = 4096\ndevice = "gpu"'),
        r"t.toml:9: proxy.device: 'gpu' is not allowed; use auto,",
    ),
    (
        ("tokens = 4096", 'tokens = 4096\ndata = "no/such/text"'),
        r"t.toml:9: proxy.data: 'no/such/text' does not exist",
    ),
    (('tier = "tiny"', 'tier = "huge"'), r"t.toml:7: proxy.tier: 'huge' is not allowed; choose one of tiny,"),
    (
        ("trials = 3", 'trials = 3\nsampler = "grid"'),
        r"t.toml:13: roles.embed.lr: sampler \"grid\" enumerates",
    ),
    (
        ("trials = 3", 'trials = 3\nobjectives = ["val_loss", "state_bytes"]\npruner = "median"'),
        r"t.toml:6: study.pruner: pruning needs a single objective",
    ),
    (('[roles.head]\ntie = "embed"\n', ""), r"t.toml:10: roles: missing table \[roles.head\]"),
    (("lr = 3e-3", "lr = -3e-3"), r"t.toml:26: roles.vector.lr: must be a number > 0.0, not -0.003"),
    (
        ("tokens = 4096", 'tokens = 4096\nprobes = ["ray", "raytrace"]'),
        r"t.toml:9: proxy.probes: unknown probe 'raytrace'; known probes: ray, geometry, outliers$",
    ),
    (
        ("tokens = 4096", 'tokens = 4096\nprobes = ["ray", "ray"]'),
        r"t.toml:9: proxy.probes: has a repeated probe",
    ),
    (
        ("tokens = 4096", 'tokens = 4096\nregime = "dpo"'),
        r"t.toml:9: proxy.regime: 'dpo' is not allowed; choose one of pretrain, sft, rl",
    ),
    (
        ("tokens = 4096", 'tokens = 4096\nregime = "rl"\ngroup_size = 1'),
        r"t.toml:10: proxy.group_size: must be",
    ),
    (
        ("tokens = 4096", 'tokens = 4096\nregime = "rl"\nformat_steps = 0'),
        r"t.toml:10: proxy.format_steps: must be",
    ),
    (
        ("tokens = 4096", 'tokens = 4096\nregime = "rl"\ntask = "chess"'),
        r"t.toml:10: proxy.task: 'chess' is not allowed",
    ),
    (
        ("tokens = 4096", 'tokens = 4096\nregime = "sft"\npairs = "no/such.jsonl"'),
        r"t.toml:10: proxy.pairs: 'no/such.jsonl' is not a JSONL file of pairs",
    ),
    (
        ("tokens = 4096", 'tokens = 4096\nregime = "sft"\npairs = "task:chess"'),
        r"t.toml:10: proxy.pairs: 'task:chess': tasks are addition, reverse",
    ),
    (
        ("tokens = 4096", 'tokens = 4096\ntask = "reverse"'),
        r"t.toml:9: proxy.task: a setting of regime \"sft\" or \"rl\"",
    ),
    (
        ("tokens = 4096", 'tokens = 4096\nprobes = "ray"'),
        r"t.toml:9: proxy.probes: must be an array of probe names from ray,",
    ),
    (
        ('name = "t"', f'name = "{"t" * 513}"'),
        r"t.toml:2: study.name: must be at most 512 characters, not 513",
    ),
    (
        ("trials = 3", "trials = 3\nseed = 9223372036854775808"),
        r"t.toml:5: study.seed: must be an integer from 0",
    ),
    (
        ("trials = 3", "trials = 3\nseeds = [0, 18446744073709551616]"),
        r"t.toml:5: study.seeds: must be a non-empty",
    ),
    (
        ("tokens = 4096", "steps = 100000000000000000000000"),
        r"t.toml:8: proxy.steps: must be an integer from 1 to",
    ),
    (
        ("tokens = 4096", "tokens = 100000000000000000000000"),
        r"t.toml:8: proxy.tokens: must be an integer from 1",
    ),
    (
        ("tokens = 4096", "tokens = 4096\neval_batches = 1000000000"),
        r"t.toml:9: proxy.eval_batches: must be an integer from 1 to 262144, not 1000000000",
    ),
    (
        ("tokens = 4096", 'tokens = 4096\ndata = "zipf:s=-1"'),
        r"t.toml:9: proxy.data: 'zipf:s=-1': need s > 0",
    ),
]


RECIPES = VALID[: VALID.index("[roles.embed]")] + """[recipes]
adamw = {lr = [1e-4, 1e-2]}
ember = {lr = 1e-3}
ember_row = {recipe = "ember", bias_correction = "row", betas = [0.9, 0.95], lr = {values = [1e-3, 3e-3]}}
"""


def test_recipes_replace_the_roles_each_label_with_its_recipe_hyperparameters_and_lr() -> None:
    spec = parse_search_text(RECIPES, "t.toml")
    assert spec.roles == {} and spec.recipes == {
        "adamw": RecipeChoice("adamw", Range(1e-4, 1e-2, log=True)),
        "ember": RecipeChoice("ember", 1e-3),
        "ember_row": RecipeChoice("ember", Values((1e-3, 3e-3)),
                                  {"bias_correction": "row", "betas": (0.9, 0.95)}),
    }


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("ember =", "emberr ="), r"t.toml:12: recipes.emberr: unknown recipe; the recipes are sgd,"),
        (("[recipes]", "[roles.embed]\ntie = 'head'\n[recipes]"), r"t.toml:12: recipes: give either"),
        (("trials = 3", 'sampler = "grid"'), r"t.toml:11: recipes.adamw.lr: sampler \"grid\" enumerates"),
        (("lr = 1e-3}", "lr = 1e-3, beta1 = 0.9}"),
         r"t.toml:12: recipes.ember.beta1: unknown key; allowed here: recipe, lr, beta2, eps, weight_decay"),
        (('"row"', '"rows"'), r"t.toml:13: recipes.ember_row.bias_correction: recipe 'ember': "
         r"bias_correction='rows' is not allowed; bias_correction must be one of step, row, none"),
        (("[0.9, 0.95]", "[0.9]"), r"t.toml:13: recipes.ember_row.betas: recipe 'ember': betas=\[0.9\] is "
         r"not allowed; betas must be a sequence of 2 values"),
        (('recipe = "ember"', 'recipe = "embr"'), r"t.toml:13: recipes.ember_row.recipe: 'embr' is not"),
        (('recipe = "ember", ', ""), r"t.toml:13: recipes.ember_row: unknown recipe; the recipes are sgd,.* "
         r'\(or name one with recipe = "..."'),
        (('bias_correction = "row"', 'bias_correction = "row", beta2 = 2.0'),
         r"t.toml:13: recipes.ember_row.beta2: recipe 'ember'.*beta2"),
        (("trials = 3", 'sampler = "grid"'), r"t.toml:11: recipes.adamw.lr: sampler \"grid\" enumerates"),
    ],
)
def test_recipe_mistakes_name_key_and_line(edit: tuple[str, str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_search_text(bad(RECIPES, *edit), "t.toml")


@pytest.mark.parametrize(("edit", "message"), MISTAKES, ids=[m[:80] for _, m in MISTAKES])
def test_each_mistake_gets_one_message_naming_key_and_line(edit: tuple[str, str], message: str) -> None:
    with pytest.raises(UserError, match=message) as error:
        parse_search_text(bad(VALID, *edit), "t.toml")
    assert "\n" not in str(error.value)


def test_grid_size_counts_conditional_numbers() -> None:
    spec = parse_search_text(
        VALID.replace("weight_decay = [0.0, 0.1]", "weight_decay = {values = [0.0, 0.1]}")
    )
    # embed: 2 shapes (lr is a range, so not enumerable; grid_size counts a range as one value)
    # matrix: 2 momentum x 2 normalization x 2 lr x 2 weight decay; vector: 1
    assert grid_size(spec.roles) == 2 * (2 * 2 * 2 * 2)


KEY = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True)
SCALAR = st.one_of(st.integers(-5, 5), st.booleans(), st.text("ab=[]#", max_size=4))
TABLE = st.dictionaries(KEY, SCALAR, min_size=1, max_size=4)


@given(st.dictionaries(KEY, st.dictionaries(KEY, TABLE, min_size=1, max_size=3), min_size=1, max_size=3))
def test_key_lines_finds_every_key_where_it_is_written(doc: dict) -> None:
    lines, expected = [], {}
    for top, subtables in doc.items():
        for sub, table in subtables.items():
            lines.append(f"[{top}.{sub}]  # a comment with = and [x]")
            expected[(top, sub)] = len(lines)
            for i, (key, value) in enumerate(table.items()):
                text = repr(value).lower() if isinstance(value, bool) else repr(value).replace("'", '"')
                if i % 2:
                    lines.append(f'"{key}" = {text}')
                else:
                    lines.append(f"{key} = {text}")
                expected[(top, sub, key)] = len(lines)
            lines.append("")
    found = key_lines("\n".join(lines))
    for path, line in expected.items():
        assert found[path] == line
    assert line_of(found, (*next(iter(expected)), "inside", "an inline table")) == 1


@pytest.mark.parametrize("data", ["stdlib", "stdlib:no-tests", "zipf", "zipf:s=1.2,v=100,n=5000"])
def test_every_data_source_train_accepts_is_accepted(data: str) -> None:
    text = VALID.replace("tokens = 4096", f'tokens = 4096\ndata = "{data}"')
    assert parse_search_text(text).proxy.data == data


def test_ranks_per_trial_default_to_one_and_turn_the_default_pruner_off() -> None:
    proxy = parse_search_text(VALID).proxy
    assert (proxy.nproc, proxy.parallel) == (1, "ddp")
    spec = parse_search_text(VALID.replace("tokens = 4096", 'tokens = 4096\nnproc = 2\nparallel = "fsdp2"'))
    assert (spec.proxy.nproc, spec.proxy.parallel, spec.pruner) == (2, "fsdp2", "none")


def test_cuda_without_a_gpu_is_refused_with_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match=r"t.toml:9: proxy.device: cuda was asked for but no CUDA GPU"):
        parse_search_text(VALID.replace("tokens = 4096", 'tokens = 4096\ndevice = "cuda"'), "t.toml")


def test_a_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(VALID.replace('question = "q?"', 'question = "caf\xe9?"').encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1.toml: not UTF-8 text \(byte \d+\)"):
        parse_search(path)

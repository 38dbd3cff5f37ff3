"""The notebook API: a search from a dict or TOML text, run without the CLI, its report as polars frames."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import polars as pl
import pytest

from optispace.api import Search
from optispace.errors import UserError

TOML = """
[study]
name = "nb"
question = "Does a search built in Python run and report?"
trials = 2
seeds = [0]
sampler = "random"
pruner = "none"

[proxy]
tier = "tiny"
steps = 3
eval_every = 3
eval_batches = 1
data = "{data}"

[roles.embed]
second_moment = ["full", "factored"]
lr = 1e-2

[roles.head]
tie = "embed"

[roles.matrix]
chain = "momentum(0.9) > second_moment(full)"
lr = 3e-3

[roles.vector]
chain = "momentum(0.9) > second_moment(full)"
lr = 3e-3
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A text file of this package's own source: enough tokens for the tiny proxy."""
    root = Path(__file__).parents[1] / "optispace"
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text("\n".join(p.read_text() for p in sorted(root.rglob("*.py"))))
    return path


def test_a_search_from_a_dict_runs_and_reports_polars_frames(corpus: Path, tmp_path: Path) -> None:
    tables = tomllib.loads(TOML.format(data=corpus))
    search = Search(tables, storage=str(tmp_path / "studies.journal"))
    summary = search.run(progress=False)
    assert summary.counts.finished == 2
    report = search.report()
    assert isinstance(report.trials, pl.DataFrame) and report.trials.height == 2
    assert isinstance(report.structures, pl.DataFrame) and report.structures.height >= 1
    assert (tmp_path / "out" / "report.md") in search.write_report(tmp_path / "out")


def test_toml_text_and_a_dict_give_one_search(corpus: Path) -> None:
    text = TOML.format(data=corpus)
    from_dict = Search(tomllib.loads(text), storage="unused").spec
    assert Search(text, storage="unused").spec == dataclasses.replace(from_dict, path="<toml text>")


@pytest.mark.parametrize(("source", "words"), [
    ({"study": {"name": "x"}}, ["<dict>", "missing table [proxy]"]),
    ("[study\n", ["<toml text>", "invalid TOML"]),
    ({"study": {"name": object()}}, ["<dict>", "strings, numbers"]),
    (3, ["dict, TOML text or a Path"]),
])
def test_mistakes_are_user_errors_naming_the_source(source, words: list[str]) -> None:
    with pytest.raises(UserError) as e:
        Search(source, storage="unused")
    assert all(w in str(e.value) for w in words)


def test_a_report_before_any_run_says_to_run_first(corpus: Path, tmp_path: Path) -> None:
    search = Search(TOML.format(data=corpus), storage=str(tmp_path / "studies.journal"))
    with pytest.raises(UserError, match=r"call run\(\) first"):
        search.report()

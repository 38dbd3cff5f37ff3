"""Scale axes: the grid and its order, each point covered once per round by every sampler (also after
a SIGKILL and resume), the budget rule's tokens, and the muP lr rule.

A fake trainer stands in for the proxy where only the run loop is under test; its loss falls with
the width it was given, so a run at the wrong shape would show.
"""

from __future__ import annotations

import math
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from hypothesis import given
from hypothesis import strategies as st
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState
from test_search_run import load, start_worker, wait_for_exit, wait_for_running

from optispace.errors import UserError
from optispace.proxies import TIERS, TrainConfig, train
from optispace.proxies.train import RunRecord
from optispace.search import scale
from optispace.search.objective import train_config
from optispace.search.run import run_search
from optispace.search.space import Configuration, Draw
from optispace.search.spec import parse_search_text
from optispace.trial import read

ADAM = "momentum(0.9) > second_moment(full)"

SCALED = """
[study]
name = "scaled"
question = "Does the grid cover each point once per round?"
seed = 1
trials = 8
seeds = [0]
sampler = "{sampler}"

[proxy]
tier = "tiny"
steps = 4
eval_every = 2
batch_size = [4, 8]
dim = [16, 32]
{extra}

[recipes]
adamw = {{lr = {{values = [1e-3, 1e-2]}}}}
"""


def scaled_text(sampler: str = "random", extra: str = "") -> str:
    return SCALED.format(sampler=sampler, extra=extra)


@dataclass(frozen=True)
class WidthTrainer:
    """Loss ``3 + 16 / dim + |log10(matrix lr) + 2|``; sleeps ``sleep_s`` per step of 4."""

    sleep_s: float = 0.0

    def __call__(self, config: dict, on_eval) -> RunRecord:
        loss = 3.0 + 16 / config["shape"]["dim"] + abs(math.log10(config["role_lr"]["matrix"]) + 2)
        for step in range(1, 5):
            time.sleep(self.sleep_s)
            on_eval(step, step * 128, loss)
        return RunRecord(config=config, corpus={"fingerprint": "fake"}, final_val_loss=loss,
                         state_bytes={"matrix": 8}, device="cpu")


def run(url: str, n: int, text: str, trainer: WidthTrainer = WidthTrainer()) -> optuna.Study:
    spec = parse_search_text(text, "scaled.toml")
    run_search(spec, url, n_trials=n, trainer=trainer, progress=False)
    return load(url, "scaled")


def points(study: optuna.Study) -> Counter:
    """How many finished trials each (batch_size, dim) point has, checked against the record."""
    finished = study.get_trials(states=(TrialState.COMPLETE,))
    for t in finished:
        assert read(t).scale == {"batch_size": t.params["scale.batch_size"], "dim": t.params["scale.dim"]}
    return Counter((t.params["scale.batch_size"], t.params["scale.dim"]) for t in finished)


def test_the_grid_is_the_product_of_the_listed_axes_in_axis_order() -> None:
    spec = parse_search_text(scaled_text(), "scaled.toml")
    assert list(spec.proxy.sweep) == ["dim", "batch_size"]  # AXES order, not the file's
    assert scale.grid(spec.proxy.sweep) == [
        {"dim": 16, "batch_size": 4},
        {"dim": 16, "batch_size": 8},
        {"dim": 32, "batch_size": 4},
        {"dim": 32, "batch_size": 8},
    ]
    assert scale.grid({}) == [{}]


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_every_point_is_covered_once_per_round(sampler: str, tmp_path: Path) -> None:
    study = run(str(tmp_path / "s.journal"), 8, scaled_text(sampler))
    assert points(study) == {(b, d): 2 for b in (4, 8) for d in (16, 32)}
    for t in study.trials:  # the trainer got the point's shape: its loss says which width it trained
        assert t.values[0] == pytest.approx(
            3 + 16 / t.params["scale.dim"] + abs(math.log10(t.params["adamw.lr"]) + 2)
        )


def test_the_grid_sampler_crosses_the_scale_grid_with_the_optimizers(tmp_path: Path) -> None:
    study = run(str(tmp_path / "s.journal"), 8, scaled_text("grid"))
    combos = Counter(tuple(t.params.values()) for t in study.trials)
    assert len(combos) == 8 and set(combos.values()) == {1}


def test_a_grid_larger_than_the_trials_asked_for_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="has 8 configurations; ask for at most 8"):
        run(str(tmp_path / "s.journal"), 9, scaled_text("grid"))


WORKER = """
import sys
from test_search_scale import WidthTrainer, scaled_text
from optispace.search.run import _worker_main
from optispace.search.spec import parse_search_text
_worker_main(parse_search_text(scaled_text(), "scaled.toml"), sys.argv[1], "scaled", int(sys.argv[2]), 0,
             WidthTrainer(sleep_s=float(sys.argv[3])), threads=1)
"""


@pytest.mark.slow
def test_a_sigkill_mid_trial_then_resume_still_covers_each_point_once_per_round(tmp_path: Path) -> None:
    url = str(tmp_path / "s.journal")
    worker = start_worker(url, 8, sleep_s=0.5, script=WORKER)
    killed = wait_for_running(url, worker, name="scaled", number=2)  # two trials finished before it
    worker.send_signal(signal.SIGKILL)
    wait_for_exit(worker)
    study = run(url, 8, scaled_text())
    assert study.trials[killed.number].state == TrialState.FAIL
    assert points(study) == {(b, d): 2 for b in (4, 8) for d in (16, 32)}
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number]
    assert retried[0].params["scale.dim"] == killed.params["scale.dim"]


@given(st.permutations([0, 0, 1, 1, 2, 2, 3, 3]))
def test_workers_choosing_at_once_never_take_one_point_twice_in_a_round(events: list[int]) -> None:
    """Four workers, one trial each, asked at once: a trial's first event reads the study and
    chooses, its second writes the point; in every interleaving the four take the four points."""
    spec = parse_search_text(scaled_text(), "scaled.toml")
    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(storage=storage, study_name="race")
    axes = {scale.PREFIX + axis: CategoricalDistribution(values) for axis, values in spec.proxy.sweep.items()}
    workers = [optuna.load_study(study_name="race", storage=storage, sampler=scale.ScaleGrid(
        lambda seed: optuna.samplers.RandomSampler(seed=seed), 0, scale.grid(spec.proxy.sweep)))
        for _ in range(4)]
    trials = [worker.ask() for worker in workers]
    read = set()
    for i in events:
        if i not in read:  # choose now (the sampler keeps the choice for its trial), write later
            read.add(i)
            frozen = workers[i].get_trials(deepcopy=False)[trials[i].number]
            workers[i].sampler.sample_independent(workers[i], frozen, *next(iter(axes.items())))
        else:
            for name, distribution in axes.items():
                trials[i].suggest_categorical(name, distribution.choices)
    assert len({tuple(t.params.values()) for t in trials}) == 4


@pytest.mark.slow
def test_two_workers_cover_each_point_once_per_round(tmp_path: Path) -> None:
    url = str(tmp_path / "s.journal")
    spec = parse_search_text(scaled_text(), "scaled.toml")
    run_search(spec, url, n_trials=8, trainer=WidthTrainer(sleep_s=0.02), progress=False, workers=2)
    study = load(url, "scaled")
    assert points(study) == {(b, d): 2 for b in (4, 8) for d in (16, 32)}
    assert {t.user_attrs["worker"] for t in study.trials} == {0, 1}


def configuration(lr: float = 1e-2) -> Configuration:
    draw = Draw(ADAM, ADAM, lr, {})
    return Configuration({role: draw for role in ("embed", "head", "matrix", "vector")})


@pytest.mark.parametrize("per_param", [0.5, 1.0])
def test_the_budget_rule_gives_the_stated_tokens(per_param: float) -> None:
    text = scaled_text(extra=f'data = "zipf:n=8192"\n[scaling]\ntokens_per_param = {per_param}').replace(
        "steps = 4\n", ""
    )
    spec = parse_search_text(text, "scaled.toml")
    for point in scale.grid(spec.proxy.sweep):
        settings = train_config(spec, configuration(), 0, point)
        shaped = TrainConfig(**{k: v for k, v in settings.items() if k not in ("probes", "nproc")})
        stated = math.ceil(per_param * shaped.tier.model.parameters())
        assert settings["tokens"] == stated
    record = train(shaped, progress=False)  # the last point: it trains whole steps covering the budget
    per_step = shaped.tier.tokens_per_step
    assert stated <= record.curve[-1]["tokens"] < stated + per_step


def test_mup_scales_the_matrix_lr_and_the_logits_by_the_base_width() -> None:
    spec = parse_search_text(scaled_text(extra='[scaling]\nlr_rule = "mup"'), "scaled.toml")
    assert spec.scaling.base_dim == 16  # the least width by default
    settings = train_config(spec, configuration(1e-2), 0, {"dim": 32, "batch_size": 4})
    assert settings["role_lr"] == {"embed": 1e-2, "head": 1e-2, "matrix": 5e-3, "vector": 1e-2}
    assert settings["shape"] == {"dim": 32, "batch_size": 4, "output_mult": 0.5}
    plain = parse_search_text(scaled_text(), "scaled.toml")
    settings = train_config(plain, configuration(1e-2), 0, {"dim": 32, "batch_size": 4})
    assert settings["role_lr"]["matrix"] == 1e-2 and "output_mult" not in settings["shape"]


def test_a_value_overrides_the_tier_and_tokens_may_be_an_axis() -> None:
    text = scaled_text(extra="layers = 2\ntokens = [1024, 2048]").replace("steps = 4\n", "")
    spec = parse_search_text(text, "scaled.toml")
    assert spec.proxy.shape == {"layers": 2} and spec.proxy.sweep["tokens"] == (1024, 2048)
    settings = train_config(spec, configuration(), 0, {"dim": 16, "batch_size": 4, "tokens": 2048})
    assert settings["tokens"] == 2048 and settings["shape"]["layers"] == 2
    assert TIERS["tiny"].model.layers == 1


# (edits of the scaled file, the message expected: "<path>:<line>: <key>: <problem>")
MISTAKES: list[tuple] = [
    (("eval_every = 2", "eval_every = [2, 4]"), r"scaled.toml:13: proxy.eval_every: takes one value, not a"),
    (("dim = [16, 32]", "dim = [16, 30]"), r"scaled.toml:15: proxy.dim: .*dim 30 .* at dim = 30"),
    (("dim = [16, 32]", "dim = 32\nheads = [2, 3]"), r"scaled.toml:16: proxy.heads: .* at heads = 3"),
    (("dim = [16, 32]", "dim = [16, 16]"), r"scaled.toml:15: proxy.dim: has a repeated value"),
    (("dim = [16, 32]", "dim = []"), r"scaled.toml:15: proxy.dim: an empty list sweeps nothing"),
    (("dim = [16, 32]", "dim = [16, 32]\nvocab = [512, 100]"), r"scaled.toml:16: proxy.vocab: 100 is not"),
    (("steps = 4", "tokens = 100"),
     r"scaled.toml:12: proxy.tokens: gives 100 tokens at dim = 16, batch_size = 4, fewer than one step"),
    (("steps = 4", "tokens = [4096, 100]"), r"scaled.toml:12: proxy.tokens: gives 100 tokens at"),
    (("steps = 4\n", ""), ("[recipes]", "[scaling]\ntokens_per_param = 0.001\n\n[recipes]"),
     r"scaled.toml:18: scaling.tokens_per_param: gives \d+ tokens at .* fewer than one step"),
    (("steps = 4", "steps = 4\n[scaling]\ntokens_per_param = 2"),
     r"scaled.toml:12: proxy.steps: the budget is \[scaling\] tokens_per_param"),
    (("seed = 1", 'seed = 1\npruner = "median"'), r"scaled.toml:6: study.pruner: a pruner would compare"),
    (("steps = 4", "steps = 4\n[scaling]\nbase_dim = 16"), r"scaled.toml:14: scaling.base_dim: is the muP"),
]


@pytest.mark.parametrize("mistake", MISTAKES, ids=[m[-1][:60] for m in MISTAKES])
def test_each_scale_mistake_gets_one_message_naming_key_and_line(mistake: tuple) -> None:
    *edits, message = mistake
    text = scaled_text()
    for old, new in edits:
        assert old in text
        text = text.replace(old, new, 1)
    with pytest.raises(UserError, match=message) as error:
        parse_search_text(text, "scaled.toml")
    assert "\n" not in str(error.value)


def test_a_vocabulary_larger_than_a_text_corpus_allows_is_refused(tmp_path: Path) -> None:
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("a few words of text\n" * 5)  # 100 bytes: at most 357 tokens
    text = scaled_text(extra=f'data = "{corpus}"\nvocab = [300, 512]')
    with pytest.raises(UserError, match=r"proxy.vocab: 512 is not a vocabulary .* at most 357 tokens"):
        parse_search_text(text, "scaled.toml")


def test_scaling_toml_runs_end_to_end_on_the_tiny_shape_with_two_widths(tmp_path: Path) -> None:
    """searches/scaling.toml made small: widths 16 and 32, one batch size, one lr per recipe, 8 steps."""
    import re

    from optispace.cli import main

    text = (Path(__file__).parent.parent / "searches" / "scaling.toml").read_text()
    for old, new in [
        ("dim = [32, 64, 128]", "dim = [16, 32]"),
        ("batch_size = [8, 32]", "batch_size = 8"),
        ("tokens = 131072", 'tokens = 4096\ndata = "zipf:n=20000"'),
        ("eval_every = 32", "eval_every = 4"),
        ("trials = 54", "trials = 6"),
        ("seeds = [0, 1]", "seeds = [0]"),
    ]:
        assert old in text
        text = text.replace(old, new)
    text = re.sub(r"\{values = \[([^,\]]+),[^\]]*\]\}", r"\1", text)  # one lr per recipe
    path, storage, out = tmp_path / "scaling.toml", tmp_path / "s.journal", tmp_path / "report"
    path.write_text(text)
    assert main(["search", str(path), "--storage", str(storage)]) == 0
    study = load(str(storage), "scaling")
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert Counter((t.params.get("recipe"), t.params["scale.dim"]) for t in done) == {
        (recipe, dim): 1 for recipe in ("adamw", "ember", "adafactor") for dim in (16, 32)
    }
    assert all(t.user_attrs.get("failure") is None for t in done)
    assert main(["report", "--study", "scaling", "--storage", str(storage), "--out", str(out)]) == 0
    markdown = (out / "report.md").read_text()
    assert "## Scaling" in markdown and "### Against dim" in markdown and (out / "scaling.png").exists()

"""The report's "Recipes against adamw" section: best lr per label, the paired difference to adamw
with its standard error, state bytes, in the study's direction; the same bytes twice."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest

from optispace.proxies.train import RunRecord
from optispace.report.against import compares
from optispace.report.build import build_report
from optispace.report.synthetic import make_trial
from optispace.report.write import write_report

SEARCH = """
[study]
name = "versus"
question = "Does per-row bias correction help Ember?"
seed = 0
trials = 6
seeds = [0, 1, 2]
sampler = "grid"
objectives = ["val_loss", "state_bytes"]

[proxy]
tier = "tiny"
steps = 4

[recipes]
adamw = {lr = {values = [1e-3, 3e-3]}}
ember = {lr = {values = [1e-3, 3e-3]}}
ember_row = {recipe = "ember", bias_correction = "row", lr = {values = [1e-3, 3e-3]}}
"""

#: Per label: loss offset from adamw per seed, and optimizer state bytes (per role: 4 roles).
OFFSETS = {"adamw": (0.0, 0.0, 0.0), "ember": (0.010, 0.011, 0.012), "ember_row": (-0.02, -0.02, -0.02)}
STATE = {"adamw": 200, "ember": 110, "ember_row": 115}


@dataclass(frozen=True)
class LabelTrainer:
    """Loss ``3 + |log10 lr + 2.5| / 10 + seed / 100`` plus the label's offset for that seed."""

    def __call__(self, config: dict, on_eval) -> RunRecord:
        embed = config["recipe"]["embed"]
        label = "ember_row" if "bias_correction=row" in embed else "ember" if "factored" in embed else "adamw"
        lr, seed = config["role_lr"]["matrix"], config["seed"]
        loss = 3.0 + abs(math.log10(lr) + 2.5) / 10 + seed / 100 + OFFSETS[label][seed]
        on_eval(4, 512, loss)
        return RunRecord(config=config, corpus={"fingerprint": "fake"}, final_val_loss=loss,
                         state_bytes=dict.fromkeys(config["role_lr"], STATE[label]), device="cpu")


@pytest.fixture(scope="module")
def study(searched) -> optuna.Study:
    return searched(SEARCH, LabelTrainer(), 6)


def test_each_label_at_its_best_lr_against_adamw_paired_over_seeds(study: optuna.Study) -> None:
    rows = build_report(study).versus.rows(named=True)
    assert [(r["label"], r["recipe"], r["best_lr"], r["state_bytes"]) for r in rows] == [
        ("adamw", "adamw", 3e-3, 800), ("ember", "ember", 3e-3, 440), ("ember_row", "ember", 3e-3, 460)]
    ember, row = rows[1], rows[2]
    assert ember["difference"] == pytest.approx(0.011)
    assert ember["difference_se"] == pytest.approx(0.001 / math.sqrt(3))
    assert (row["difference"], row["paired_seeds"]) == (pytest.approx(-0.02), 3)
    assert rows[0]["difference"] is None and rows[0]["seed_sd"] == pytest.approx(0.01)
    assert [r["lr_edge"] for r in rows] == ["high"] * 3  # 3e-3 is the greater of the two lrs each tried


def test_the_section_says_which_is_better_and_is_the_same_bytes_twice(study: optuna.Study,
                                                                    tmp_path: Path) -> None:
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        write_report(build_report(study), out)
    assert (outs[0] / "report.md").read_bytes() == (outs[1] / "report.md").read_bytes()
    text = (outs[0] / "report.md").read_text()
    section = text[text.index("## Recipes against adamw"):text.index("## Structures")]
    assert "ember (lr 0.003) is worse by 0.0110 in val loss over 3 paired seeds" in section
    assert "ember_row (lr 0.003) is better by 0.0200" in section
    assert "0.575x adamw's optimizer state" in section
    assert "| ember_row | ember |" in section


@dataclass(frozen=True)
class ForgettingTrainer(LabelTrainer):
    """LabelTrainer's losses, and a forgetting of ``seed / 10``, plus 0.5 for Ember's tables."""

    def __call__(self, config: dict, on_eval) -> RunRecord:
        record = super().__call__(config, on_eval)
        factored = "factored" in config["recipe"]["embed"]
        record.metrics = {"forgetting": config["seed"] / 10 + (0.5 if factored else 0.0)}
        return record


def test_the_regimes_measurements_are_averaged_over_the_best_trials_seeds(searched, tmp_path) -> None:
    report = build_report(searched(SEARCH.replace('"versus"', '"forgetful"'), ForgettingTrainer(), 6))
    forgetting = [m for m in report.trials["metric.forgetting"].to_list() if m is not None]
    assert pytest.approx([0.0, 0.1, 0.2]) in forgetting  # per seed, on the trial
    rows = report.versus.rows(named=True)
    assert [r["forgetting"] for r in rows] == pytest.approx([0.1, 0.6, 0.6])
    write_report(report, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "*forgetting*: the pretraining val loss at the end of fine-tuning minus at its start" in text


def test_a_maximized_objective_picks_the_greatest_and_calls_more_better() -> None:
    roles = ("embed", "head", "matrix", "vector")
    labels = ["adamw", "ember"]
    study = optuna.create_study(directions=["maximize"])
    study.set_user_attr("search", {"recipes": {label: {"lr": [1e-3, 1e-2]} for label in labels}})
    study.set_user_attr("objective", "reward")
    for label, lr, rewards in (("adamw", 1e-3, (0.5, 0.6)), ("adamw", 1e-2, (0.7, 0.8)),
                               ("ember", 1e-3, (0.8, 0.9)), ("ember", 1e-2, (0.1, 0.2))):
        study.add_trial(make_trial(dict.fromkeys(roles, label), rewards, choices={"recipe": (label, labels)},
                                   lrs=dict.fromkeys(roles, lr), state_bytes=dict.fromkeys(roles, 8)))
    report = build_report(study)
    assert report.versus.select("label", "best_lr").rows() == [("adamw", 1e-2), ("ember", 1e-3)]
    assert report.versus["difference"].to_list()[1] == pytest.approx(0.1)
    assert report.front["val_loss"].to_list() == [pytest.approx(0.85)]


def test_the_section_is_for_recipes_with_adamw_and_no_scale_axis() -> None:
    assert compares({"recipes": {"adamw": {}, "ember": {}}, "proxy": {"tier": "tiny"}})
    assert not compares({"recipes": {"ember": {}, "lion": {}}})
    assert not compares({"recipes": {"adamw": {}, "ember": {}}, "proxy": {"dim": [16, 32]}})
    assert not compares({"roles": {}})

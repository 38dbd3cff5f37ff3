"""report.md, figures and Parquet: deterministic, complete, honest about unfinished trials."""

import re

import optuna
import polars as pl
import pytest
from optuna.trial import TrialState

from optispace.report import build_report, sections, write_report
from optispace.report.synthetic import known_study, known_trial

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    report = build_report(known_study())
    return report, out, write_report(report, out)


def test_writes_markdown_figures_and_parquet(written):
    _, out, paths = written
    names = sorted(p.name for p in paths)
    assert names == sorted(
        [
            "report.md",
            "trials.parquet",
            "curves.parquet",
            "map.png",
            "marginal.png",
            "pareto.png",
            "sensitivity.png",
            "curves.png",
        ]
    )
    markdown = (out / "report.md").read_text()
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown):
        assert (out / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_states_question_setup_answer_and_tables(written):
    _, out, _ = written
    md = (out / "report.md").read_text()
    assert md.startswith("# known: Which optimizer structures suffice on the token tables?\n")
    headings = re.findall(r"^## (.*)$", md, flags=re.M)
    assert headings[:3] == ["Setup", "Answer", "Structures"]
    assert "Tolerance: 0.02 val loss (search file)" in md
    assert "Trials: 18 (13 finished, 2 diverged, 1 failed, 1 pruned, 1 still running)" in md
    answer = md.split("## Answer\n\n")[1].split("\n")[0]
    assert "3 of 5 suffice" in answer and "S3 is borderline" in answer
    assert "reaches a val loss of 3.3000" in answer
    never = "None uses second_moment `none` on embed (its best: +0.1000 vs S1), though the search tried it."
    assert never in answer
    assert "| S2 | 4 | 3.3050 | +0.0050 |" in md  # ember: its best trial is number 4, at lr 3e-3


def test_a_saving_under_five_percent_is_called_about_as_much():
    assert sections._saving(1.02, "5.6 MiB") == ", about as much as S1's 5.6 MiB"
    assert sections._saving(1.8, "1.1 MiB") == ", 1.8x less than S1's 1.1 MiB"
    assert sections._saving(None, "1.1 MiB") == ""


def test_unfinished_trials_are_named_as_such(written):
    _, out, _ = written
    md = (out / "report.md").read_text()
    section = md.split("## Trials that did not finish")[1].split("##")[0]
    for state in ("DIVERGED", "FAIL", "RUNNING"):
        assert f"| {state} |" in section
    assert "crashed: out of memory" in section


def test_pruned_trials_are_counted_by_their_last_step(written):
    _, out, _ = written
    section = (out / "report.md").read_text().split("## Trials that did not finish")[1].split("##")[0]
    assert "| PRUNED |" not in section
    assert "The pruner stopped 1 trial on the first seed's curve" in section
    assert "| last step | pruned |\n| ---: | ---: |\n| 200 | 1 |" in section  # its curve ends at 200


def test_parquet_round_trips_the_frames(written):
    report, out, _ = written
    assert pl.read_parquet(out / "trials.parquet").equals(report.trials)
    assert pl.read_parquet(out / "curves.parquet").equals(report.curves)


def test_same_study_gives_the_same_bytes(written, tmp_path):
    _, out, paths = written
    again = write_report(build_report(known_study()), tmp_path)
    for first, second in zip(sorted(paths), sorted(again), strict=True):
        if first.suffix in (".md", ".parquet"):
            assert first.read_bytes() == second.read_bytes(), first.name


def test_tolerance_from_the_command_line_wins(tmp_path):
    report = build_report(known_study(), tolerance=0.002)
    write_report(report, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "Tolerance: 0.002 val loss (command line)" in md and "1 of 5 suffice" in md


def test_a_best_lr_at_the_edge_of_its_range_is_called_out(tmp_path):
    study = known_study()
    write_report(build_report(study), tmp_path / "inside")
    assert "edge of the searched range**" not in (tmp_path / "inside" / "report.md").read_text()
    study.set_user_attr("search", {"roles": {"embed": {"lr": [3e-3, 1e-1]}}})
    write_report(build_report(study), tmp_path / "edge")
    md = (tmp_path / "edge" / "report.md").read_text()
    assert "**The best lr sits at an edge of the searched range** for S1 (embed, low)" in md


def test_a_study_with_nothing_finished_still_reports(tmp_path):
    study = optuna.create_study()
    study.add_trials(
        [
            known_trial("adam", 3e-3, pareto=False, state=TrialState.RUNNING),
            known_trial("ember", 3e-3, pareto=False, state=TrialState.FAIL, failure="crashed: boom"),
        ]
    )
    paths = write_report(build_report(study), tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "No trial has finished yet" in md and "crashed: boom" in md
    assert "default; the study states none" in md
    assert {p.name for p in paths} == {"report.md", "trials.parquet", "curves.parquet"}

"""``optispace probe``: a tiny end-to-end comparison, the rebuild, and bad input."""

from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from optispace.cli import main
from optispace.commands.probe import _names
from optispace.report.probe_report import read_runs

TINY = ["--proxy", "tiny", "--data", "zipf:n=20000", "--tokens", str(25 * 8 * 32)]


@pytest.mark.slow
def test_probe_writes_the_report_and_rebuilds_it(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["probe", "--recipes", "adamw,ember", "--seeds", "1", *TINY, "--out", str(out)]) == 0
    text = (out / "README.md").read_text()
    assert "optispace probe --recipes adamw,ember" in text
    for name in ("ray_fit.png", "outlier_ratio.png", "autocorrelation.png", "runs.parquet", "runs.json"):
        assert (out / name).is_file(), name
    assert "| embed | all | adamw |" in text and "| embed | all | ember |" in text
    (out / "README.md").unlink()
    assert main(["probe", "--rebuild", "--out", str(out)]) == 0
    assert (out / "README.md").read_text() == text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--recipes", "adamw,nope"], "--recipes: unknown 'nope'; known: "),
        (["--recipes", "adamw,adamw"], "--recipes: 'adamw' is given twice"),
        (["--recipes", "ember(bias_correction=rows)"], "--recipes: recipe 'ember': bias_correction='rows'"),
        (["--recipes", "ember(lr=1e-3"], "--recipes: recipe 'ember(lr=1e-3', column 14"),
        (["--probes", "ray,rays"], "--probes: unknown 'rays'; known: ray, geometry, outliers"),
        (["--seeds", "0"], "--seeds: 0 is not a positive number of seeds"),
        (["--tokens", "-5"], "--tokens: -5 is not a positive token budget"),
        (["--proxy", "huge"], "--proxy: unknown tier 'huge'"),
        (["--rebuild"], "--rebuild: "),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, argv, message):
    assert main(["probe", "--out", str(tmp_path / "r"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"optispace probe: error: {message}") and err.count("\n") == 1


DAMAGED = [b"{not json", b"\xff\xfe", b'{"header": 1}', b'{"header": "h", "runs": [1]}']


@pytest.mark.parametrize("content", DAMAGED)
def test_rebuild_from_a_damaged_runs_file_is_one_line(tmp_path, capsys, content):
    (tmp_path / "runs.json").write_bytes(content)
    assert main(["probe", "--rebuild", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"optispace probe: error: --rebuild: {tmp_path / 'runs.json'}")
    assert err.count("\n") == 1


NUMBERS = st.floats(0, 1)
VALUES = st.one_of(NUMBERS, st.sampled_from(["row", "step"]), st.tuples(NUMBERS, st.tuples(NUMBERS, NUMBERS)))
KWARGS = st.dictionaries(st.sampled_from(["lr", "betas", "eps"]), VALUES)
ITEMS = st.builds(lambda name, kwargs: f"{name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})",
                  st.sampled_from(["adamw", "ember"]), KWARGS)


@given(st.lists(ITEMS, min_size=1, max_size=4, unique=True))
def test_a_list_splits_at_the_commas_outside_parentheses_only(items):
    assert _names(",".join(items), "--recipes") == items


def test_variants_at_their_lrs_train_as_given_and_are_labelled_by_their_text(tmp_path, monkeypatch):
    import optispace.proxies

    configs = []

    def train(cfg, callbacks, progress):
        configs.append((cfg.recipe, cfg.lr, dict(cfg.hyperparameters)))
        return SimpleNamespace(final_val_loss=5.0, diverged=None, tokens_per_s=10.0, probes={})

    monkeypatch.setattr(optispace.proxies, "train", train)
    monkeypatch.setattr("optispace.report.probe_report.write_probe_report", lambda runs, out, header: out)
    recipes = "adamw(lr=3e-3), ember(lr=3e-3, bias_correction=row),adamw(betas=(0.9, 0.95))"
    out = tmp_path / "report"
    assert main(["probe", "--recipes", recipes, "--seeds", "1", *TINY, "--out", str(out)]) == 0
    assert configs == [("adamw", 3e-3, {}), ("ember", 3e-3, {"bias_correction": "row"}),
                       ("adamw", None, {"betas": (0.9, 0.95)})]
    header, runs = read_runs(out)
    assert [r["recipe"] for r in runs] == [
        "adamw(lr=3e-3)", "ember(lr=3e-3, bias_correction=row)", "adamw(betas=(0.9, 0.95))"]
    assert f"--recipes '{recipes}'" in header


def test_an_interrupted_comparison_keeps_the_runs_done(tmp_path, monkeypatch):
    import optispace.proxies

    calls = []

    def train(cfg, callbacks, progress):
        calls.append(cfg.recipe)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return SimpleNamespace(final_val_loss=5.0, diverged=None, tokens_per_s=10.0, probes={})

    monkeypatch.setattr(optispace.proxies, "train", train)
    out = tmp_path / "report"
    assert main(["probe", "--recipes", "adamw,ember", "--seeds", "1", *TINY, "--out", str(out)]) == 130
    assert calls == ["adamw", "ember"]
    header, runs = read_runs(out)
    assert header.startswith("# Unfinished: 2 runs asked for by `optispace probe --recipes adamw,ember")
    assert [(r["recipe"], r["final_val_loss"]) for r in runs] == [("adamw", 5.0)]
    assert main(["probe", "--rebuild", "--out", str(out)]) == 0
    assert (out / "README.md").read_text().startswith("# Unfinished")

"""``optispace probe``: a tiny end-to-end comparison, the rebuild, and bad input."""

from types import SimpleNamespace

import pytest

from optispace.cli import main
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

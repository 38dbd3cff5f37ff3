"""`optispace report`: defaults that just work, one-line errors with exit 2."""

import optuna
import pytest

from optispace.cli import main
from optispace.report.synthetic import known_study
from optispace.search.storage import STORAGE_ENV, open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def journal(tmp_path_factory):
    path = tmp_path_factory.mktemp("storage") / "studies.journal"
    known_study(open_storage(str(path)))
    return path


def error_line(capsys):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_defaults_find_the_storage_and_write_reports_study(journal, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(STORAGE_ENV, str(journal))
    assert main(["report"]) == 0
    assert (tmp_path / "reports" / "known" / "report.md").is_file()
    assert "3 of 5 finished structures suffice" in capsys.readouterr().out


def test_explicit_storage_study_out_and_tolerance(journal, tmp_path, capsys):
    out = tmp_path / "r"
    argv = [
        "report",
        "--storage",
        str(journal),
        "--study",
        "known",
        "--out",
        str(out),
        "--tolerance",
        "0.002",
    ]
    assert main(argv) == 0
    assert "(command line)" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--storage", "{tmp}/missing.journal"], "no study storage at"),
        (["--storage", "sqlite:///{tmp}/missing.db"], "no SQLite database at"),
        (["--storage", "{journal}", "--study", "other"], "no study 'other' in"),
        (["--storage", "{journal}", "--tolerance", "-1"], "--tolerance must be a positive number"),
        (["--storage", "{journal}", "--out", "{journal}"], "is a file; the report is a folder"),
        (["--storage", "foo://x/y"], "'foo' is not a database SQLAlchemy knows"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(journal, tmp_path, capsys, argv, message):
    argv = [a.format(tmp=tmp_path, journal=journal) for a in argv]
    assert main(["report", *argv]) == 2
    assert message in error_line(capsys)
    assert not (tmp_path / "missing.db").exists()


def test_empty_study_and_ambiguous_storage(tmp_path, capsys):
    path = str(tmp_path / "s.journal")
    storage = open_storage(path)
    optuna.create_study(storage=storage, study_name="empty")
    assert main(["report", "--storage", path]) == 2
    assert "study 'empty' in" in error_line(capsys)
    optuna.create_study(storage=storage, study_name="second")
    assert main(["report", "--storage", path]) == 2
    assert "holds 2 studies (empty, second); choose one with --study" in error_line(capsys)


@pytest.mark.slow
def test_reruns_in_fresh_processes_give_the_same_bytes(journal, tmp_path):
    import os
    import subprocess
    import sys

    for hash_seed in ("1", "2"):
        out = tmp_path / hash_seed
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        argv = [sys.executable, "-m", "optispace.cli", "report", "--storage", str(journal), "--out", str(out)]
        subprocess.run(argv, check=True, env=env, capture_output=True)
    for name in ("report.md", "trials.parquet", "curves.parquet"):
        assert (tmp_path / "1" / name).read_bytes() == (tmp_path / "2" / name).read_bytes(), name

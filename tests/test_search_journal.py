"""The journal file: a torn or garbage tail never costs a finished trial, and is set aside, not lost."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_search_run import finished, load, run

from optispace.errors import UserError
from optispace.search.journal import side_file
from optispace.search.storage import open_storage

TAILS = {
    "torn record": b'{"op_code":5,"worker_id":"abc","trial_id":1,"par',
    "garbage line": b"garbage\n",
    "binary garbage": b"\xff\xfe\x00 not json at all",
}


@pytest.mark.parametrize("tail", TAILS.values(), ids=list(TAILS))
def test_a_bad_tail_keeps_every_finished_trial_and_is_set_aside(
    tail: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s.journal"
    run(str(path), 2)
    before = path.read_bytes()
    with open(path, "ab") as f:
        f.write(tail)
    study = run(str(path), 4)
    assert len(finished(study)) == 4 and path.read_bytes().startswith(before)
    assert side_file(path).read_bytes().rstrip(b"\n") == tail.rstrip(b"\n")
    err = capsys.readouterr().err
    assert err.count("torn or garbage tail") == 1 and "line" in err
    assert len(finished(load(str(path)))) == 4, "a fresh reader sees every trial"


def test_an_append_after_a_writer_died_mid_line_starts_on_a_clean_line(tmp_path: Path) -> None:
    path = tmp_path / "s.journal"
    run(str(path), 1)
    study = load(str(path))  # opened before the tear: the open-time check has run already
    with open(path, "ab") as f:
        f.write(b'{"op_code":4,"worker_id":"x"')
    study.set_user_attr("after", 1)
    assert load(str(path)).user_attrs["after"] == 1
    assert side_file(path).exists()


def test_a_file_that_is_no_journal_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "search.toml"
    path.write_text('[study]\nname = "x"')
    with pytest.raises(UserError, match="is not an Optuna journal file"):
        open_storage(str(path))
    assert path.read_text() == '[study]\nname = "x"' and not side_file(path).exists()

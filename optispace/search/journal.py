"""The journal file, read up to its last complete record; a torn or garbage tail is set aside.

Optuna's journal holds one JSON record a line. A writer killed mid-append leaves a line without
its newline, and the next append glues its own record to that fragment; Optuna stops reading at
the first line that does not parse and raises once anything follows it, so from then on no process
could read a single trial. Here, under the journal's lock, everything from the first bad line on
is moved (appended) to a side file beside the journal, never deleted, and one line says so on
stderr: when the storage is opened (the whole file is checked), and before each append (the last
line must be complete, so the next record starts on a clean line).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from optispace.errors import UserError

SIDE_SUFFIX = ".torn"
_RECORD_START = b'{"op_code"'


def side_file(path: str | Path) -> Path:
    """Where the set-aside tails of the journal at ``path`` go."""
    return Path(f"{path}{SIDE_SUFFIX}")


def _is_record(line: bytes) -> bool:
    """A complete journal record: a newline-terminated JSON object with an ``op_code``."""
    if not line.endswith(b"\n"):
        return False
    try:
        record = json.loads(line)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
        return False
    return isinstance(record, dict) and "op_code" in record


def _first_bad_offset(path: Path) -> tuple[int, int] | None:
    """The byte offset and 1-based line of the first line that is not a complete record, if any."""
    offset = 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not _is_record(line):
                if number == 1 and not line.startswith(_RECORD_START):
                    raise UserError(
                        f"storage {path} is not an Optuna journal file (its first line is no journal "
                        "record); give a new path, or an RDB URL such as sqlite:///studies.db"
                    )
                return offset, number
            offset += len(line)
    return None


def _last_line_offset(path: Path) -> tuple[int, int] | None:
    """The offset and line of an unterminated last line, if the file ends with one."""
    size = path.stat().st_size
    if size == 0:
        return None
    with open(path, "rb") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return None
        f.seek(0)
        data = f.read()
    start = data.rfind(b"\n") + 1
    return start, data.count(b"\n", 0, start) + 1


def _set_aside(path: Path, offset: int, line: int) -> None:
    """Move the bytes of ``path`` from ``offset`` on to its side file; say so in one line."""
    side = side_file(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        tail = f.read()
        with open(side, "ab") as out:
            out.write(tail if tail.endswith(b"\n") else tail + b"\n")
            out.flush()
            os.fsync(out.fileno())
        f.truncate(offset)
        f.flush()
        os.fsync(f.fileno())
    print(
        f"optispace: journal {path}: a torn or garbage tail from line {line} ({len(tail)} bytes) was "
        f"moved to {side}; every record before it is kept",
        file=sys.stderr,
    )


def repair(path: str | Path) -> None:
    """Check the whole journal; set aside everything from its first bad line (hold the lock)."""
    path = Path(path)
    if path.exists():
        bad = _first_bad_offset(path)
        if bad is not None:
            _set_aside(path, *bad)


class _CleanTailLock:
    """Optuna's journal file lock which, once held, leaves the file ending on a complete line.

    It has the two methods Optuna's ``JournalFileBackend`` calls on its lock (``acquire`` and
    ``release``); Optuna exports no base class for locks to derive from.
    """

    def __init__(self, path: str) -> None:
        self._path = Path(path)
        self._lock = JournalFileSymlinkLock(path)

    def acquire(self) -> bool:
        self._lock.acquire()
        try:
            torn = _last_line_offset(self._path)
            if torn is not None:
                _set_aside(self._path, *torn)
        except BaseException:
            self._lock.release()
            raise
        return True

    def release(self) -> None:
        self._lock.release()


def journal_backend(path: str) -> JournalFileBackend:
    """Optuna's journal file backend at ``path``, checked and repaired first, with the clean-tail lock."""
    lock = JournalFileSymlinkLock(path)
    lock.acquire()
    try:
        repair(path)
    finally:
        lock.release()
    return JournalFileBackend(path, lock_obj=_CleanTailLock(path))

"""Where studies live: an embedded journal file by default, or any Optuna RDB URL.

The default is Optuna's journal file (``JournalStorage`` + ``JournalFileBackend``), not SQLite:
several local worker processes append to one log under a file lock, which is what the journal was
made for, while SQLite serialises every writer on one database lock and answers "database is
locked" under parallel trials. The journal is append-only, so a worker killed mid-write cannot
corrupt what finished trials wrote (a torn tail is set aside: ``optispace.search.journal``).
Anything that starts with a URL scheme is an RDB URL (``sqlite:///x.db``, ``postgresql+psycopg2://user@host/db``):
that is the way to many workers on many machines.

Both are Optuna's storage classes with no heartbeat of their own: ``optispace.search.heartbeat``
keeps one, alike on both, through the public storage API.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.storages import BaseStorage, JournalStorage, RDBStorage

from optispace.errors import UserError, require
from optispace.search.interrupts import deferred
from optispace.search.journal import journal_backend

#: Overrides the default location (a path or an RDB URL), e.g. for tests or a shared disk.
STORAGE_ENV = "OPTISPACE_STORAGE"
#: A database outage is waited out this long (pauses doubling from FIRST_PAUSE_S to MAX_PAUSE_S).
OUTAGE_S = 60.0
FIRST_PAUSE_S = 0.5
MAX_PAUSE_S = 8.0
#: Creating the schema, several processes may collide; each retries this many times.
SCHEMA_ATTEMPTS = 5
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")


def default_url() -> str:
    """The storage used when none is given: ``$OPTISPACE_STORAGE``, else ``.optispace/studies.journal``.

    The path is relative to the working directory (the repository root for the README's commands)
    and returned absolute, so ``optispace search`` and ``optispace report`` agree on it.
    """
    return os.environ.get(STORAGE_ENV) or str(Path(".optispace/studies.journal").resolve())


def is_rdb_url(url: str) -> bool:
    """True for anything that starts with a URL scheme (``dialect+driver:``); else a journal path.

    One letter before the colon is a Windows drive, not a scheme.
    """
    match = _SCHEME.match(url)
    return match is not None and len(match.group(1)) > 1


def check_url(url: str) -> None:
    """``UserError`` unless ``url`` is a journal path or a database URL SQLAlchemy can dial."""
    if not is_rdb_url(url):
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    example = "such as sqlite:///studies.db or postgresql+psycopg2://user@host/db"
    scheme = _SCHEME.match(url).group(1)
    if not url.startswith(f"{scheme}://"):
        raise UserError(f"storage {_redact(url)}: a database URL is written {scheme}://..., {example}")
    try:
        make_url(url).get_dialect()
    except NoSuchModuleError:  # a subclass of ArgumentError, so first
        raise UserError(
            f"storage {_redact(url)}: {scheme!r} is not a database SQLAlchemy knows; give a URL {example}, "
            "or a file path for a journal"
        ) from None
    except (ArgumentError, ValueError):  # ValueError: a port that is no number
        raise UserError(f"storage {_redact(url)}: not a valid database URL; give one {example}") from None


#: Every method through which a worker reads or writes a study (Optuna's public storage API).
_STORAGE_METHODS = tuple(
    name
    for name, value in vars(BaseStorage).items()
    if inspect.isfunction(value) and not name.startswith("_")
)


class StorageUnavailable(UserError):
    """The database stayed unreachable for :data:`OUTAGE_S` seconds."""


def _deferring(cls: type) -> type:
    """``cls`` with each storage method run under :func:`deferred` and retried through outages.

    Cut anywhere, a read or a write can leave damage: Optuna's journal counts a log as read before
    applying it (a log skipped that way, say another worker's new trial, is never seen again by this
    process and misnumbers every later trial), an append can be cut between lock and unlock, and an
    SQL transaction between its statements. An interrupt therefore waits for the call under way.
    """
    for name in _STORAGE_METHODS:
        setattr(cls, name, _guarded(getattr(cls, name)))
    return cls


def _transient(error: BaseException) -> bool:
    """A lost or refused database connection (Optuna wraps SQLAlchemy's errors in its own)."""
    cause = error.__cause__ if isinstance(error, optuna.exceptions.StorageInternalError) else error
    if isinstance(cause, sqlalchemy.exc.DBAPIError) and cause.connection_invalidated:
        return True
    return isinstance(cause, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError)


def _guarded(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` deferred, and retried with doubling pauses while the database is unreachable.

    After :data:`OUTAGE_S` seconds it raises :class:`StorageUnavailable`: the worker stops with one
    line, and its trial, left RUNNING, is failed and retried by the next worker as a stale one. A
    transaction is rolled back when its connection fails, so a retry repeats no committed write;
    only a commit whose acknowledgement was lost could be made twice.
    """

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        waited, pause = 0.0, FIRST_PAUSE_S
        while True:
            try:
                with deferred():
                    return method(*args, **kwargs)
            except Exception as e:
                if not _transient(e):
                    raise
                if waited >= OUTAGE_S:
                    reason = str(e.__cause__ or e).strip().splitlines()[0]
                    raise StorageUnavailable(
                        f"the storage stayed unreachable for {waited:.0f} s ({reason}); the trial under "
                        "way is retried by the next search"
                    ) from None
            time.sleep(pause)
            waited, pause = waited + pause, min(2 * pause, MAX_PAUSE_S)

    return call


@_deferring
class Journal(JournalStorage):
    """The embedded default: Optuna's journal storage on a checked journal file."""

    def __init__(self, path: str) -> None:
        super().__init__(journal_backend(path))


@_deferring
class Database(RDBStorage):
    """Optuna's RDB storage."""


def open_storage(url: str) -> Journal | Database:
    """Open (creating if needed) the storage at ``url``; ``UserError`` if it cannot be reached."""
    check_url(url)
    if not is_rdb_url(url):
        path = Path(url)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return Journal(str(path))
        except OSError as e:
            raise UserError(f"cannot open the journal file {path}: {e.strerror or e}") from None
    try:
        return _create_database(url)
    except (ImportError, ModuleNotFoundError) as e:
        if url.partition("://")[0] in ("postgresql", "postgresql+psycopg2"):  # SQLAlchemy's default driver
            require("psycopg2", "postgres", f"storage {_redact(url)}")
        raise UserError(f"storage {_redact(url)}: its database driver is missing ({e})") from None
    except Exception as e:  # SQLAlchemy's and the driver's errors have no common base worth naming
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"cannot reach storage {_redact(url)}: {reason}; check the URL, that the server is up, "
            "and the credentials"
        ) from None


def open_existing_storage(url: str) -> Journal | Database:
    """The storage at ``url`` for reading, without creating one where none exists (``UserError``)."""
    if not is_rdb_url(url) and not Path(url).is_file():
        raise UserError(f"no study storage at {url}; run `optispace search` first, or pass --storage")
    sqlite_path = url.removeprefix("sqlite:///").split("?")[0]
    if url.startswith("sqlite:///") and not Path(sqlite_path).is_file():
        raise UserError(f"no SQLite database at {sqlite_path}; check --storage")
    return open_storage(url)


def _create_database(url: str) -> Database:
    """Optuna's RDB storage, creating its tables if needed, safe when several processes start at once.

    Two processes creating the same tables collide (a duplicate table or type); the loser tries
    again and finds the tables there.
    """
    for attempt in range(1, SCHEMA_ATTEMPTS):
        try:
            return Database(url, engine_kwargs={"pool_pre_ping": True})
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            time.sleep(0.1 * attempt)
    return Database(url, engine_kwargs={"pool_pre_ping": True})


def _redact(url: str) -> str:
    """The URL without its password."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}{sep}{credentials.split(':', 1)[0]}:***@{host}"

"""Where studies live: an embedded journal file by default, or any Optuna RDB URL.

The default is Optuna's journal file (``JournalStorage`` + ``JournalFileBackend``), not SQLite:
several local worker processes append to one log under a file lock, which is what the journal was
made for, while SQLite serialises every writer on one database lock and answers "database is
locked" under parallel trials. The journal is append-only, so a worker killed mid-write cannot
corrupt what finished trials wrote. Anything with ``://`` is an RDB URL (``sqlite:///x.db``,
``postgresql+psycopg2://user@host/db``): that is the way to many workers on many machines.

A worker that dies mid-trial leaves its trial RUNNING. Both kinds of storage here find such trials
two ways: a heartbeat older than the grace period (Optuna's heartbeat on RDB storages; the same
contract implemented on the journal below), and, at once, a trial whose worker process on this
host no longer exists. ``optuna.storages.fail_stale_trials`` marks them FAIL and the retry
callback queues their configuration again.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from optispace.errors import UserError

#: Overrides the default location (a path or an RDB URL), e.g. for tests or a shared disk.
STORAGE_ENV = "OPTISPACE_STORAGE"
HEARTBEAT_S = 10
GRACE_S = 30
MAX_RETRY = 3
_HEARTBEAT_ATTR = "optispace:heartbeat"
_HOST_ATTR = "optispace:host"
_PID_ATTR = "optispace:pid"


def default_url() -> str:
    """The storage used when none is given: ``$OPTISPACE_STORAGE``, else ``.optispace/studies.journal``.

    The path is relative to the working directory (the repository root for the README's commands)
    and returned absolute, so ``optispace search`` and ``optispace report`` agree on it.
    """
    return os.environ.get(STORAGE_ENV) or str(Path(".optispace/studies.journal").resolve())


def is_rdb_url(url: str) -> bool:
    """True for an SQLAlchemy URL (``dialect+driver://...``); anything else is a journal path."""
    return "://" in url


def claim(trial_id: int, storage: optuna.storages.BaseStorage) -> None:
    """Record on a trial which process on which host runs it, so an orphan can be recognised."""
    storage.set_trial_system_attr(trial_id, _HOST_ATTR, socket.gethostname())
    storage.set_trial_system_attr(trial_id, _PID_ATTR, os.getpid())


def _orphaned(trial: FrozenTrial) -> bool:
    """The trial's worker ran on this host and its process is gone."""
    pid = trial.system_attrs.get(_PID_ATTR)
    if trial.system_attrs.get(_HOST_ATTR) != socket.gethostname() or not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class _OrphanAware:
    """Adds trials whose local worker process is gone to the heartbeat's stale trials."""

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = set(super()._get_stale_trial_ids(study_id))  # type: ignore[misc]
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))  # type: ignore[attr-defined]
        stale.update(t._trial_id for t in running if _orphaned(t))
        return sorted(stale)


class _HeartbeatJournal(JournalStorage, BaseHeartbeat):
    """Optuna's journal storage with the heartbeat contract of its RDB storage.

    A beat is a system attribute holding the wall-clock time; a RUNNING trial is stale when its
    last beat (or its start, before the first beat) is older than ``grace_s``.
    """

    def __init__(self, path: str, heartbeat_s: int, grace_s: int) -> None:
        super().__init__(JournalFileBackend(path))
        self._heartbeat_s = heartbeat_s
        self._grace_s = grace_s
        self._retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, _HEARTBEAT_ATTR, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            start = trial.datetime_start.timestamp() if trial.datetime_start else now
            if now - trial.system_attrs.get(_HEARTBEAT_ATTR, start) > self._grace_s:
                stale.append(trial._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int:
        return self._heartbeat_s

    def get_heartbeat_stale_trial_callback(self) -> RetryHeartbeatStaleTrialCallback:
        return self._retry


class JournalFileStorage(_OrphanAware, _HeartbeatJournal):
    """The embedded default: a journal file with heartbeats and local orphan detection."""


class HeartbeatRDBStorage(_OrphanAware, RDBStorage):
    """Optuna's RDB storage with local orphan detection added to its heartbeat."""


def open_storage(
    url: str, *, heartbeat_s: int = HEARTBEAT_S, grace_s: int = GRACE_S
) -> JournalFileStorage | HeartbeatRDBStorage:
    """Open (creating if needed) the storage at ``url``; ``UserError`` if it cannot be reached."""
    with warnings.catch_warnings():
        # The heartbeat and the retry callback are "experimental" in Optuna since 2.8; we rely on them.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _open(url, heartbeat_s, grace_s)


def _open(url: str, heartbeat_s: int, grace_s: int) -> JournalFileStorage | HeartbeatRDBStorage:
    if not is_rdb_url(url):
        path = Path(url)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalFileStorage(str(path), heartbeat_s, grace_s)
        except OSError as e:
            raise UserError(f"cannot open the journal file {path}: {e.strerror or e}") from None
    try:
        return HeartbeatRDBStorage(
            url,
            engine_kwargs={"pool_pre_ping": True},
            heartbeat_interval=heartbeat_s,
            grace_period=grace_s,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
        )
    except (ImportError, ModuleNotFoundError) as e:
        raise UserError(f"storage {_redact(url)}: its database driver is missing ({e})") from None
    except Exception as e:  # SQLAlchemy's and the driver's errors have no common base worth naming
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"cannot reach storage {_redact(url)}: {reason}; check the URL, that the server is up, "
            "and the credentials"
        ) from None


def _redact(url: str) -> str:
    """The URL without its password."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}{sep}{credentials.split(':', 1)[0]}:***@{host}"

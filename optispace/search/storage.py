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

import copy
import functools
import inspect
import os
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial, TrialState

from optispace.errors import UserError
from optispace.search.interrupts import deferred
from optispace.search.journal import journal_backend

#: Overrides the default location (a path or an RDB URL), e.g. for tests or a shared disk.
STORAGE_ENV = "OPTISPACE_STORAGE"
HEARTBEAT_S = 10
GRACE_S = 30
MAX_RETRY = 3
_HEARTBEAT_ATTR = "optispace:heartbeat"
_CLAIM_ATTR = "optispace:claim"


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
    """Record on a trial which process on which host runs it, and since when."""
    mark = {"host": socket.gethostname(), "pid": os.getpid(), "at": time.time()}
    storage.set_trial_system_attr(trial_id, _CLAIM_ATTR, mark)


def _own_claim(trial: FrozenTrial) -> dict | None:
    """The trial's claim, unless it has none of its own.

    A retried trial inherits the system attributes of the one it retries; a claim older than the
    trial's start is that inheritance, not its worker's, and is ignored.
    """
    mark = trial.system_attrs.get(_CLAIM_ATTR)
    return mark if isinstance(mark, dict) and mark["at"] >= _started(trial) else None


def _started(trial: FrozenTrial) -> float:
    return trial.datetime_start.timestamp() if trial.datetime_start else time.time()


def _orphaned(trial: FrozenTrial) -> bool:
    """The trial's worker ran on this host and its process is gone."""
    mark = _own_claim(trial)
    if mark is None or mark["host"] != socket.gethostname():
        return False
    try:
        os.kill(mark["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class RetryConfiguration(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a failed trial (a WAITING copy of its parameters), without its user attributes.

    Optuna copies them all; the ``failure`` of the interrupted run would then stick to the retry,
    and a retry that completes would read as diverged. The run records the rest again.
    """

    def __init__(self) -> None:
        super().__init__(max_retry=MAX_RETRY)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        configuration = copy.deepcopy(trial)
        configuration.user_attrs = {}
        super().__call__(study, configuration)


class _OrphanAware:
    """Adds trials whose local worker process is gone to the heartbeat's stale trials."""

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = set(super()._get_stale_trial_ids(study_id))  # type: ignore[misc]
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))  # type: ignore[attr-defined]
        stale.update(t._trial_id for t in running if _orphaned(t))
        return sorted(stale)


#: Every method through which a worker reads or writes a study (Optuna's storage and heartbeat API).
_STORAGE_METHODS = tuple(
    name
    for base in (BaseStorage, BaseHeartbeat)
    for name, value in vars(base).items()
    if inspect.isfunction(value) and not name.startswith("_")
) + ("_get_stale_trial_ids",)


def _deferring(cls: type) -> type:
    """``cls`` with each storage method run under :func:`deferred`: an interrupt waits for it.

    Cut anywhere, a read or a write can leave damage: Optuna's journal counts a log as read before
    applying it (a log skipped that way, say another worker's new trial, is never seen again by this
    process and misnumbers every later trial), an append can be cut between lock and unlock, and an
    SQL transaction between its statements.
    """
    for name in _STORAGE_METHODS:
        setattr(cls, name, _deferred_method(getattr(cls, name)))
    return cls


def _deferred_method(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def run_deferred(*args: Any, **kwargs: Any) -> Any:
        with deferred():
            return method(*args, **kwargs)

    return run_deferred


class _HeartbeatJournal(JournalStorage, BaseHeartbeat):
    """Optuna's journal storage with the heartbeat contract of its RDB storage.

    A beat is a system attribute holding the wall-clock time; a RUNNING trial is stale when its
    last beat (or its start, before the first beat) is older than ``grace_s`` seconds.
    """

    def __init__(self, path: str, heartbeat_s: int, grace_s: int) -> None:
        super().__init__(journal_backend(path))
        self._heartbeat_s = heartbeat_s
        self._grace_s = grace_s
        self._retry = RetryConfiguration()

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, _HEARTBEAT_ATTR, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            # max: a retried trial inherits the last beat of the trial it retries.
            last = max(trial.system_attrs.get(_HEARTBEAT_ATTR, 0.0), _started(trial))
            if now - last > self._grace_s:
                stale.append(trial._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int:
        return self._heartbeat_s

    def get_heartbeat_stale_trial_callback(self) -> RetryConfiguration:
        return self._retry


@_deferring
class JournalFileStorage(_OrphanAware, _HeartbeatJournal):
    """The embedded default: a journal file with heartbeats and local orphan detection."""


@_deferring
class HeartbeatRDBStorage(_OrphanAware, RDBStorage):
    """Optuna's RDB storage with local orphan detection added to its heartbeat."""


def open_storage(
    url: str, *, heartbeat_s: int | None = None, grace_s: int | None = None
) -> JournalFileStorage | HeartbeatRDBStorage:
    """Open (creating if needed) the storage at ``url``; ``UserError`` if it cannot be reached.

    ``heartbeat_s`` and ``grace_s`` default to :data:`HEARTBEAT_S` and :data:`GRACE_S`.
    """
    heartbeat_s = HEARTBEAT_S if heartbeat_s is None else heartbeat_s
    grace_s = GRACE_S if grace_s is None else grace_s
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
            heartbeat_stale_trial_callback=RetryConfiguration(),
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

"""Heartbeats and stale trials, alike on every storage, through Optuna's public storage API.

A worker that dies mid-trial leaves its trial RUNNING, and a search waiting for N finished trials
would wait on it for good. Optuna's own heartbeat exists only for its RDB storage, keeps the beats
in a table of its own, and counts a trial stale only once it has beaten: a worker killed between
``ask`` and its first beat is never noticed. Here a beat is a system attribute of the trial (the
wall-clock time), written by a thread every ``interval_s``. A RUNNING trial is stale when its last
sign of life (its latest beat, else its start) is older than the grace period, or at once when its
worker ran on this host and that process is gone. :func:`fail_stale` marks such trials FAIL and
queues their configurations again. Hosts must agree on the time to within the grace period.
"""

from __future__ import annotations

import contextlib
import copy
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator

import optuna
from optuna.storages import BaseStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from optispace.errors import UserError

HEARTBEAT_S = 10
GRACE_S = 30
HEARTBEAT_ATTR = "optispace:heartbeat"
CLAIM_ATTR = "optispace:claim"
MAX_RETRY = 3


def trial_id(storage: BaseStorage, study: optuna.Study, number: int) -> int:
    """The storage's id of trial ``number`` of ``study``."""
    study_id = storage.get_study_id_from_name(study.study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


def claim(storage: BaseStorage, trial: int) -> None:
    """Record on trial id ``trial`` which process on which host runs it, and since when."""
    mark = {"host": socket.gethostname(), "pid": os.getpid(), "at": time.time()}
    storage.set_trial_system_attr(trial, CLAIM_ATTR, mark)


def _started(trial: FrozenTrial) -> float:
    return trial.datetime_start.timestamp() if trial.datetime_start else time.time()


def _own(trial: FrozenTrial, key: str) -> object | None:
    """The trial's system attribute ``key``, unless it was inherited.

    A retried trial inherits the system attributes of the one it retries; a claim or a beat older
    than the trial's start is that inheritance, not its own worker's.
    """
    value = trial.system_attrs.get(key)
    at = value.get("at") if isinstance(value, dict) else value
    return value if isinstance(at, int | float) and at >= _started(trial) else None


def _orphaned(trial: FrozenTrial) -> bool:
    """The trial's worker ran on this host and its process is gone."""
    mark = _own(trial, CLAIM_ATTR)
    if not isinstance(mark, dict) or mark.get("host") != socket.gethostname():
        return False
    try:
        os.kill(mark["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def is_stale(trial: FrozenTrial, grace_s: float, now: float) -> bool:
    """A RUNNING trial with no sign of life for ``grace_s`` seconds, or whose local worker is gone."""
    beat = _own(trial, HEARTBEAT_ATTR)
    last = beat if isinstance(beat, float) else _started(trial)
    return now - last > grace_s or _orphaned(trial)


class RetryConfiguration(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a failed trial (a WAITING copy of its parameters), without its user attributes.

    Optuna copies them all; the ``failure`` of the interrupted run would then stick to the retry,
    and a retry that completes would read as diverged. The run records the rest again.
    """

    def __init__(self) -> None:
        with warnings.catch_warnings():
            # "Experimental" in Optuna since 2.8; its interface is pinned with Optuna in pyproject.toml.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(max_retry=MAX_RETRY)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        configuration = copy.deepcopy(trial)
        configuration.user_attrs = {}
        super().__call__(study, configuration)


def fail_stale(study: optuna.Study, storage: BaseStorage, grace_s: float) -> list[int]:
    """Fail the stale trials of ``study`` and queue their configurations again; their numbers.

    When two workers race to fail one trial, the storage lets one change its state and raises
    ``UpdateFinishedTrialError`` for the other, so each is retried once.
    """
    now = time.time()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_stale(trial, grace_s, now):
            continue
        key = trial_id(storage, study, trial.number)
        try:
            storage.set_trial_state_values(key, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        RetryConfiguration()(study, storage.get_trial(key))
        failed.append(trial.number)
    return failed


@contextlib.contextmanager
def heartbeat(storage: BaseStorage, trial: int, interval_s: float) -> Iterator[None]:
    """Within the block, a thread beats for trial id ``trial`` every ``interval_s`` seconds."""
    stop = threading.Event()

    def beat() -> None:
        while True:
            # UserError: the storage stayed down, and the worker's own next call stops it;
            # UpdateFinishedTrialError: another worker took the trial for stale (the tell will say so).
            with contextlib.suppress(UserError, optuna.exceptions.UpdateFinishedTrialError):
                storage.set_trial_system_attr(trial, HEARTBEAT_ATTR, time.time())
            if stop.wait(interval_s):
                return

    thread = threading.Thread(target=beat, name="optispace-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()

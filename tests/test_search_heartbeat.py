"""Stale trials on every storage: a worker killed at any point never leaves a search waiting on it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from test_search_run import finished, load, run, start_worker

import optispace.search.heartbeat as heartbeat_module
from optispace.search.heartbeat import CLAIM_ATTR, HEARTBEAT_ATTR, is_stale

KILLED_AFTER_ASK = """
import os, signal, sys
from test_search_run import search_text
from optispace.search.spec import parse_search_text
from optispace.search.storage import open_storage
from optispace.search.study import open_study
study = open_study(parse_search_text(search_text(), "unit.toml"), open_storage(sys.argv[1]), "unit")
study.ask()
os.kill(os.getpid(), signal.SIGKILL)
"""


@contextlib.contextmanager
def within(seconds: int) -> Iterator[None]:
    """Raise ``TimeoutError`` in the main thread if the block runs longer than ``seconds``."""

    def hung(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def kill_right_after_ask(url: str) -> None:
    """A process that creates a RUNNING trial and dies before it claims it or beats."""
    process = start_worker(url, 0, 0.0, script=KILLED_AFTER_ASK)
    process.wait(timeout=120)
    assert process.returncode == -signal.SIGKILL, process.stderr.read()


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_a_worker_killed_right_after_ask_does_not_hang_the_next_search(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = str(tmp_path / "s.journal") if kind == "journal" else f"sqlite:///{tmp_path / 's.db'}"
    assert_a_kill_right_after_ask_is_recovered(url, monkeypatch)


def assert_a_kill_right_after_ask_is_recovered(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """One trial, a worker killed right after ``ask()``, then a search of 3: it fails the lost trial
    (1 s grace) and finishes 3 trials within 60 s, leaving none RUNNING."""
    run(url, 1)
    kill_right_after_ask(url)
    (lost,) = load(url).get_trials(states=(TrialState.RUNNING,))
    monkeypatch.setattr(heartbeat_module, "GRACE_S", 1)
    with within(60):
        study = run(url, 3)
    assert study.trials[lost.number].state == TrialState.FAIL
    assert len(finished(study)) == 3 and not study.get_trials(states=(TrialState.RUNNING,))


def _frozen(system_attrs: dict, started: datetime) -> optuna.trial.FrozenTrial:
    return optuna.trial.FrozenTrial(
        number=0, state=TrialState.RUNNING, value=None, datetime_start=started, datetime_complete=None,
        params={}, distributions={}, user_attrs={}, system_attrs=system_attrs, intermediate_values={},
        trial_id=0,
    )  # fmt: skip


def test_a_trial_is_stale_after_the_grace_period_without_a_sign_of_life() -> None:
    now = datetime.now()
    start = now - timedelta(seconds=100)
    t = now.timestamp()
    assert not is_stale(_frozen({}, now), 30, t), "just started"
    assert is_stale(_frozen({}, start), 30, t), "never beat"
    assert not is_stale(_frozen({HEARTBEAT_ATTR: t - 5}, start), 30, t), "beats"
    assert is_stale(_frozen({HEARTBEAT_ATTR: t - 50}, start), 30, t), "stopped beating"
    inherited = {HEARTBEAT_ATTR: t - 200, CLAIM_ATTR: {"host": "elsewhere", "pid": 1, "at": t - 200}}
    assert not is_stale(_frozen(inherited, now), 30, t), "a retry's inherited beat is not its own"


def test_a_trial_whose_local_worker_is_gone_is_stale_at_once() -> None:
    gone = subprocess.run([sys.executable, "-c", textwrap.dedent("import os; print(os.getpid())")],
                          capture_output=True, text=True, check=True)  # fmt: skip
    mark = {"host": socket.gethostname(), "pid": int(gone.stdout), "at": time.time()}
    assert is_stale(_frozen({CLAIM_ATTR: mark}, datetime.now() - timedelta(seconds=1)), 30, time.time())
    alive = {**mark, "pid": os.getpid()}
    assert not is_stale(_frozen({CLAIM_ATTR: alive}, datetime.now() - timedelta(seconds=1)), 30, time.time())

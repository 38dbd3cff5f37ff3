"""Studies on PostgreSQL: several workers, dead workers, stale heartbeats; exactly N every time.

A throwaway server is started for the session (initdb + pg_ctl on 127.0.0.1 and a free port, as
the ``postgres`` user when run as root, since the server refuses root) and removed afterwards. Where
the server binaries are absent these tests are skipped with that reason; ``.ci/run`` installs them.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from test_search_heartbeat import assert_a_kill_right_after_ask_is_recovered
from test_search_run import FakeTrainer, finished, load, run, start_worker, wait_for_exit, wait_for_running

import optispace.search.heartbeat as heartbeat_module
import optispace.search.storage as storage_module
from optispace.search.heartbeat import CLAIM_ATTR, HEARTBEAT_ATTR, trial_id
from optispace.search.storage import StorageUnavailable, open_storage

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def _server_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    path = found[-1] if found else shutil.which("initdb")
    return Path(path).parent if path else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Server:
    """A throwaway PostgreSQL server: its base URL, and a way to stop it for a while."""

    url: str
    pg_ctl: list
    data: Path
    options: str
    log: Path

    def stop(self) -> None:
        """Stop the server at once: every connection is cut."""
        self._ctl("-m", "immediate", "stop")

    def start(self) -> None:
        self._ctl("-o", self.options, "-l", self.log, "-w", "start")

    def restart(self, down_s: float) -> None:
        """Stop the server, wait ``down_s`` seconds, start it again."""
        self.stop()
        time.sleep(down_s)
        self.start()

    def _ctl(self, *args: object) -> None:
        subprocess.run([*self.pg_ctl, "-D", self.data, *args], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=True)  # fmt: skip


@pytest.fixture(scope="session")
def postgres() -> Iterator[Server]:
    """A fresh server whose ``postgres`` database takes trust authentication (fsync off)."""
    bin_dir = _server_bin()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin or PATH"
        )
    root = Path(tempfile.mkdtemp(prefix="optispace-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "check": True}
    subprocess.run(
        [*as_user, bin_dir / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"], **quiet
    )
    options = f"-h 127.0.0.1 -p {port} -k {root} -F -c max_connections=200"
    server = Server(
        f"postgresql+psycopg2://postgres@127.0.0.1:{port}", [*as_user, bin_dir / "pg_ctl"], data, options,
        root / "log",
    )  # fmt: skip
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def url(postgres: Server, request: pytest.FixtureRequest) -> str:
    """A new, empty database on the session's server, for one test."""
    import psycopg2

    name = "t_" + request.node.name.lower().replace("[", "_").replace("]", "")[:50]
    connection = psycopg2.connect(postgres.url.replace("postgresql+psycopg2", "postgresql") + "/postgres")
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cursor.execute(f'CREATE DATABASE "{name}"')
    connection.close()
    return f"{postgres.url}/{name}"


def test_three_workers_finish_exactly_n_without_duplicates_or_losses(url: str) -> None:
    study = run(url, 9, FakeTrainer(sleep_s=0.02), workers=3)
    numbers = [t.number for t in study.trials]
    assert numbers == list(range(len(numbers))), "every trial number once"
    assert len(finished(study)) == 9
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    surplus = [t for t in study.trials if t.state == TrialState.FAIL]
    assert all(t.user_attrs["failure"].startswith("surplus") for t in surplus)
    for trial in finished(study):
        assert trial.user_attrs["worker"] in {0, 1, 2} and trial.user_attrs["structure"]


def test_a_worker_killed_mid_trial_is_retried_and_the_study_ends_with_exactly_n(url: str) -> None:
    worker = start_worker(url, 5, sleep_s=5.0)
    killed = wait_for_running(url, worker)
    worker.send_signal(signal.SIGKILL)
    wait_for_exit(worker)
    study = run(url, 5)
    assert len(finished(study)) == 5
    assert study.trials[killed.number].state == TrialState.FAIL
    (retried,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number]
    assert retried.params == killed.params and retried.state == TrialState.COMPLETE


def test_sigterm_mid_trial_fails_the_trial_queues_it_again_and_leaves_nothing_running(url: str) -> None:
    worker = start_worker(url, 3, sleep_s=5.0)
    interrupted = wait_for_running(url, worker)
    worker.send_signal(signal.SIGTERM)
    assert wait_for_exit(worker) == 130
    study = load(url)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert study.trials[interrupted.number].user_attrs["failure"].startswith("interrupted: SIGTERM")
    (waiting,) = study.get_trials(states=(TrialState.WAITING,))
    assert waiting.params == interrupted.params and waiting.user_attrs == {}
    assert len(finished(run(url, 3))) == 3


def test_a_trial_whose_heartbeat_stopped_on_another_host_is_failed_and_retried(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(heartbeat_module, "GRACE_S", 1)
    run(url, 1)
    storage = open_storage(url)
    study = optuna.load_study(study_name="unit", storage=storage)
    lost = study.ask(
        {"embed.second_moment": optuna.distributions.CategoricalDistribution(["full", "factored"])}
    )
    key = trial_id(storage, study, lost.number)
    storage.set_trial_system_attr(key, CLAIM_ATTR, {"host": "elsewhere", "pid": 1, "at": time.time()})
    storage.set_trial_system_attr(key, HEARTBEAT_ATTR, time.time())
    time.sleep(2.5)  # past the grace period: the heartbeat is stale
    study = run(url, 3)
    assert study.trials[lost.number].state == TrialState.FAIL
    assert len(finished(study)) == 3
    assert [t.system_attrs.get("failed_trial") for t in study.trials].count(lost.number) == 1
    assert load(url).trials[-1].state != TrialState.RUNNING


def test_a_worker_killed_right_after_ask_does_not_hang_the_next_search(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert_a_kill_right_after_ask_is_recovered(url, monkeypatch)


OPEN_AT = """
import sys, time
import optispace.search.storage as storage_module
from optispace.search.storage import StorageUnavailable, open_storage
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # every process opens at the same moment
open_storage(sys.argv[1])
"""


def test_processes_creating_the_schema_together_all_succeed(url: str) -> None:
    at = str(time.time() + 8.0)  # after every process has imported optuna and SQLAlchemy
    processes = [
        subprocess.Popen([sys.executable, "-c", OPEN_AT, url, at], stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    errors = [p.communicate(timeout=120)[1] for p in processes]
    assert [p.returncode for p in processes] == [0] * 4, errors


def test_a_database_restart_mid_search_is_waited_out_and_ends_with_exactly_n(
    url: str, postgres: Server
) -> None:
    worker = start_worker(url, 3, sleep_s=0.5)
    wait_for_running(url, worker)
    postgres.restart(down_s=3.0)
    code = wait_for_exit(worker, timeout_s=180)
    stderr = worker.stderr.read()
    assert code == 0 and "Traceback" not in stderr, stderr
    study = run(url, 3)
    assert len(finished(study)) == 3 and not study.get_trials(states=(TrialState.RUNNING,))


def test_an_outage_longer_than_the_wait_stops_the_worker_with_one_line(
    url: str, postgres: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(url, 1)
    monkeypatch.setattr(storage_module, "OUTAGE_S", 1.0)
    storage = open_storage(url)
    postgres.stop()
    try:
        with pytest.raises(StorageUnavailable, match=r"the storage stayed unreachable for \d+ s \("):
            storage.get_all_studies()
    finally:
        postgres.start()

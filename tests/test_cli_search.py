"""``optispace search``: user mistakes exit 2 with one line and touch no storage; real runs end to end."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from optuna.trial import TrialState

from optispace.cli import main
from optispace.search.storage import STORAGE_ENV, default_url, open_storage

ROOT = Path(__file__).parent.parent
SMOKE = ROOT / "searches" / "smoke.toml"

# One of each kind of mistake the issue names, as an edit of searches/smoke.toml, and the message;
# "{line}" stands for the line of the edit.
BAD_FILES = {
    "a list where one value is allowed": (
        ("eval_every = 16", "eval_every = [16, 32]"),
        "smoke.toml:{line}: proxy.eval_every: takes one value, not a list",
    ),
    "a width the heads do not divide": (
        ("steps = 64", "dim = [32, 34]\nsteps = 64"),
        "smoke.toml:{line}: proxy.dim: ModelConfig: dim 34 must split into 2 heads",
    ),
    "a vocabulary larger than the corpus allows": (
        ("steps = 64", "vocab = [512, 100000000000]\nsteps = 64"),
        "smoke.toml:{line}: proxy.vocab: 100000000000 is not a vocabulary",
    ),
    "a budget under one step": (
        ("steps = 64", "tokens = 100"),
        "smoke.toml:{line}: proxy.tokens: gives 100 tokens, fewer than one step of 256",
    ),
    "toml syntax": (("seed = 0", "seed = = 0"), "invalid TOML: Invalid value (at line {line}, column 8)"),
    "unknown key": (
        ("seed = 0", "sead = 0"),
        "smoke.toml:{line}: study.sead: unknown key; allowed here: name,",
    ),
    "wrong type": (("trials = 8", 'trials = "eight"'), "smoke.toml:{line}: study.trials: must be an integer"),
    "empty choices": (
        ('second_moment = ["none", "full"]', "second_moment = []"),
        "smoke.toml:{line}: roles.matrix.second_moment: must be a non-empty array",
    ),
    "lr range reversed": (
        ("lr = [1e-3, 3e-2]", "lr = [3e-2, 1e-3]"),
        "smoke.toml:{line}: roles.embed.lr: range [0.03, 0.001] is reversed or empty",
    ),
    "unknown primitive": (
        ('chain = "momentum(0.9) > second_moment(full)"', 'chain = "adam"'),
        "smoke.toml:{line}: roles.vector.chain: not a valid chain",
    ),
    "unknown role": (("[roles.vector]", "[roles.bias]"), "smoke.toml:{line}: roles.bias: unknown role"),
    "unknown choice": (
        ('"ema", "nesterov", "lion"', '"ema", "adam"'),
        "smoke.toml:{line}: roles.matrix.momentum: unknown choice 'adam'",
    ),
}


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    return tmp_path / "studies" / "s.journal"


@pytest.mark.parametrize("name", BAD_FILES)
def test_a_bad_search_file_exits_2_with_one_line_and_writes_nothing(
    name: str, tmp_path: Path, storage: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (old, new), message = BAD_FILES[name]
    text = SMOKE.read_text()
    assert old in text
    line = text[: text.index(old)].count("\n") + 1
    path = tmp_path / "smoke.toml"
    path.write_text(text.replace(old, new, 1))
    assert main(["search", str(path), "--storage", str(storage)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("optispace search: error: ")
    assert message.format(line=line) in err
    assert "Traceback" not in err
    assert not storage.parent.exists(), "nothing is written before the file is valid"


def test_an_unreachable_storage_url_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    url = "postgresql+psycopg2://optispace:secret@127.0.0.1:1/optispace"
    assert main(["search", str(SMOKE), "--storage", url]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "cannot reach storage postgresql+psycopg2://optispace:***@127.0.0.1:1/optispace" in err
    assert "secret" not in err


@pytest.mark.parametrize("flags", [["--n-trials", "0"], ["--workers", "0"], ["--rank-offset", "-1"]])
def test_bad_flags_exit_2(flags: list[str], storage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", str(SMOKE), "--storage", str(storage), *flags]) == 2
    assert f"{flags[0]} must be an integer" in capsys.readouterr().err
    assert not storage.exists()


# Ranks per trial (``[proxy] nproc``): the [proxy] lines added to smoke.toml, its pruner, the flags,
# the key blamed and the message. Two GPUs are visible (mocked).
BAD_RANKS = {
    "no ranks": ("nproc = 0", "none", (), "proxy.nproc", "must be an integer from 1 to 1024, not 0"),
    "unknown parallel": ('nproc = 2\nparallel = "zero"', "none", (), "proxy.parallel",
                         "'zero' is not allowed; choose one of ddp, fsdp2"),
    "a pruner": ("nproc = 2", "median", (), "study.pruner",
                 "a pruner stops a trial mid-run, a decision that would have to reach each of its 2 ranks"),
    "an uneven batch": ("nproc = 3", "none", (), "proxy.nproc",
                        "3 ranks cannot split the batch of 8 sequences"),
    "a regime of one process": ('nproc = 2\nregime = "sft"', "none", (), "proxy.nproc",
                                "regime sft trains in one process for now; use nproc = 1"),
    "probes under fsdp2": ('nproc = 2\nparallel = "fsdp2"\nprobes = ["ray"]', "none", (), "proxy.probes",
                           'probes read whole parameters on rank 0, which parallel = "fsdp2" shards'),
    "a pinned GPU": ('nproc = 2\ndevice = "cuda:1"', "none", (), "proxy.nproc",
                     '2 ranks need a GPU each, and device = "cuda:1" pins one; use device = "cuda"'),
    "more ranks than GPUs": ('nproc = 2\ndevice = "cuda"', "none", ("--workers", "2"), "proxy.nproc",
                             "2 worker(s) x 2 ranks need 4 GPUs, one per rank; 2 visible"),
}


@pytest.mark.parametrize("name", BAD_RANKS)
def test_bad_ranks_per_trial_exit_2_with_one_line_and_store_nothing(
    name: str, storage: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from optispace.search.locate import key_lines

    lines, pruner, flags, key, message = BAD_RANKS[name]
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    text = SMOKE.read_text().replace('pruner = "median"', f'pruner = "{pruner}"')
    text = text.replace("threads = 1", f"threads = 1\n{lines}")
    path = tmp_path / "smoke.toml"
    path.write_text(text)
    assert main(["search", str(path), "--storage", str(storage), *flags]) == 2
    err = capsys.readouterr().err
    line = key_lines(text)[tuple(key.split("."))]
    assert err.count("\n") == 1 and f"smoke.toml:{line}: {key}: {message}" in err, err
    assert not storage.parent.exists(), "nothing is written before the file is valid"


BAD_STORAGES = {
    "scheme without //": (
        "sqlite:/tmp/x.db",
        "storage sqlite:/tmp/x.db: a database URL is written sqlite://...",
    ),
    "unknown scheme": ("foo://bar/db", "storage foo://bar/db: 'foo' is not a database SQLAlchemy knows"),
    "malformed URL": (
        "postgresql://u@h:port/db",
        "storage postgresql://u@h:port/db: not a valid database URL",
    ),
    "a TOML file": ("{smoke}", "smoke.toml is not an Optuna journal file"),
}


@pytest.mark.parametrize("name", BAD_STORAGES)
def test_a_storage_that_is_not_a_database_url_or_journal_is_one_line(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    copy = tmp_path / "smoke.toml"
    copy.write_text(SMOKE.read_text())
    url, message = BAD_STORAGES[name]
    assert main(["search", str(SMOKE), "--storage", url.format(smoke=copy)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smoke.toml"], "nothing created"
    assert copy.read_text() == SMOKE.read_text()


def test_a_study_name_too_long_for_a_database_is_refused(
    storage: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["search", str(SMOKE), "--storage", str(storage), "--study", "s" * 600]) == 2
    assert "--study: must be at most 512 characters, not 600" in capsys.readouterr().err
    assert not storage.parent.exists()


class _Valid(Exception):
    """Raised in place of running a search file the fuzzer happened to leave valid."""


def _not_run(*args: object, **kwargs: object) -> None:
    raise _Valid


GARBAGE = ["", "=", "[", "]", '"', '"""', "-1", "1e999", "nan", "99999999999999999999999", "[]", "{}", "true",
           '"zipf:s=0"', '"cuda:7"', "\x00", "\udcff", "[roles.matrix]", "é", "#"]  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_search_files_exit_2_with_one_line_and_touch_no_storage(
    data: st.DataObject, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import optispace.search.run

    monkeypatch.setattr(optispace.search.run, "run_search", _not_run)
    text = SMOKE.read_text()
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 40))
        text = text[:at] + data.draw(st.sampled_from(GARBAGE)) + text[at + cut :]
    path = tmp_path / "fuzz.toml"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    storage = tmp_path / "fuzz" / "s.journal"
    capsys.readouterr()
    try:
        code = main(["search", str(path), "--storage", str(storage)])
    except _Valid:
        return  # still a valid search file: nothing to refuse
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("optispace search: error: "), err
    assert not storage.parent.exists()


def test_the_default_storage_is_one_place_overridable_by_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_url() == str(tmp_path / ".optispace" / "studies.journal")
    monkeypatch.setenv(STORAGE_ENV, "postgresql+psycopg2://u@h/db")
    assert default_url() == "postgresql+psycopg2://u@h/db"


def search(*args: str, env_storage: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if env_storage is not None:
        env[STORAGE_ENV] = str(env_storage)
    return subprocess.Popen(
        [sys.executable, "-m", "optispace.cli", "search", *args, "--no-progress"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def load(storage: Path) -> optuna.Study:
    return optuna.load_study(study_name="smoke", storage=open_storage(str(storage)))


@pytest.mark.slow
def test_smoke_search_runs_the_tiny_proxy_and_resumes(storage: Path) -> None:
    done = search(str(SMOKE), "--n-trials", "3", env_storage=storage)
    out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err
    assert "study 'smoke'" in out and "3 finished trials" in out
    done = search(str(SMOKE), "--storage", str(storage), "--n-trials", "4")
    out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err
    done = search(str(SMOKE), "--storage", str(storage), "--n-trials", "2")
    _, err = done.communicate(timeout=300)
    assert done.returncode == 0 and "already had more than 2 finished trials; none were run" in err
    study = load(storage)
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 4
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    assert all(t.user_attrs["failure"] for t in study.get_trials(states=(TrialState.FAIL,)))
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        attrs = trial.user_attrs
        assert attrs["device"] == "cpu" and attrs["corpus_fingerprint"] and attrs["tokens_per_s"] > 0
        assert attrs["seed_losses"] == [pytest.approx(trial.values[0])] and attrs["seeds"] == [0]
        assert set(trial.intermediate_values) == {16, 32, 48, 64}
        assert attrs["state_bytes"] == sum(v for k, v in attrs.items() if k.startswith("state_bytes."))
    assert study.user_attrs["question"].startswith("Does a study run")


def test_worker_processes_log_each_evaluation_off_a_terminal(storage: Path) -> None:
    done = search(str(SMOKE), "--storage", str(storage), "--n-trials", "2", "--workers", "2")
    _, err = done.communicate(timeout=300)
    assert done.returncode == 0, err
    assert re.search(r"worker [01] optispace\.train: step 64/64: ", err), err


def interrupt_when_running(worker: subprocess.Popen, storage: Path, running: int) -> str:
    """SIGTERM ``worker`` once ``running`` trials run; its exit code must be 130. Returns stderr."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert worker.poll() is None, worker.communicate()[1]
        if storage.exists() and sum(t.state == TrialState.RUNNING for t in _trials(storage)) >= running:
            break
        time.sleep(0.05)
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=120)
    assert worker.returncode == 130, err
    assert "optispace search: interrupted" in err
    return err


@pytest.mark.slow
def test_sigterm_leaves_no_trial_running(storage: Path) -> None:
    worker = search(
        str(SMOKE), "--storage", str(storage), "--n-trials", "200"
    )  # still running when signalled
    interrupt_when_running(worker, storage, running=1)
    assert not [t for t in _trials(storage) if t.state == TrialState.RUNNING]


@pytest.mark.slow
def test_sigterm_to_the_parent_of_two_workers_stops_both_cleanly(storage: Path, tmp_path: Path) -> None:
    # Trials of minutes, so that both workers are surely mid-trial when the signal reaches them.
    long = tmp_path / "smoke.toml"
    long.write_text(SMOKE.read_text().replace("steps = 64", "steps = 20000", 1))
    worker = search(str(long), "--storage", str(storage), "--n-trials", "8", "--workers", "2")
    interrupt_when_running(worker, storage, running=2)
    trials = _trials(storage)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    interrupted = [t for t in trials if t.user_attrs.get("failure", "").startswith("interrupted: SIGTERM")]
    assert sorted(t.user_attrs["worker"] for t in interrupted) == [0, 1]
    retried = {t.system_attrs["failed_trial"] for t in trials if t.state == TrialState.WAITING}
    assert retried == {t.number for t in interrupted}, "each interrupted trial is queued again"


def _trials(storage: Path) -> list[optuna.trial.FrozenTrial]:
    try:
        return load(storage).trials
    except KeyError:  # the study is not created yet
        return []

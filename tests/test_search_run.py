"""Running studies: exact trial counts, resume, divergence, crashes, SIGKILL and SIGTERM.

A fake trainer stands in for the proxy here (the real one runs in tests/test_cli_search.py): its
loss is a known function of the matrix lr, it can sleep, diverge or crash on chosen lrs, and it is
picklable so worker processes can use it.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from hypothesis import given
from hypothesis import strategies as st
from optuna.trial import TrialState

from optispace.errors import UserError
from optispace.proxies.train import RunRecord
from optispace.search.interrupts import Interrupted, deferred, interrupts_raise
from optispace.search.run import _surplus, counts, cpu_threads, run_search, worker_device
from optispace.search.spec import parse_search_text
from optispace.search.storage import open_storage
from optispace.search.study import open_study, trial_seed

PENALTY = 20.0

SEARCH = """
[study]
name = "unit"
question = "Does the run loop count, resume and recover exactly?"
seed = 3
trials = 4
seeds = [0, 1]
sampler = "{sampler}"
pruner = "{pruner}"
penalty = {penalty}

[proxy]
tier = "tiny"
steps = 4
eval_every = 1

[roles.embed]
second_moment = ["full", "factored"]
lr = 1e-2

[roles.head]
tie = "embed"

[roles.matrix]
momentum = ["none", "ema"]
normalization = ["none", "sign"]
lr = [1e-4, 1e-1]
beta1 = [0.8, 0.95]

[roles.vector]
chain = "momentum(0.9) > second_moment(full)"
lr = 3e-3
"""


def search_text(sampler: str = "random", pruner: str = "none") -> str:
    return SEARCH.format(sampler=sampler, pruner=pruner, penalty=PENALTY)


@dataclass(frozen=True)
class FakeTrainer:
    """Loss ``3 + (log10(matrix lr) + 2.5)^2 + seed/100``, reported on steps 1..4.

    ``sleep_s`` per step; a matrix lr above ``diverge_lr`` diverges at step 2, above ``crash_lr``
    raises ``RuntimeError("boom")`` at step 3.
    """

    sleep_s: float = 0.0
    diverge_lr: float = math.inf
    crash_lr: float = math.inf

    def __call__(self, config: dict, on_eval) -> RunRecord:
        lr = config["role_lr"]["matrix"]
        loss = 3.0 + (math.log10(lr) + 2.5) ** 2 + config["seed"] / 100
        record = RunRecord(
            config=config,
            corpus={"fingerprint": "fake"},
            state_bytes={"embed": 8, "matrix": 24},
            tokens_per_s=1000.0,
            wall_time_s=0.01,
            device="cpu",
        )
        for step in range(1, 5):
            time.sleep(self.sleep_s)
            if lr > self.diverge_lr and step == 2:
                record.diverged, record.diverged_step = "loss above bound", step
                return record
            if lr > self.crash_lr and step == 3:
                raise RuntimeError("boom")
            on_eval(step, step * 256, loss + 1.0 / step)
        record.final_val_loss = loss
        return record


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))


def load(url: str, name: str = "unit") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url))


def run(url: str, n: int, trainer: FakeTrainer = FakeTrainer(), **kwargs) -> optuna.Study:
    spec = parse_search_text(kwargs.pop("text", search_text()), "unit.toml")
    run_search(spec, url, n_trials=n, trainer=trainer, progress=False, **kwargs)
    return load(url)


def test_a_study_ends_with_exactly_n_finished_trials_and_resumes(tmp_path: Path) -> None:
    url = str(tmp_path / "s.journal")
    assert len(finished(run(url, 3))) == 3
    study = run(url, 5)
    assert [t.number for t in study.trials] == [0, 1, 2, 3, 4]
    assert len(run(url, 5).trials) == 5, "a finished study runs nothing more"
    assert study.user_attrs["seeds"] == [0, 1] and study.user_attrs["penalty"] == PENALTY
    trial = study.trials[0]
    assert trial.values[0] == pytest.approx(math.fsum(trial.user_attrs["seed_losses"]) / 2)
    assert trial.user_attrs["chain.head"] == trial.user_attrs["chain.embed"]
    assert trial.user_attrs["lr.head"] == trial.user_attrs["lr.embed"] == 1e-2
    assert trial.user_attrs["state_bytes"] == 32 and trial.user_attrs["state_bytes.matrix"] == 24
    assert trial.user_attrs["structure"].startswith("embed: second_moment(")
    assert trial.user_attrs["tokens_per_step"] == 8 * 32
    assert trial.intermediate_values == {
        1: pytest.approx(trial.user_attrs["seed_losses"][0] + 1.0),
        2: pytest.approx(trial.user_attrs["seed_losses"][0] + 0.5),
        3: pytest.approx(trial.user_attrs["seed_losses"][0] + 1 / 3),
        4: pytest.approx(trial.user_attrs["seed_losses"][0] + 0.25),
    }


@pytest.mark.parametrize("sampler", ["tpe", "random", pytest.param("gp", marks=pytest.mark.slow), "nsga2"])
def test_every_sampler_runs_past_its_random_start_to_exactly_n(sampler: str, tmp_path: Path) -> None:
    study = run(str(tmp_path / "s.journal"), 11, text=search_text(sampler=sampler))
    assert len(finished(study)) == 11 == len(study.trials)


def test_beta1_is_sampled_only_with_a_momentum(tmp_path: Path) -> None:
    study = run(str(tmp_path / "s.journal"), 12)
    for trial in study.trials:
        has_momentum = trial.params["matrix.momentum"] == "ema"
        assert ("matrix.beta1" in trial.params) == has_momentum
        assert ("momentum(" in trial.user_attrs["trained_chain.matrix"]) == has_momentum
        if has_momentum:
            assert f"momentum({trial.params['matrix.beta1']!r})" in trial.user_attrs["trained_chain.matrix"]
            assert trial.user_attrs["hp"]["matrix.beta1"] == trial.params["matrix.beta1"]


def test_a_diverged_trial_completes_with_the_penalty_and_its_reason(tmp_path: Path) -> None:
    study = run(str(tmp_path / "s.journal"), 8, FakeTrainer(diverge_lr=1e-2))
    diverged = [t for t in study.trials if "failure" in t.user_attrs]
    assert diverged, "the lr range reaches above the divergence threshold"
    for trial in diverged:
        assert trial.state == TrialState.COMPLETE and trial.values == [PENALTY]
        assert trial.user_attrs["failure"] == "diverged: loss above bound (seed 0)"
        assert trial.user_attrs["failure_step"] == 2
        assert trial.user_attrs["seed_losses"] == [None, None]
    assert len(finished(study)) == 8


def test_a_pareto_search_records_loss_and_state_bytes_and_the_first_seed_curve(tmp_path: Path) -> None:
    text = search_text().replace(
        'pruner = "none"', 'pruner = "none"\nobjectives = ["val_loss", "state_bytes"]'
    )
    study = run(str(tmp_path / "s.journal"), 6, FakeTrainer(diverge_lr=1e-2), text=text)
    assert study.directions == [optuna.study.StudyDirection.MINIMIZE] * 2
    for trial in study.trials:
        assert trial.values[1] == 32.0 and not trial.intermediate_values
        if "failure" in trial.user_attrs:  # diverged at step 2: one evaluation recorded
            assert trial.values[0] == PENALTY and [s for s, _ in trial.user_attrs["curve"]] == [1]
        else:
            loss0 = trial.user_attrs["seed_losses"][0]
            assert trial.user_attrs["curve"] == [[s, pytest.approx(loss0 + 1.0 / s)] for s in (1, 2, 3, 4)]


def test_a_crash_is_a_failed_trial_that_does_not_count(tmp_path: Path) -> None:
    study = run(str(tmp_path / "s.journal"), 8, FakeTrainer(crash_lr=1e-2))
    crashed = study.get_trials(states=(TrialState.FAIL,))
    assert crashed
    assert {t.user_attrs["failure"] for t in crashed} == {"crashed: RuntimeError: boom (seed 0)"}
    assert {t.user_attrs["failure_step"] for t in crashed} == {2}
    assert len(finished(study)) == 8


def test_a_worker_gives_up_after_repeated_crashes(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="5 trials in a row failed; the last: crashed: RuntimeError: boom"):
        run(str(tmp_path / "s.journal"), 8, FakeTrainer(crash_lr=0.0))


def test_the_pruner_stops_bad_trials_on_the_first_seed(tmp_path: Path) -> None:
    study = run(str(tmp_path / "s.journal"), 16, text=search_text(sampler="tpe", pruner="median"))
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert pruned and len(finished(study)) == 16
    assert all(max(t.intermediate_values) < 4 for t in pruned)


def test_a_different_search_file_cannot_resume_a_study(tmp_path: Path) -> None:
    url = str(tmp_path / "s.journal")
    run(url, 1)
    before = Path(url).read_bytes()
    with pytest.raises(UserError, match=r"different search file \(first difference: roles.vector.lr\)"):
        run(url, 2, text=search_text().replace("lr = 3e-3", "lr = 1e-3"))
    assert Path(url).read_bytes() == before, "a refused file writes nothing, not even create_study"


def test_a_new_study_names_its_metrics(tmp_path: Path) -> None:
    text = search_text().replace(
        'pruner = "none"', 'pruner = "none"\nobjectives = ["val_loss", "state_bytes"]'
    )
    assert run(str(tmp_path / "s.journal"), 1, text=text).metric_names == ["val_loss", "state_bytes"]


def test_the_grid_sampler_enumerates_every_configuration_once(tmp_path: Path) -> None:
    text = search_text(sampler="grid").replace("lr = [1e-4, 1e-1]", "lr = {values = [1e-3, 1e-2]}")
    text = text.replace("beta1 = [0.8, 0.95]", "beta1 = 0.9").replace('"none", "sign"', '"sign"')
    # embed 2 choices x matrix (momentum none or ema, each with 2 lrs) = 2 x 4
    study = run(str(tmp_path / "s.journal"), 8, text=text)
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 8
    with pytest.raises(UserError, match="has 8 configurations; ask for at most 8 trials"):
        run(str(tmp_path / "t.journal"), 9, text=text)


def test_cpu_threads_are_the_search_files_or_the_cores_shared_among_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = parse_search_text(search_text(), "unit.toml")
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert (cpu_threads(spec, 1), cpu_threads(spec, 4), cpu_threads(spec, 32)) == (None, 4, 1)
    pinned = parse_search_text(
        search_text().replace("eval_every = 1", "eval_every = 1\nthreads = 3"), "unit.toml"
    )
    assert (cpu_threads(pinned, 1), cpu_threads(pinned, 4)) == (3, 3)


def test_a_trial_is_surplus_when_n_live_trials_are_numbered_below_it(tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path / "s.journal"))
    study = optuna.create_study(storage=storage)
    first, second = study.ask(), study.ask()
    study.tell(first, 1.0)
    study.enqueue_trial({})  # number 2, queued: a retry some worker will run, so it counts
    # Another worker's new trial, created as if it had not seen the queued one.
    third = storage.get_trial(storage.create_new_trial(storage.get_study_id_from_name(study.study_name)))
    assert [_surplus(study, t, 3) for t in (first, second, third)] == [False, False, True]
    assert not _surplus(study, third, 4)
    study.tell(second, state=TrialState.FAIL)  # failed trials do not count
    assert not _surplus(study, third, 3)


def test_trial_seeds_differ_by_trial_number_and_are_reproducible() -> None:
    seeds = [trial_seed(7, number) for number in range(8)]
    assert len(set(seeds)) == 8 and seeds == [trial_seed(7, number) for number in range(8)]
    assert trial_seed(8, 0) != seeds[0]


def _configurations(study: optuna.Study) -> set[tuple]:
    return {tuple(sorted(t.params.items())) for t in study.trials}


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_resuming_a_study_samples_new_configurations(sampler: str, tmp_path: Path) -> None:
    url = str(tmp_path / "s.journal")
    for n in (2, 4, 6):
        study = run(url, n, text=search_text(sampler=sampler))
    assert len(study.trials) == 6 and len(_configurations(study)) == 6


def test_two_hosts_with_the_same_ranks_sample_different_configurations(tmp_path: Path) -> None:
    # Two machines starting together both label their worker rank 0; sampling must not care.
    url = str(tmp_path / "s.journal")
    run(url, 1)
    storage = open_storage(url)
    spec = parse_search_text(search_text(), "unit.toml")
    first, second = open_study(spec, storage, "unit"), open_study(spec, storage, "unit")
    a, b = first.ask(), second.ask()
    lr = optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    assert a.suggest_float("matrix.lr", lr.low, lr.high, log=True) != b.suggest_float(
        "matrix.lr", lr.low, lr.high, log=True
    )


@pytest.mark.slow
def test_two_local_workers_finish_exactly_n(tmp_path: Path) -> None:
    url = str(tmp_path / "s.journal")
    study = run(url, 10, FakeTrainer(sleep_s=0.02), workers=2)
    assert len(finished(study)) == 10
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    assert {t.user_attrs["worker"] for t in finished(study)} <= {0, 1}


@dataclass(frozen=True)
class DeviceTrainer(FakeTrainer):
    """:class:`FakeTrainer` whose run record says it trained on the device it was given."""

    def __call__(self, config: dict, on_eval) -> RunRecord:
        record = super().__call__(config, on_eval)
        record.device = config["device"]
        return record


@given(st.integers(0, 63), st.integers(0, 8))
def test_local_worker_k_takes_gpu_k_mod_g_unless_the_file_pins_a_device(k: int, gpus: int) -> None:
    for left_open in ("auto", "cuda"):
        assert worker_device(left_open, k, gpus) == (f"cuda:{k % gpus}" if gpus else left_open)
    for pinned in ("cpu", "cuda:3"):
        assert worker_device(pinned, k, gpus) == pinned


@given(st.integers(1, 8), st.integers(1, 8), st.integers(1, 8))
def test_the_ranks_of_local_workers_take_disjoint_gpus_while_there_are_enough(
    workers: int, nproc: int, gpus: int
) -> None:
    taken = [worker_device("cuda", k, gpus, nproc).split(",") for k in range(workers)]
    assert all(len(devices) == nproc for devices in taken)
    assert taken[0] == [f"cuda:{i % gpus}" for i in range(nproc)]
    if workers * nproc <= gpus:  # what a search on CUDA asks for (run.check_gpus)
        assert len({d for devices in taken for d in devices}) == workers * nproc
    assert worker_device("cpu", workers, gpus, nproc) == "cpu"


@pytest.mark.slow
def test_each_local_worker_records_the_gpu_it_trained_on(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)  # the parent hands the workers their devices
    url = str(tmp_path / "s.journal")
    study = run(url, 6, DeviceTrainer(sleep_s=0.2), workers=2)
    by_worker = {(t.user_attrs["worker"], t.user_attrs["device"]) for t in finished(study)}
    assert by_worker <= {(0, "cuda:0"), (1, "cuda:1")} and len(by_worker) == 2


WORKER = """
import faulthandler, signal, sys
faulthandler.register(signal.SIGUSR1)  # a hung worker's stacks, for the test's failure message
from test_search_run import FakeTrainer, search_text
from optispace.search.run import _worker_main
from optispace.search.spec import parse_search_text
_worker_main(parse_search_text(search_text(), "unit.toml"), sys.argv[1], "unit", int(sys.argv[2]), 0,
             FakeTrainer(sleep_s=float(sys.argv[3])), threads=1)
"""


PARENT = """
import sys
from test_search_run import FakeTrainer, search_text
from optispace.search.run import run_search
from optispace.search.spec import parse_search_text
run_search(parse_search_text(search_text(), "unit.toml"), sys.argv[1], n_trials=int(sys.argv[2]),
           workers=2, trainer=FakeTrainer(sleep_s=float(sys.argv[3])), progress=False)
"""


def start_worker(url: str, n: int, sleep_s: float, script: str = WORKER) -> subprocess.Popen:
    """A worker process (the test module importable in it) running the unit search."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    command = [sys.executable, "-c", textwrap.dedent(script), url, str(n), str(sleep_s)]
    return subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)


def wait_for_exit(process: subprocess.Popen, timeout_s: float = 60.0) -> int:
    """The exit code; if the process hangs, fail with the stacks of its threads."""
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGUSR1)
        time.sleep(1.0)
        process.kill()
        raise AssertionError(f"the worker hung:\n{process.communicate()[1]}") from None
    return process.returncode


def wait_for_running(
    url: str, process: subprocess.Popen, timeout_s: float = 60.0, name: str = "unit", number: int = 0
) -> optuna.trial.FrozenTrial:
    """The first running trial numbered ``number`` or more, once it trains."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, "the worker ended before a trial ran"
        try:
            running = load(url, name).get_trials(states=(TrialState.RUNNING,))
        except KeyError:  # the study is not created yet
            running = []
        # "seeds" is the last attribute written before training: the kill lands in the trainer,
        # not inside a journal write (which would hold Optuna's file lock for its grace period).
        if running and running[0].number >= number and "seeds" in running[0].user_attrs:
            return running[0]
        time.sleep(0.1)
    raise AssertionError("no trial started running in time")


@pytest.mark.slow
def test_sigkill_mid_trial_then_resume_retries_it_and_ends_with_exactly_n(tmp_path: Path) -> None:
    url = str(tmp_path / "s.journal")
    worker = start_worker(url, 6, sleep_s=5.0)
    killed = wait_for_running(url, worker)
    worker.send_signal(signal.SIGKILL)
    wait_for_exit(worker)  # reaped: its pid is gone, so the next worker knows the trial is orphaned
    study = run(url, 6)
    assert len(finished(study)) == 6
    assert study.trials[killed.number].state == TrialState.FAIL
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retried) == 1 and retried[0].params == killed.params
    assert retried[0].state == TrialState.COMPLETE


def test_an_interrupt_inside_a_deferred_block_is_raised_when_the_block_ends() -> None:
    reached_end_of_block = False
    with pytest.raises(Interrupted, match="SIGTERM"), interrupts_raise(), deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler has run by now, and only noted the signal
        reached_end_of_block = True
    assert reached_end_of_block
    with pytest.raises(Interrupted, match="SIGINT"), interrupts_raise():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1.0)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_an_interrupt_ends_the_running_trial_as_failed_and_queues_it_again(
    signum: int, tmp_path: Path
) -> None:
    url = str(tmp_path / "s.journal")
    worker = start_worker(url, 6, sleep_s=5.0)
    interrupted = wait_for_running(url, worker)
    worker.send_signal(signum)
    assert wait_for_exit(worker) == 130
    study = load(url)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    trial = study.trials[interrupted.number]
    name = signal.Signals(signum).name
    assert trial.state == TrialState.FAIL and trial.user_attrs["failure"].startswith(f"interrupted: {name}")
    (waiting,) = study.get_trials(states=(TrialState.WAITING,))
    assert waiting.params == interrupted.params
    assert waiting.user_attrs == {}, "the failed run's attributes (its failure) stay with it"
    study = run(url, 6)
    assert counts(study).finished == 6
    retried = study.trials[waiting.number]
    assert retried.state == TrialState.COMPLETE and "failure" not in retried.user_attrs


def test_an_interrupt_during_a_storage_read_waits_until_the_read_is_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Optuna's journal counts a log as read before applying it: cut there, this process would
    # never see that log (here, a trial another worker created) and would misnumber later ones.
    url = str(tmp_path / "s.journal")
    reader = open_storage(url)
    study = optuna.create_study(storage=reader, study_name="s")
    writer = optuna.load_study(study_name="s", storage=open_storage(url))
    for _ in range(3):
        writer.ask()
    replay = type(reader._replay_result)
    apply = replay._apply_create_trial

    def signal_then_apply(self: object, log: dict) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next line
        apply(self, log)

    monkeypatch.setattr(replay, "_apply_create_trial", signal_then_apply)
    with pytest.raises(Interrupted, match="SIGTERM"), interrupts_raise():
        study.get_trials()
    monkeypatch.undo()
    assert [t.number for t in study.get_trials()] == [0, 1, 2]


def _trials_once_running(url: str, count: int, timeout_s: float = 120.0) -> list[optuna.trial.FrozenTrial]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            trials = load(url).trials
        except KeyError:  # the study is not created yet
            trials = []
        if sum(t.state == TrialState.RUNNING and "seeds" in t.user_attrs for t in trials) >= count:
            return trials
        time.sleep(0.2)
    raise AssertionError(f"{count} trials were not running in time")


@pytest.mark.slow
def test_workers_end_with_their_killed_parent_and_queue_their_trials_again(tmp_path: Path) -> None:
    url = str(tmp_path / "s.journal")
    parent = start_worker(url, 4, sleep_s=5.0, script=PARENT)
    running = [t.number for t in _trials_once_running(url, 2) if t.state == TrialState.RUNNING]
    parent.send_signal(signal.SIGKILL)
    wait_for_exit(parent)
    deadline = time.monotonic() + 30.0  # a trial of the fake trainer takes 40 s: a finished one ran on
    while load(url).get_trials(states=(TrialState.RUNNING,)) and time.monotonic() < deadline:
        time.sleep(0.2)
    study = load(url)
    for number in running:
        assert study.trials[number].user_attrs["failure"].startswith("interrupted: SIGTERM")
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert len(study.get_trials(states=(TrialState.WAITING,))) == len(running)

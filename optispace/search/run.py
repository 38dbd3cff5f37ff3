"""Running a study: create or resume it, then run workers until exactly N trials have finished.

Counting. "Finished" means COMPLETE or PRUNED. A worker starts a trial only while the finished,
running and queued (WAITING, i.e. retries) trials number fewer than N; right after ``ask`` it
counts again the live trials (finished, running or queued) numbered below its own, and withdraws
its trial as FAIL ``surplus`` when those are already N. Optuna numbers trials in creation order
under a lock on the study row (RDB) or by their place in the log (journal), so of any N + 1 trials
the highest-numbered one sees the other N at its check: a study never finishes more than N trials,
and the loop runs until it has N, so never fewer.

Reliability. Each trial has a heartbeat; before each trial a worker fails stale trials (no sign of
life for the grace period, or a worker process on this host that is gone) and queues their
configurations again (``optispace.search.heartbeat``). SIGTERM and Ctrl-C end the running
trial as FAIL with ``failure = "interrupted: ..."`` and queue it again, then stop the worker.
A crash (an exception from training) is FAIL with ``failure = "crashed: ..."`` and is not retried.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from optispace.errors import UserError
from optispace.search import heartbeat, scale
from optispace.search.heartbeat import RetryConfiguration, claim, fail_stale, trial_id
from optispace.search.interrupts import deferred, interrupts_raise
from optispace.search.objective import Objective, Trainer, proxy_trainer
from optispace.search.space import configurations
from optispace.search.spec import SearchSpec
from optispace.search.storage import StorageUnavailable, open_storage
from optispace.search.study import open_study
from optispace.trial import TrialRecord, write

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
LIVE = (*FINISHED, TrialState.RUNNING, TrialState.WAITING)
POLL_S = 1.0
MAX_CONSECUTIVE_CRASHES = 5
STOP_S = 60.0


@dataclass(frozen=True)
class Counts:
    """Trials of a study by state."""

    by_state: Counter

    @property
    def finished(self) -> int:
        return sum(self.by_state[s] for s in FINISHED)

    @property
    def live(self) -> int:
        return sum(self.by_state[s] for s in LIVE)


def counts(study: optuna.Study) -> Counts:
    return Counts(Counter(t.state for t in study.get_trials(deepcopy=False)))


def _surplus(study: optuna.Study, trial: optuna.Trial, n_trials: int) -> bool:
    """True when N live trials are numbered below ``trial`` (see the module docstring)."""
    live_before = sum(
        1 for t in study.get_trials(deepcopy=False) if t.number < trial.number and t.state in LIVE
    )
    return live_before >= n_trials


def next_trial(
    study: optuna.Study, storage: BaseStorage, objective: Objective, n_trials: int, rank: int
) -> optuna.trial.FrozenTrial:
    """Ask for a trial and run it to a final state (or withdraw it as surplus); ``rank`` is recorded.

    Storage writes are :func:`deferred`; an interrupt anywhere after ``ask`` ends the trial as FAIL
    with ``failure = "interrupted: <signal>"``, queues its configuration again, and is re-raised.
    """
    trial: optuna.Trial | None = None
    try:
        with deferred():
            trial = study.ask()
            key = trial_id(storage, study, trial.number)
            claim(storage, key)
            write(trial, TrialRecord(worker=rank))
            if _surplus(study, trial, n_trials):
                write(trial, TrialRecord(failure="surplus: the study already had enough trials"))
                _tell(study, trial, TrialState.FAIL)
                return storage.get_trial(key)
        state, values = _run(storage, key, trial, objective)
        with deferred():
            _tell(study, trial, state, values)
    except KeyboardInterrupt as e:
        if trial is not None:
            with deferred():  # a second interrupt waits until this one is recorded
                _record_interrupt(study, storage, trial, e)
        raise
    return storage.get_trial(key)


def _run(
    storage: BaseStorage, key: int, trial: optuna.Trial, objective: Objective
) -> tuple[TrialState, list[float] | None]:
    """The objective under a heartbeat: its state and values; a crash is FAIL with its reason."""
    try:
        with heartbeat.heartbeat(storage, key, heartbeat.HEARTBEAT_S):
            return TrialState.COMPLETE, objective(trial)
    except optuna.TrialPruned:
        return TrialState.PRUNED, None
    except StorageUnavailable:
        raise  # not the configuration's fault: the trial stays RUNNING, to be retried as stale
    except Exception as e:
        if "failure" not in trial.user_attrs:
            write(trial, TrialRecord(failure=f"crashed: {type(e).__name__}: {e}"))
        return TrialState.FAIL, None


def _record_interrupt(
    study: optuna.Study, storage: BaseStorage, trial: optuna.Trial, error: KeyboardInterrupt
) -> None:
    """FAIL the interrupted trial and queue its configuration again, as a stale one is."""
    key = trial_id(storage, study, trial.number)
    if storage.get_trial(key).state != TrialState.RUNNING:
        return  # told already, or failed as stale by another worker
    if "failure" not in trial.user_attrs:
        write(trial, TrialRecord(failure=f"interrupted: {error or 'SIGINT'}"))
    if _tell(study, trial, TrialState.FAIL):  # else the worker that failed it queued it again
        RetryConfiguration()(study, storage.get_trial(key))


def _tell(
    study: optuna.Study, trial: optuna.Trial, state: TrialState, values: list[float] | None = None
) -> bool:
    """Tell the outcome; False when another worker had already failed the trial as stale."""
    try:
        study.tell(trial, values, state=state)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    return True


def work(
    spec: SearchSpec,
    url: str,
    name: str,
    n_trials: int,
    rank: int,
    trainer: Trainer = proxy_trainer,
    on_trial: Callable[[], None] | None = None,
    threads: int | None = None,
) -> None:
    """One worker: run trials until the study has ``n_trials`` finished ones."""
    _use_threads(threads)
    storage = open_storage(url)
    study = open_study(spec, storage, name)
    objective = Objective(spec, trainer)
    crashes = 0
    with interrupts_raise():
        while True:
            fail_stale(study, storage, heartbeat.GRACE_S)
            now = counts(study)
            if now.finished >= n_trials:
                return
            if now.by_state[TrialState.WAITING] == 0 and now.live >= n_trials:
                time.sleep(POLL_S)  # enough trials run; wait in case one of them fails
                continue
            trial = next_trial(study, storage, objective, n_trials, rank)
            failure = trial.user_attrs.get("failure", "")
            crashes = crashes + 1 if failure.startswith("crashed") else 0
            if crashes >= MAX_CONSECUTIVE_CRASHES:
                raise UserError(f"{crashes} trials in a row failed; the last: {failure}")
            if on_trial is not None:
                on_trial()


def _worker_main(
    spec: SearchSpec, url: str, name: str, n_trials: int, rank: int, trainer: Trainer, threads: int | None,
    log_level: int = logging.WARNING,
) -> None:
    """Entry point of a worker process: errors become one line on stderr and exit code 2.

    The worker ends with its parent (:func:`_end_with_parent`), so a killed ``optispace search``
    leaves no worker running unseen beside the one a rerun starts. It logs optispace's lines at the
    parent's level (a spawned process starts with no logging set up), each naming its worker.
    """
    _end_with_parent(os.getppid())
    _log_as_worker(rank, log_level)
    try:
        work(spec, url, name, n_trials, rank, trainer, threads=threads)
    except UserError as e:
        print(f"optispace search (worker {rank}): error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def _log_as_worker(rank: int, level: int) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format=f"%(asctime)s worker {rank} %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("optispace").setLevel(level)


def _end_with_parent(parent: int) -> None:
    """SIGTERM this process once its parent is gone (its parent pid changes when it is re-parented).

    A thread polls rather than Linux's parent-death signal so that it works on every platform;
    SIGTERM, not SIGKILL, so the running trial is recorded as interrupted and queued again.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(POLL_S)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="optispace-parent-watch", daemon=True).start()


def worker_device(device: str, k: int, gpus: int, nproc: int = 1) -> str:
    """The devices local worker ``k``'s ``nproc`` ranks train on: GPUs ``k*nproc .. k*nproc+nproc-1``
    (mod ``gpus``), as ``cuda:a,cuda:b,...``, when the search file leaves the choice (``auto`` or
    ``cuda``) and there are GPUs, else the file's (``cpu``, a pinned ``cuda:N``). One rank: GPU
    ``k mod gpus``."""
    if device in ("auto", "cuda") and gpus > 0:
        return ",".join(f"cuda:{(k * nproc + i) % gpus}" for i in range(nproc))
    return device


def worker_spec(spec: SearchSpec, k: int) -> SearchSpec:
    """``spec`` with local worker ``k``'s devices (:func:`worker_device`); the trial records them."""
    import torch

    device = worker_device(spec.proxy.device, k, torch.cuda.device_count(), spec.proxy.nproc)
    return replace(spec, proxy=replace(spec.proxy, device=device))


def check_gpus(spec: SearchSpec, workers: int) -> None:
    """With several ranks per trial on CUDA, one GPU for each rank of each local worker.

    (One rank per trial may share: worker k takes GPU k mod G, as many workers as asked.)
    """
    import torch

    nproc, device, gpus = spec.proxy.nproc, spec.proxy.device, torch.cuda.device_count()
    if nproc == 1 or device == "cpu" or (device == "auto" and gpus == 0):
        return
    if nproc * workers > gpus:
        raise spec.error(("proxy", "nproc"), f"{workers} worker(s) x {nproc} ranks need {nproc * workers} "
                         f'GPUs, one per rank; {gpus} visible: use fewer workers or ranks, or device = "cpu"')


def cpu_threads(spec: SearchSpec, workers: int) -> int | None:
    """CPU threads per worker: the search file's ``threads``, else the cores shared among workers.

    ``None`` (one worker, nothing asked): torch's default. K workers each on every core would
    oversubscribe the cores K times, and small proxies run slower on several threads than on one.
    """
    if spec.proxy.threads is not None:
        return spec.proxy.threads
    return max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None


def _use_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)``, unless ``OMP_NUM_THREADS`` already decided it."""
    if threads is not None and "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(threads)


@dataclass(frozen=True)
class Summary:
    """What a finished run reports: the counts and the best trial."""

    name: str
    counts: Counts
    best: optuna.trial.FrozenTrial | None


def run_search(
    spec: SearchSpec,
    url: str,
    *,
    name: str | None = None,
    n_trials: int | None = None,
    workers: int = 1,
    rank_offset: int = 0,
    trainer: Trainer = proxy_trainer,
    progress: bool = True,
) -> Summary:
    """Run (or resume, or join) the study of ``spec`` until it has ``n_trials`` finished trials.

    ``rank_offset``: the rank of the first local worker, a label recorded on its trials (the
    sampler's seeds come from the study seed and the trial numbers, never from ranks).
    """
    name = name or spec.name
    n_trials = n_trials or spec.trials
    check_gpus(spec, workers)
    if spec.sampler == "grid":
        size = configurations(spec) * len(scale.grid(spec.proxy.sweep))
        if n_trials > size:
            raise UserError(
                f"the grid of {spec.path} has {size} configurations; ask for at most {size} trials"
            )
    storage = open_storage(url)
    study = open_study(spec, storage, name)
    with _Progress(study, n_trials, enabled=progress) as bar:
        if workers == 1:
            work(worker_spec(spec, 0), url, name, n_trials, rank_offset, trainer, bar.update,
                 cpu_threads(spec, 1))
        else:
            _run_processes(spec, url, name, n_trials, range(rank_offset, rank_offset + workers), trainer, bar)
    return Summary(name, counts(study), _best(study))


def _run_processes(
    spec: SearchSpec, url: str, name: str, n_trials: int, ranks: range, trainer: Trainer, bar: _Progress
) -> None:
    """K worker processes; the parent polls the storage for the progress bar."""
    context = multiprocessing.get_context("spawn")
    threads = cpu_threads(spec, len(ranks))
    processes = [
        context.Process(target=_worker_main,
                        args=(worker_spec(spec, k), url, name, n_trials, rank, trainer, threads,
                              logging.getLogger("optispace").getEffectiveLevel()))
        for k, rank in enumerate(ranks)
    ]
    for process in processes:
        process.start()
    try:
        with interrupts_raise():
            while any(p.is_alive() for p in processes):
                bar.update()
                time.sleep(POLL_S)
    except KeyboardInterrupt:
        _stop(processes)
        raise
    bar.update()
    if counts(bar.study).finished < n_trials:
        codes = [p.exitcode for p in processes]
        raise UserError(
            f"the workers stopped before the study had {n_trials} finished trials (exit codes {codes})"
        )


def _stop(processes: list[multiprocessing.process.BaseProcess]) -> None:
    """After Ctrl-C or SIGTERM: SIGTERM to every worker, which records its trial as interrupted.

    (After Ctrl-C in a terminal the workers got SIGINT already; the second signal waits until
    they have recorded the first.) A worker that has not exited after ``STOP_S`` is killed; the
    trial it leaves RUNNING is failed and queued again by the next worker on this host.
    """
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + STOP_S
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


def _best(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not complete:
        return None
    return min(complete, key=lambda t: t.values)


class _Progress:
    """A tqdm bar over finished trials with the best value so far (stderr; off when not a TTY)."""

    def __init__(self, study: optuna.Study, total: int, *, enabled: bool) -> None:
        self.study = study
        self.total = total
        self.enabled = enabled
        self.bar = None

    def __enter__(self) -> _Progress:
        from tqdm import tqdm

        self.bar = tqdm(
            total=self.total,
            initial=min(self.total, counts(self.study).finished),
            desc=self.study.study_name,
            unit="trial",
            disable=True if not self.enabled else None,
            file=sys.stderr,
        )
        return self

    def update(self) -> None:
        finished = min(self.total, counts(self.study).finished)
        best = _best(self.study)
        if best is not None:
            self.bar.set_postfix_str(f"best {best.values[0]:.4f}", refresh=False)
        self.bar.update(finished - self.bar.n)

    def __exit__(self, *exc: object) -> None:
        self.bar.close()

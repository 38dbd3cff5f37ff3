"""Trials of ``[proxy] nproc`` ranks (``optispace.search.ranks``): through the CLI on CPU with gloo,
the same values and curves as one process; a failed rank fails the trial without a run record."""

from __future__ import annotations

import signal
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from optispace.cli import main
from optispace.proxies import RunRecord
from optispace.proxies.distributed import RanksFailed
from optispace.search.objective import Objective, proxy_trainer
from optispace.search.ranks import _visible, replay
from optispace.search.spec import parse_search_text
from optispace.search.storage import open_storage

SEARCH = """\
[study]
name = "ranks"
question = "Do two ranks per trial give one process's losses?"
trials = 2
sampler = "random"
pruner = "none"

[proxy]
tier = "tiny"
steps = 4
eval_every = 2
eval_batches = 1
threads = 1
nproc = {nproc}

[roles.embed]
second_moment = ["full", "factored"]
lr = [1e-3, 3e-2]

[roles.head]
tie = "embed"

[roles.matrix]
momentum = ["ema", "nesterov"]
lr = [1e-3, 3e-2]

[roles.vector]
chain = "momentum(0.9) > second_moment(full)"
lr = 3e-3
"""


def _search(tmp_path: Path, nproc: int) -> list[optuna.trial.FrozenTrial]:
    path, storage = tmp_path / f"n{nproc}.toml", tmp_path / f"n{nproc}.journal"
    path.write_text(SEARCH.format(nproc=nproc))
    assert main(["search", str(path), "--storage", str(storage), "--no-progress"]) == 0
    study = optuna.load_study(study_name="ranks", storage=open_storage(str(storage)))
    return sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.number)


@pytest.mark.slow
def test_two_ranks_per_trial_give_the_values_and_curves_of_one_process(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    one, two = _search(tmp_path, 1), _search(tmp_path, 2)
    assert len(one) == len(two) == 2
    for a, b in zip(one, two, strict=True):
        assert a.params == b.params  # the sampler's draws do not depend on the ranks
        assert (a.user_attrs["device"], b.user_attrs["device"]) == ("cpu", "cpu x2")
        # The same global batch and seeds; only the order of the gradient sums differs (tolerance:
        # tests/test_distributed.py).
        assert b.values[0] == pytest.approx(a.values[0], rel=1e-5)
        assert set(b.intermediate_values) == set(a.intermediate_values) == {2, 4}
        for step, loss in a.intermediate_values.items():
            assert b.intermediate_values[step] == pytest.approx(loss, rel=1e-5)


@pytest.mark.slow
def test_a_failed_rank_fails_the_trial_and_writes_no_run_record(monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    spec = parse_search_text(SEARCH.format(nproc=2), "ranks.toml")

    def broken(config, on_eval):  # every rank fails building the optimizer
        return proxy_trainer(config | {"recipe": "no-such-recipe"}, on_eval)

    handlers = [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)]
    study = optuna.create_study()
    study.optimize(Objective(spec, broken), n_trials=1, catch=(RanksFailed,))
    # torch's launcher took these over; a worker needs its own back for the next trial
    assert [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)] == handlers
    (trial,) = study.trials
    assert trial.state == TrialState.FAIL
    failure = trial.user_attrs["failure"]
    assert failure.startswith("crashed: RanksFailed: rank ") and "UserError: recipe: " in failure
    assert not {"seed_losses", "device", "tokens_per_s"} & set(trial.user_attrs)
    assert not trial.intermediate_values


@pytest.mark.slow
def test_sigterm_while_the_ranks_train_records_the_trial_interrupted_and_queues_it(tmp_path: Path) -> None:
    from test_cli_search import search
    from test_cli_train import _wait_for_rank

    path, storage = tmp_path / "long.toml", tmp_path / "long.journal"
    path.write_text(SEARCH.format(nproc=2).replace("steps = 4", "steps = 100000"))
    worker = search(str(path), "--storage", str(storage))
    try:
        ranks = [_wait_for_rank(worker.pid, rank=r) for r in (0, 1)]
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    finally:
        worker.kill()
    assert worker.returncode == 130, err
    trials = optuna.load_study(study_name="ranks", storage=open_storage(str(storage))).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]  # queued again
    assert trials[0].user_attrs["failure"].startswith("interrupted: SIGTERM")
    assert not any(Path(f"/proc/{pid}").exists() for pid in ranks)


def test_replay_hands_on_the_evaluations_the_training_loop_would_have() -> None:
    curve = [{"step": s, "tokens": 10 * s, "val_loss": v} for s, v in ((2, 3.0), (4, 2.5), (6, float("nan")))]
    seen = []
    replay(RunRecord(config={}, corpus={}, curve=curve[:2], final_val_loss=2.5), lambda *a: seen.append(a))
    assert seen == [(2, 20, 3.0), (4, 40, 2.5)]
    seen.clear()  # a loss that ended the run as diverged was never handed to on_eval
    replay(RunRecord(config={}, corpus={}, curve=curve, diverged="non-finite loss", diverged_step=6),
           lambda *a: seen.append(a))
    assert seen == [(2, 20, 3.0), (4, 40, 2.5)]


def test_the_ranks_see_the_workers_gpus_through_its_own_visible_devices(monkeypatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert _visible([2, 3]) == "2,3"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4, 5,6,7")
    assert _visible([2, 3]) == "6,7" and _visible([0]) == "4"

"""One seed of a trial trained by ``nproc`` ranks (``[proxy] nproc``), through the launcher of
``optispace train --nproc`` (``optispace.proxies.distributed.launch``).

The worker writes the run's settings to a private temporary folder and launches
``python -m optispace.search.ranks SETTINGS RECORD``; the ranks train data-parallel (ddp or fsdp2,
``[proxy] parallel``) on the same global batch and seeds as one process, and rank 0 writes its run
record, which the worker reads back. The worker then hands the curve's evaluations to ``on_eval``
in order, as one process would have during the run, so a trial's intermediate values (or Pareto
curve) do not depend on ``nproc``; that is also why such searches cannot prune (the decision would
have to reach every rank mid-run; ``optispace.search.spec`` refuses a pruner). The worker's
heartbeat thread beats while the ranks run. A failed rank raises ``RanksFailed`` out of the
trainer (with the first rank's error, when a rank raised one), so the trial fails as a crash does,
and no record is written for it.

Devices: ``settings["device"]`` is the worker's (``optispace.search.run.worker_device``): a list
``cuda:a,cuda:b`` of one GPU per rank, which the ranks see as ``cuda:0 .. cuda:N-1`` through
``CUDA_VISIBLE_DEVICES``, or ``cpu`` / ``auto`` (then gloo). The record's ``device`` says which:
``cuda:a,cuda:b`` or ``cpu x2``.
"""

from __future__ import annotations

import os
import pickle
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optispace.proxies import RunRecord
    from optispace.search.objective import OnEval


def train_ranks(settings: dict[str, Any], nproc: int, on_eval: OnEval) -> RunRecord:
    """Train ``settings`` (``TrainConfig`` keyword arguments and ``probes``) on ``nproc`` ranks;
    rank 0's ``RunRecord``, its evaluations handed to ``on_eval`` once the ranks have ended."""
    import torch

    from optispace.proxies import distributed

    devices = settings["device"]
    gpus = [int(d.removeprefix("cuda:")) for d in devices.split(",")] if devices.startswith("cuda:") else []
    env = {}
    if "OMP_NUM_THREADS" not in os.environ:  # the worker's threads, shared among its ranks
        env["OMP_NUM_THREADS"] = str(max(1, torch.get_num_threads() // nproc))
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = _visible(gpus)
    with tempfile.TemporaryDirectory(prefix="optispace-ranks-") as folder:
        given, out = Path(folder) / "settings.pkl", Path(folder) / "record.pkl"
        given.write_bytes(pickle.dumps(settings | {"device": "cuda" if gpus else devices}))
        try:
            distributed.launch(nproc, [str(given), str(out)], module=__name__, env=env)
        except distributed.RanksFailed as e:
            raise distributed.RanksFailed(f"{e}{_reason(Path(folder))}", e.exitcode) from None
        record = pickle.loads(out.read_bytes())
    replay(record, on_eval)
    record.device = devices if gpus else f"{record.device} x{nproc}"
    return record


def _reason(folder: Path) -> str:
    """`` (rank R: Error: message)``, the first error a rank left in ``folder``, or nothing."""
    errors = sorted(folder.glob("error.*"), key=lambda path: int(path.suffix[1:]))
    return f" (rank {errors[0].suffix[1:]}: {errors[0].read_text()})" if errors else ""


def _visible(gpus: list[int]) -> str:
    """``CUDA_VISIBLE_DEVICES`` for the ranks: this process's GPUs ``gpus``, through its own
    ``CUDA_VISIBLE_DEVICES`` when it has one (its cuda:0 is that list's first entry)."""
    mine = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = mine.split(",") if mine else [str(g) for g in range(max(gpus) + 1)]
    return ",".join(ids[g].strip() for g in gpus)


def replay(record: RunRecord, on_eval: OnEval) -> None:
    """``on_eval(step, tokens, val_loss)`` of each evaluation of ``record.curve``, as the training
    loop calls it: every point but one whose loss ended the run as diverged."""
    curve = record.curve
    if record.diverged and curve and curve[-1]["step"] == record.diverged_step:
        curve = curve[:-1]
    for point in curve:
        on_eval(point["step"], point["tokens"], point["val_loss"])


def main(argv: list[str]) -> int:
    """A rank: train the settings in ``argv[0]``; rank 0 writes the record to ``argv[1]``."""
    from optispace.probes import build
    from optispace.proxies import TrainConfig, distributed, train
    from optispace.proxies.train import resolve_device

    given, out = (Path(a) for a in argv)
    settings = pickle.loads(given.read_bytes())
    probes = settings.pop("probes")
    ranks = distributed.from_env()
    try:
        cfg = TrainConfig(**settings)
        with distributed.process_group(ranks, resolve_device(cfg.device)):
            record = train(cfg, callbacks=build(probes) if ranks.lead else [], progress=False)
    except Exception as e:  # why, for the trial's failure (a trial in one process records it too)
        (out.parent / f"error.{ranks.rank}").write_text(f"{type(e).__name__}: {e}")
        raise
    if ranks.lead:
        part = out.with_suffix(".part")  # whole or absent: the worker never reads half a record
        part.write_bytes(pickle.dumps(record))
        part.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""``optispace report``: turn a study into report.md, PNG figures and Parquet files."""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage",
        default=None,
        help="the journal file or Optuna RDB URL the study lives in "
        "(default: $OPTISPACE_STORAGE, else .optispace/studies.journal, as for `optispace search`)",
    )
    parser.add_argument(
        "--study", default=None, help="the study name (default: the only study in the storage)"
    )
    parser.add_argument("--out", default=None, help="the report folder (default: reports/STUDY)")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="val loss within which of the best a structure suffices (default: the search file's)",
    )


def run(args: argparse.Namespace) -> int:
    import optuna

    from optispace.errors import UserError
    from optispace.report import build_report, write_report
    from optispace.search.storage import default_url, open_existing_storage

    if args.tolerance is not None and not (math.isfinite(args.tolerance) and args.tolerance > 0):
        raise UserError(f"--tolerance must be a positive number of val loss, not {args.tolerance}")
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise UserError(f"--out: {args.out} is a file; the report is a folder, give a folder path")
    url = args.storage or default_url()
    storage = open_existing_storage(url)
    name = _study_name(storage, args.study, url)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=storage)
    if not study.get_trials(deepcopy=False):
        raise UserError(
            f"study {name!r} in {url} has no trials yet; run `optispace search` on its search file first"
        )
    out = Path(args.out) if args.out else Path("reports") / name
    report = build_report(study, args.tolerance)
    paths = write_report(report, out)
    structures = report.structures.filter(report.structures["best_loss"].is_not_null())
    print(
        f"{paths[0]}: {len(report.trials)} trials, {int(structures['sufficient'].sum())} of "
        f"{len(structures)} finished structures suffice (tolerance {report.tolerance:g}); "
        f"{len(paths) - 1} more files in {out}"
    )
    return 0


def _study_name(storage, name: str | None, url: str) -> str:
    """``name`` if the storage holds it; else the storage's only study; else a UserError naming them."""
    import optuna

    from optispace.errors import UserError

    names = sorted(optuna.get_all_study_names(storage))
    if name is not None and name in names:
        return name
    listed = ", ".join(names) if names else "none"
    if name is not None:
        raise UserError(f"no study {name!r} in {url}; the studies there: {listed}")
    if len(names) != 1:
        raise UserError(f"{url} holds {len(names)} studies ({listed}); choose one with --study")
    return names[0]

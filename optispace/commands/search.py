"""``optispace search FILE``: run, resume, or join as a worker, the Optuna study a search file defines."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="the search file (TOML), e.g. searches/quickstart.toml, or the name of "
                        "one shipped with optispace (quickstart, smoke, ...)")
    parser.add_argument(
        "--storage",
        default=None,
        help="a journal file path, or an Optuna RDB URL such as postgresql+psycopg2://user@host/db "
        "(default: $OPTISPACE_STORAGE, else .optispace/studies.journal)",
    )
    parser.add_argument("--study", default=None, help="the study name (default: the file's study.name)")
    parser.add_argument(
        "--n-trials",
        type=int,
        default=None,
        help="finished trials the study ends with, over all workers and restarts (default: study.trials)",
    )
    parser.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    parser.add_argument(
        "--rank-offset",
        type=int,
        default=0,
        help="rank of the first local worker, recorded on its trials as 'worker' to tell hosts apart "
        "(default 0; sampling depends on the study seed and trial numbers, not on ranks)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from optispace.bundled import search_file
    from optispace.errors import UserError
    from optispace.search.run import run_search
    from optispace.search.spec import parse_search, study_name_problem
    from optispace.search.storage import check_url, default_url
    from optispace.trial import read

    for flag, value, low in (
        ("--n-trials", args.n_trials, 1),
        ("--workers", args.workers, 1),
        ("--rank-offset", args.rank_offset, 0),
    ):
        if value is not None and value < low:
            raise UserError(f"{flag} must be an integer >= {low}, not {value}")
    if args.study is not None and study_name_problem(args.study):
        raise UserError(f"--study: {study_name_problem(args.study)}")
    spec = parse_search(search_file(args.file))
    url = args.storage or default_url()
    check_url(url)
    summary = run_search(
        spec,
        url,
        name=args.study,
        n_trials=args.n_trials,
        workers=args.workers,
        rank_offset=args.rank_offset,
        progress=not args.no_progress,
    )
    wanted = args.n_trials or spec.trials
    if summary.counts.finished > wanted:
        print(
            f"note: the study already had more than {wanted} finished trials; none were run", file=sys.stderr
        )
    by_state = summary.counts.by_state
    states = ", ".join(
        f"{n} {s.name.lower()}" for s, n in sorted(by_state.items(), key=lambda kv: kv[0].name)
    )
    print(f"study {summary.name!r} in {url}: {summary.counts.finished} finished trials ({states})")
    if summary.best is not None:
        best = summary.best
        print(f"best value {best.values[0]:.4f} (trial {best.number}): {read(best).structure}")
    print(
        f"next: optispace report --study {summary.name}"
        + ("" if args.storage is None else f" --storage {url}"),
        file=sys.stderr,
    )
    return 0

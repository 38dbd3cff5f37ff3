"""The ``optispace`` command.

Each subcommand lives in ``optispace/commands/<name>.py`` and provides ``add_arguments(parser)``
and ``run(args) -> int``; its one-line help is its entry in ``COMMANDS``. A module is imported
only when its subcommand is named, and the package itself imports nothing heavy, so
``optispace --help`` loads no torch and ``optispace recipes`` does not pay for Optuna or matplotlib.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from optispace.errors import UserError

COMMANDS: dict[str, str] = {
    "primitives": "list every primitive with its arguments, defaults and state cost",
    "recipes": "list the named recipes as chains per role, with their state bytes on a model shape",
    "train": "train one recipe on a transformer proxy",
    "search": "run (or resume, or join as a worker) an Optuna study from a search file",
    "report": "turn a study into tables, figures and Parquet",
    "probe": "compare recipes on the token-geometry probes",
}


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors exit 2 with one line (argparse already uses 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported to add its arguments."""
    parser = _Parser(prog="optispace", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"optispace {version()}")
    verbosity = _Parser(add_help=False)
    group = verbosity.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    group.add_argument("-v", "--verbose", action="store_true", help="log debug detail too")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[verbosity])
        if name == command:
            _module(name).add_arguments(p)
    return parser


def version() -> str:
    """The installed distribution's version (``0+unknown`` when run from a source tree not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("optispace")
    except PackageNotFoundError:
        return "0+unknown"


def configure_logging(quiet: bool, verbose: bool) -> None:
    """optispace's log lines (one per evaluation when stderr is no terminal) on stderr at INFO;
    ``-q``: warnings only, ``-v``: debug too. Other libraries stay at WARNING."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.getLogger("optispace").setLevel(level)


def _module(name: str):
    return importlib.import_module(f"optispace.commands.{name}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    configure_logging(args.quiet, args.verbose)
    args.argv = argv  # what a command that relaunches itself (train --nproc) passes on
    try:
        return int(_module(args.command).run(args) or 0)
    except UserError as e:
        print(f"optispace {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"optispace {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

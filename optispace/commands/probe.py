"""``optispace probe``: train recipes x seeds with the token-geometry probes on, and write the report.

A recipe may be given hyperparameters and an lr, ``ember(lr=3e-3, bias_correction=row)``
(``optispace.recipes.parse_variant``); the report labels each by its text as given.

Each finished run is saved to ``OUT/runs.json`` at once; ``--rebuild`` rewrites the report from that
file, training nothing (also after an interrupted comparison: the report then shows the runs done).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from optispace.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipes", default="adamw,ember,adafactor",
                        help="comma-separated recipes, each a name or a name with hyperparameters and lr, "
                        "e.g. 'adamw(lr=3e-3),ember(lr=3e-3, bias_correction=row)'")
    parser.add_argument("--proxy", default="small", help="tier: tiny, small, medium or base (default small)")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds, 0 .. N-1 (default 3)")
    parser.add_argument("--tokens", type=int, help="token budget per run (default: the tier's)")
    parser.add_argument("--probes", default="ray,geometry,outliers", help="comma-separated probes")
    parser.add_argument("--data", help="data spec, as for `optispace train` (default: the stdlib corpus)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--out", type=Path, required=True, help="folder for the report (created if missing)")
    parser.add_argument("--rebuild", action="store_true", help="rewrite the report from OUT/runs.json")


def _split(text: str) -> list[str]:
    """``text`` cut at the commas outside parentheses (``ember(lr=1e-3, eps=1e-8)`` is one item)."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    return [*items, text[start:]]


def _names(text: str, option: str) -> list[str]:
    """The items of a comma-separated list (:func:`_split`), each stripped and given once."""
    names = [n.strip() for n in _split(text) if n.strip()]
    if not names:
        raise UserError(f"{option}: give at least one name, comma-separated")
    repeated = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if repeated is not None:
        raise UserError(f"{option}: {repeated!r} is given twice")
    return names


def _check(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    from optispace.probes import PROBES
    from optispace.proxies import TIERS
    from optispace.recipes import RECIPES, parse_variant

    recipes, probes = _names(args.recipes, "--recipes"), _names(args.probes, "--probes")
    for option, names, known in (("--recipes", recipes, RECIPES), ("--probes", probes, PROBES)):
        unknown = [n for n in names if n not in known and "(" not in n]
        if unknown:
            raise UserError(f"{option}: unknown {unknown[0]!r}; known: {', '.join(known)}")
    for recipe in recipes:
        try:
            parse_variant(recipe)
        except ValueError as e:
            raise UserError(f"--recipes: {e}") from None
    if args.proxy not in TIERS:
        raise UserError(f"--proxy: unknown tier {args.proxy!r}; known: {', '.join(TIERS)}")
    if args.seeds < 1:
        raise UserError(f"--seeds: {args.seeds} is not a positive number of seeds")
    if args.tokens is not None and args.tokens <= 0:
        raise UserError(f"--tokens: {args.tokens} is not a positive token budget")
    return recipes, probes


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces these runs, every setting spelled out."""
    words = ["optispace", "probe", "--recipes", args.recipes, "--proxy", args.proxy]
    words += ["--seeds", str(args.seeds), "--probes", args.probes, "--device", args.device]
    if args.tokens is not None:
        words += ["--tokens", str(args.tokens)]
    if args.data is not None:
        words += ["--data", args.data]
    return shlex.join([*words, "--out", str(args.out)])


def _stored_runs(report, out: Path) -> tuple[str, list[dict]]:
    """The runs ``--rebuild`` reads back, or a UserError when the file is not what this command wrote."""
    path = out / report.RUNS_FILE
    try:
        header, runs = report.read_runs(out)
    except (ValueError, KeyError, TypeError) as e:  # JSON, or UTF-8, or not the layout save_runs writes
        problem = f"{type(e).__name__}: {e}".splitlines()[0]
        raise UserError(f"--rebuild: {path} is damaged ({problem}); run without --rebuild") from None
    if not (isinstance(header, str) and isinstance(runs, list) and all(isinstance(r, dict) for r in runs)):
        raise UserError(f"--rebuild: {path} does not hold a header and a list of runs; run without --rebuild")
    return header, runs
def run_comparison(
    recipes: Sequence[str],
    proxy: str,
    seeds: Sequence[int],
    probes: Sequence[str],
    *,
    tokens: int | None = None,
    data: str | None = None,
    device: str = "auto",
    on_run: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train every recipe on every seed with fresh ``probes`` attached; one run dict each, in order.

    A recipe is a name or ``name(key=value, ...)`` (``parse_variant``: its lr and hyperparameters);
    the run's ``recipe`` is that text. ``tokens=None`` is the tier's default budget; ``on_run`` sees
    each run as it finishes.
    """
    from optispace.probes import build
    from optispace.proxies import TrainConfig, train
    from optispace.recipes import parse_variant

    runs = []
    for recipe in recipes:
        variant = parse_variant(recipe)
        for seed in seeds:
            cfg = TrainConfig(recipe=variant.recipe.name, lr=variant.lr,
                              hyperparameters=variant.hyperparameters, proxy=proxy, tokens=tokens,
                              seed=seed, device=device, data=data)
            record = train(cfg, callbacks=build(probes), progress=True)
            run = {
                "recipe": recipe,
                "seed": seed,
                "final_val_loss": record.final_val_loss,
                "diverged": record.diverged,
                "tokens_per_s": record.tokens_per_s,
                "probes": record.probes,
            }
            runs.append(run)
            if on_run is not None:
                on_run(run)
    return runs


def run(args: argparse.Namespace) -> int:
    from optispace.report import probe_report as report

    if args.rebuild:
        if not (args.out / report.RUNS_FILE).is_file():
            raise UserError(f"--rebuild: {args.out / report.RUNS_FILE} does not exist; run without --rebuild")
        header, runs = _stored_runs(report, args.out)
    else:
        recipes, probes = _check(args)
        started, done = time.perf_counter(), []
        partial = f"# Unfinished: {len(recipes) * args.seeds} runs asked for by `{_command(args)}`\n"

        def on_run(r: dict) -> None:
            done.append(r)
            report.save_runs(args.out, partial, done)  # kept if a later run fails: see --rebuild
            print(
                f"{r['recipe']} seed {r['seed']}: val loss {r['final_val_loss']}, "
                f"{r['tokens_per_s']:,.0f} tokens/s",
                file=sys.stderr,
            )

        runs = run_comparison(
            recipes,
            args.proxy,
            range(args.seeds),
            probes,
            tokens=args.tokens,
            data=args.data,
            device=args.device,
            on_run=on_run,
        )
        minutes = (time.perf_counter() - started) / 60
        header = (
            f"# Token geometry: {', '.join(recipes)} on the {args.proxy} proxy\n\n"
            f"Made by `{_command(args)}` in {minutes:.1f} min ({len(runs)} runs).\n"
        )
    path = report.write_probe_report(runs, args.out, header)
    print(f"wrote {path}")
    return 0

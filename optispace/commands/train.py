"""``optispace train``: train one recipe on a proxy tier; print the final val loss, tokens/s and the
optimizer state bytes per role, and optionally write the run record as JSON."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from optispace.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True, help="recipe name (see `optispace recipes`)")
    parser.add_argument("--proxy", default="small", help="tier: tiny, small, medium or base (default small)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--tokens", type=int, help="token budget (default: the tier's)")
    budget.add_argument("--steps", type=int, help="number of steps instead of a token budget")
    parser.add_argument("--lr", type=float, help="learning rate for every role (default: the recipe's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the batches")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model and the optimizer step (fused=True; worth it on a GPU)")
    parser.add_argument("--data", help="stdlib (default), stdlib:no-tests, zipf[:s=,v=,n=], a text file or "
                        "folder, a .bin shard or a folder of shards")
    parser.add_argument("--probes", default="", help="comma-separated probes, e.g. ray,geometry,outliers")
    parser.add_argument("--out", type=Path, help="write the run record (config, corpus, curve) as JSON here")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint file, rewritten at each evaluation")
    parser.add_argument("--resume", type=Path, help="continue from this checkpoint")


def run(args: argparse.Namespace) -> int:
    from optispace.proxies import TIERS, TrainConfig, train

    probes = tuple(name for name in args.probes.split(",") if name)
    cfg = TrainConfig(recipe=args.recipe, proxy=args.proxy, tokens=args.tokens, lr=args.lr, seed=args.seed,
                      device=args.device, data=args.data, probes=probes, compile=args.compile)
    if args.steps is not None:
        if args.steps <= 0:
            raise UserError(f"--steps: {args.steps} is not a positive number of steps")
        cfg = dataclasses.replace(cfg, tokens=args.steps * TIERS[args.proxy].tokens_per_step)
    if args.out is not None and not args.out.parent.is_dir():
        raise UserError(f"--out: folder {args.out.parent} does not exist")
    record = train(cfg, checkpoint=args.checkpoint, resume=args.resume)
    if args.out is not None:
        args.out.write_text(record.to_json() + "\n")
    print(summary(record))
    return 1 if record.diverged else 0


def summary(record) -> str:
    """Final val loss (or the divergence), tokens/s, device and the optimizer state per role."""
    if record.diverged:
        head = f"diverged at step {record.diverged_step}: {record.diverged}"
    else:
        last = record.curve[-1]
        head = (f"final val loss {record.final_val_loss:.4f} after {last['step']} steps "
                f"({last['tokens']:,} tokens)")
    state = ", ".join(f"{role} {n:,}" for role, n in record.state_bytes.items())
    total = sum(record.state_bytes.values())
    return (f"{head}\n{record.tokens_per_s:,.0f} tokens/s on {record.device}, corpus "
            f"{record.corpus['fingerprint']}\noptimizer state bytes: {state} (total {total:,})")

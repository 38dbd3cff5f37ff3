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
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (worth it on a GPU)")
    parser.add_argument("--data", help="stdlib (default), stdlib:no-tests, zipf[:s=,v=,n=], a text file or "
                        "folder, a .bin shard or a folder of shards")
    regime = parser.add_argument_group("regimes", "fine-tuning (sft) and reinforcement learning (rl) runs")
    regime.add_argument("--regime", default="pretrain", choices=("pretrain", "sft", "rl"),
                        help="pretrain from scratch (default), sft on prompt/response pairs, rl on a task")
    regime.add_argument("--init", type=Path, help="sft/rl: start from this pretraining checkpoint of the "
                        "same tier and data (default: a pretraining run trained once and cached)")
    regime.add_argument("--pairs", help="sft: a JSONL file of {\"prompt\", \"response\"} objects, or "
                        "task:NAME (default: the corpus's Python functions, docstring -> body)")
    regime.add_argument("--new-rows", default="mean", choices=("mean", "random"),
                        help="sft/rl: new token rows start as the mean of the existing rows, or small random")
    regime.add_argument("--task", default="reverse", help="rl: the verifiable task, reverse (default) or "
                        "addition")
    regime.add_argument("--group-size", type=int, default=8,
                        help="rl: samples per prompt, G >= 2 (default 8)")
    regime.add_argument("--clip", type=float, default=0.2, help="rl: clip range of the importance ratio")
    regime.add_argument("--kl", type=float, default=0.0,
                        help="rl: weight of the KL penalty to the start policy")
    regime.add_argument("--updates-per-batch", type=int, default=1,
                        help="rl: policy updates per batch of samples (GRPO's mu, default 1)")
    parser.add_argument("--probes", default="", help="comma-separated probes, e.g. ray,geometry,outliers")
    parser.add_argument("--out", type=Path, help="write the run record (config, corpus, curve) as JSON here")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint file, rewritten at each evaluation")
    parser.add_argument("--resume", type=Path, help="continue from this checkpoint")


def run(args: argparse.Namespace) -> int:
    from optispace.proxies import TIERS, TrainConfig, train

    probes = tuple(name for name in args.probes.split(",") if name)
    cfg = TrainConfig(recipe=args.recipe, proxy=args.proxy, tokens=args.tokens, lr=args.lr, seed=args.seed,
                      device=args.device, data=args.data, probes=probes, compile=args.compile,
                      regime=args.regime, init=args.init, pairs=args.pairs, new_rows=args.new_rows,
                      task=args.task, group_size=args.group_size, clip=args.clip, kl=args.kl,
                      updates_per_batch=args.updates_per_batch)
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
    """The final objective and metrics (or the divergence), tokens/s, device and the optimizer state per
    role."""
    if record.diverged:
        head = f"diverged at step {record.diverged_step}: {record.diverged}"
    else:
        last = record.curve[-1]
        from optispace.proxies.objectives import OBJECTIVE_LABELS

        label = OBJECTIVE_LABELS[record.objective]
        head = (f"final {label} {record.final_val_loss:.4f} after {last['step']} steps "
                f"({last['tokens']:,} tokens)")
        head += "".join(f", {name} {value:.4f}" for name, value in record.metrics.items())
    state = ", ".join(f"{role} {n:,}" for role, n in record.state_bytes.items())
    total = sum(record.state_bytes.values())
    return (f"{head}\n{record.tokens_per_s:,.0f} tokens/s on {record.device}, corpus "
            f"{record.corpus['fingerprint']}\noptimizer state bytes: {state} (total {total:,})")

"""``optispace train``: train one recipe on a proxy tier; print the final val loss, tokens/s and the
optimizer state bytes per role, and optionally write the run record as JSON."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
from pathlib import Path

from optispace.errors import UserError

# The regime's settings (TrainConfig fields); unset ones come from a study's trial, else from
# TrainConfig's defaults.
REGIME_OPTIONS = ("regime", "init", "pairs", "new_rows", "task", "group_size", "clip", "kl",
                  "updates_per_batch", "format_steps")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True,
                        help="a recipe name (see `optispace recipes`), or one with hyperparameters, e.g. "
                        "'ember(bias_correction=row)' (an lr in it yields to --lr); a structure, chain "
                        "text per role "
                        "('embed: CHAIN | head: CHAIN | matrix: CHAIN | vector: CHAIN', with --lr); or "
                        "study:NAME#TRIAL (study:NAME: its best trial) to retrain a trial's chains and lrs "
                        "with the study's tier, budget, data and schedule (options given here come first)")
    parser.add_argument("--storage", help="where study:NAME lives (default: as for `optispace search`)")
    parser.add_argument("--proxy", help="tier: tiny, small, medium or base (default small, or the study's)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--tokens", type=int, help="token budget (default: the tier's, or the study's)")
    budget.add_argument("--steps", type=int, help="number of steps instead of a token budget")
    parser.add_argument("--lr", type=float, help="learning rate for every role (default: the recipe's, or "
                        "the trial's lrs for study:NAME#TRIAL)")
    parser.add_argument("--seed", type=int, help="seed of the initialisation and the batches (default 0)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default auto, or the study's")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model and the optimizer step (fused=True; worth it on a GPU)")
    parallel = parser.add_argument_group("data-parallel", "several processes on one machine, started by "
                                         "torch's elastic launcher (as torchrun does); also `torchrun -m "
                                         "optispace train ...`. The global batch and the seeds do not change")
    parallel.add_argument("--nproc", type=int, help="processes (ranks), each on its own GPU with cuda "
                          "(default 1, or torchrun's WORLD_SIZE)")
    parallel.add_argument("--parallel", help="ddp (default: every rank holds the whole model) or fsdp2 "
                          "(each rank holds its rows of every parameter and of the optimizer state; the "
                          "checkpoint is then a folder, torch.distributed.checkpoint's)")
    parser.add_argument("--data", help="stdlib (default), stdlib:no-tests, zipf[:s=,v=,n=], a text file or "
                        "folder, a .bin shard or a folder of shards")
    regime = parser.add_argument_group("regimes", "fine-tuning (sft) and reinforcement learning (rl) runs")
    regime.add_argument("--regime", choices=("pretrain", "sft", "rl"),
                        help="pretrain from scratch (default), sft on prompt/response pairs, rl on a task")
    regime.add_argument("--init", type=Path, help="sft/rl: start from this pretraining checkpoint of the "
                        "same tier and data (default: a pretraining run trained once and cached)")
    regime.add_argument("--pairs", help="sft: a JSONL file of {\"prompt\", \"response\"} objects, or "
                        "task:NAME (default: the corpus's Python functions, docstring -> body)")
    regime.add_argument("--new-rows", choices=("mean", "random"),
                        help="sft/rl: new token rows start as the mean of the existing rows (default), "
                        "or small random")
    regime.add_argument("--task", help="rl: the verifiable task, reverse (default) or "
                        "addition")
    regime.add_argument("--group-size", type=int,
                        help="rl: samples per prompt, G >= 2 (default 8)")
    regime.add_argument("--clip", type=float, help="rl: clip range of the importance ratio (default 0.2)")
    regime.add_argument("--kl", type=float,
                        help="rl: weight of the KL penalty to the start policy (default 0)")
    regime.add_argument("--updates-per-batch", type=int,
                        help="rl: policy updates per batch of samples (GRPO's mu, default 1)")
    regime.add_argument("--format-steps", type=int,
                        help="rl: steps of the cached SFT run that fits the policy to the task's format "
                        "before RL (default 800; fewer leave a weaker start policy)")
    parser.add_argument("--probes", default="", help="comma-separated probes, e.g. ray,geometry,outliers")
    parser.add_argument("--out", type=Path, help="write the run record (config, corpus, curve) as JSON here")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint file (a folder with --parallel fsdp2), "
                        "rewritten at each evaluation")
    parser.add_argument("--resume", type=Path, help="continue from this checkpoint file or folder, at any "
                        "number of processes")
    parser.add_argument("--tensorboard", metavar="DIR", help="log each evaluation to TensorBoard event files "
                        "in DIR (extra: optispace[tensorboard])")
    parser.add_argument("--wandb", metavar="PROJECT", help="log each evaluation to a Weights & Biases run "
                        "in PROJECT (extra: optispace[wandb])")


def run(args: argparse.Namespace) -> int:
    from optispace.proxies import distributed

    ranks = distributed.from_env()
    try:
        return _run(args, ranks)
    except UserError:
        if ranks is not None and not ranks.lead:
            return 2  # rank 0 says it once
        raise


def _run(args: argparse.Namespace, ranks) -> int:
    from optispace.probes import build
    from optispace.proxies import TrainConfig, distributed, train
    from optispace.proxies.train import check_world, resolve_device
    from optispace.structure import recipe_argument

    _check_numbers(args)
    _check_parallel(args, ranks)
    world = ranks.world if ranks else args.nproc or 1
    sharded = world > 1 and args.parallel == "fsdp2"
    _check_outputs(args, sharded)
    recipe = recipe_argument(args.recipe, args.storage, args.data)
    if isinstance(recipe.recipe, dict) and not recipe.role_lr and args.lr is None:
        raise UserError("--lr: a structure has no lr of its own; give --lr")
    given = {"proxy": args.proxy, "tokens": args.tokens, "lr": args.lr, "seed": args.seed,
             "device": args.device, "data": args.data, "compile": args.compile or None,
             "parallel": args.parallel,
             **{key: getattr(args, key) for key in REGIME_OPTIONS}}
    # A study's settings, then what the command line gives; an explicit --lr replaces a trial's lrs.
    settings = recipe.settings | {k: v for k, v in given.items() if v is not None}
    role_lr = recipe.role_lr if args.lr is None else {}
    try:
        probes = build([name for name in args.probes.split(",") if name])
    except ValueError as e:
        raise UserError(f"--probes: {e}") from None
    if probes and sharded:
        raise UserError("--probes read whole parameters on rank 0, which --parallel fsdp2 shards over the "
                        "ranks; use --parallel ddp for probes")
    cfg = TrainConfig(recipe=recipe.recipe, role_lr=role_lr, **settings)
    if args.steps is not None:
        cfg = dataclasses.replace(cfg, tokens=args.steps * cfg.tier.tokens_per_step)
    if recipe.role_lr:
        print(f"training the chains and lrs of {recipe.source}"
              + (", with its study's settings where the command line gives none" if recipe.settings else ""),
              file=sys.stderr)
    check_world(cfg, world)
    device = resolve_device(cfg.device)
    if ranks is None and world > 1:
        _check_gpus(world, device)
        try:
            distributed.launch(world, args.argv)
        except distributed.RanksFailed as e:
            if e.exitcode == 2:
                return 2  # a mistake in the input: rank 0 said so in one line
            print(f"optispace train: error: {e}", file=sys.stderr)
            return 1
        return 0
    lead = ranks is None or ranks.lead
    group = distributed.process_group(ranks, device) if world > 1 else contextlib.nullcontext()
    with group:
        record = train(cfg, callbacks=[*probes, *trackers(args)] if lead else [], checkpoint=args.checkpoint,
                       resume=args.resume, progress=lead)
    if not lead:
        return 1 if record.diverged else 0
    if args.out is not None:
        args.out.write_text(record.to_json() + "\n")
    print(summary(record))
    return 1 if record.diverged else 0


def _check_parallel(args: argparse.Namespace, ranks) -> None:
    """``--parallel`` and ``--nproc``: ddp or fsdp2, a positive count, torchrun's when under torchrun."""
    from optispace.proxies.distributed import MAX_NPROC, PARALLEL

    if args.parallel not in (None, *PARALLEL):
        raise UserError(f"--parallel: unknown {args.parallel!r}; use {' or '.join(PARALLEL)}")
    if args.nproc is not None and not 1 <= args.nproc <= MAX_NPROC:
        raise UserError(f"--nproc: {args.nproc} is out of range; give an integer from 1 to {MAX_NPROC}")
    if ranks is not None and args.nproc not in (None, ranks.world):
        raise UserError(f"--nproc {args.nproc} differs from the launcher's {ranks.world} processes; "
                        "give one or the other")


def _check_gpus(nproc: int, device) -> None:
    """One GPU per rank on CUDA."""
    import torch

    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise UserError(f"--nproc {nproc}: only {torch.cuda.device_count()} CUDA GPU(s) visible, one "
                        "per process is needed; use fewer processes or --device cpu")


def trackers(args: argparse.Namespace) -> list:
    """The loggers ``--tensorboard`` and ``--wandb`` ask for (``optispace.loggers``)."""
    from optispace.loggers import TensorBoardLogger, WandbLogger

    out: list = []
    if args.tensorboard:
        out.append(TensorBoardLogger(args.tensorboard))
    if args.wandb:
        out.append(WandbLogger(project=args.wandb))
    return out


def _check_numbers(args: argparse.Namespace) -> None:
    """The same bounds as a search file's (``optispace.search.spec``): no typo runs for ever."""
    from optispace.search.spec import MAX_SEED, MAX_STEPS, MAX_TOKENS

    for flag, value, high in (("--steps", args.steps, MAX_STEPS), ("--tokens", args.tokens, MAX_TOKENS),
                              ("--seed", args.seed, MAX_SEED)):
        low = 0 if flag == "--seed" else 1
        if value is not None and not low <= value <= high:
            raise UserError(f"{flag}: {value} is out of range; give an integer from {low} to {high}")


def _check_outputs(args: argparse.Namespace, sharded: bool) -> None:
    """Refuse, before training, a record or checkpoint path that could not be written, or a missing
    resume. A ``sharded`` (fsdp2) run's checkpoint is a folder."""
    from optispace.proxies.checkpoint import check_target

    for flag, path in (("--out", args.out), ("--checkpoint", args.checkpoint)):
        if path is None:
            continue
        check_target(path, sharded and flag == "--checkpoint", flag)
        if not path.parent.is_dir():
            raise UserError(f"{flag}: folder {path.parent} does not exist")
        if not os.access(path.parent, os.W_OK):
            raise UserError(f"{flag}: folder {path.parent} is not writable")
    if args.resume is not None and not (args.resume.is_file() or args.resume.is_dir()):
        raise UserError(f"--resume: {args.resume} is not a checkpoint file or folder")


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
    sharded = record.world_size > 1 and record.config.get("parallel") == "fsdp2"
    where = f" on rank 0 of {record.world_size}" if sharded else ""
    return (f"{head}\n{record.tokens_per_s:,.0f} tokens/s on {record.device}, corpus "
            f"{record.corpus['fingerprint']}\noptimizer state bytes{where}: {state} (total {total:,})")

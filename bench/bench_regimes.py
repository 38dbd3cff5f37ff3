"""Cost of the fine-tuning regimes, each against an anchor measured in the same process.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_regimes.py [--proxy tiny] [--steps 40] [--repeats 3]

1. SFT tokens/s (``train()``'s record: its training steps alone) over pretraining's, same tier, recipe
   and step count (target >= 0.95).
2. RL episodes/s of ``train(regime="rl")`` over a bare loop on the same policy: sample G completions
   per prompt through the KV cache, score them, one GRPO update (target >= 0.9). An episode is one
   sampled completion; episodes/s of ``train()`` count its training steps alone, as tokens/s do.

Runs alternate (anchor, contender, contender, anchor, ...) so load from other processes hits both;
ratios are of medians. Both need text data: the stdlib corpus by default (its tokenizer and the cached
start runs are built on the first call, before anything is timed).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import torch

from optispace.optimizer import Optimizer
from optispace.proxies import TIERS, TrainConfig, train
from optispace.proxies.rl import RL, group_advantages, grpo_loss, token_logprobs
from optispace.proxies.sampling import generate
from optispace.proxies.train import resolve_device


def bare_rl(cfg: TrainConfig, steps: int) -> float:
    """Episodes/s of the minimal sample-score-update loop on the RL regime's policy and prompts."""
    tier = TIERS[cfg.proxy]
    policy = RL(cfg, tier, resolve_device(cfg.device))
    model, g = policy.model, cfg.group_size
    optimizer = Optimizer(model, cfg.recipe, lr=cfg.lr)
    started = time.perf_counter()
    for step in range(1, steps + 1):
        picks = torch.randint(len(policy.train_problems), (policy.groups,),
                              generator=torch.Generator().manual_seed(step))
        prompts = policy.train_prompts[picks].repeat_interleave(g, 0)
        completions = generate(model, prompts, policy.answer_tokens, torch.Generator().manual_seed(step))
        problems = [policy.train_problems[i] for i in picks.tolist() for _ in range(g)]
        rewards = policy.rewards(problems, completions)
        advantages = group_advantages(rewards.view(-1, g)).flatten().float()
        sequences = torch.cat((prompts, completions), dim=1)
        x, y = sequences[:, :-1], sequences[:, 1:]
        mask = torch.zeros_like(y, dtype=torch.bool)
        mask[:, prompts.shape[1] - 1:] = True
        logp = token_logprobs(model(x), y)
        grpo_loss(logp, logp.detach(), advantages, mask, cfg.clip).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return steps * policy.groups * g / (time.perf_counter() - started)


def interleaved(anchor, contender, repeats: int) -> tuple[float, float]:
    """Medians of ``repeats`` calls of each, alternating which goes first."""
    a, c = [], []
    for repeat in range(repeats):
        if repeat % 2 == 0:
            a.append(anchor())
        c.append(contender())
        if repeat % 2 == 1:
            a.append(anchor())
    return statistics.median(a), statistics.median(c)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxy", default="tiny")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--recipe", default="adamw")
    parser.add_argument("--data", default=None, help="text data spec (default: the stdlib corpus)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    tier = TIERS[args.proxy]
    base = TrainConfig(recipe=args.recipe, proxy=args.proxy, tokens=args.steps * tier.tokens_per_step,
                       data=args.data, device=args.device, eval_every=10**9, eval_batches=1, lr=1e-4)
    configs = {name: dataclasses.replace(base, regime=name) for name in ("pretrain", "sft", "rl")}
    for cfg in configs.values():  # builds the corpus and the cached start runs before any timing
        train(dataclasses.replace(cfg, tokens=2 * tier.tokens_per_step), progress=False)
    pretrain, sft = interleaved(lambda: train(configs["pretrain"], progress=False).tokens_per_s,
                                lambda: train(configs["sft"], progress=False).tokens_per_s, args.repeats)
    rl = configs["rl"]
    episodes = max(1, tier.batch_size // rl.group_size) * rl.group_size
    per_token = episodes / tier.tokens_per_step  # the record's rl tokens are nominal: steps x the tier's
    bare, regime = interleaved(lambda: bare_rl(rl, args.steps),
                               lambda: train(rl, progress=False).tokens_per_s * per_token, args.repeats)
    print(f"{args.proxy} tier, {args.recipe}, {args.steps} steps, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')} (torch threads {torch.get_num_threads()}), "
          f"median of {args.repeats}")
    print(f"sft: {sft:,.0f} tokens/s against pretraining's {pretrain:,.0f}: ratio {sft / pretrain:.3f}")
    print(f"rl: {regime:,.1f} episodes/s against a bare loop's {bare:,.1f}: ratio {regime / bare:.3f}")


if __name__ == "__main__":
    main()

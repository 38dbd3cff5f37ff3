"""How much the RL start policy already solves its task, for several lengths of its format fitting.

    OMP_NUM_THREADS=1 .venv/bin/python bench/rl_start.py [--proxy small] [--task reverse] \\
        [--format-steps 50,100,200,800]

Per ``format_steps`` (the cached SFT run that fits the policy to the task's format before GRPO): the
held-out reward of greedy answers (what an RL run's objective measures at step 0) and the mean reward
of the samples of the first 8 draws (G per prompt, as GRPO sees them). A start that earns 1.0 leaves
RL nothing to learn; one near 0 gives groups whose samples all score 0 (advantage 0, no signal).
The start runs are trained and cached on first use, as an RL run would.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from optispace.proxies import TrainConfig
from optispace.proxies.rl import RL

DRAWS = 8


def start_rewards(proxy: str, task: str, format_steps: int) -> tuple[float, float]:
    """(held-out greedy reward, mean sampled reward over the first DRAWS draws) of the start policy."""
    cfg = TrainConfig(recipe="adamw", proxy=proxy, regime="rl", task=task, format_steps=format_steps)
    rl = RL(cfg, cfg.tier, torch.device("cpu"))
    greedy = rl.held_out_reward()
    sampled = []
    for step in range(1, DRAWS + 1):
        rl.draw(step)
        sampled.append(rl.sampled_reward)
    return greedy, statistics.fmean(sampled)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxy", default="small")
    parser.add_argument("--task", default="reverse")
    parser.add_argument("--format-steps", default="50,100,200,800")
    args = parser.parse_args()
    for steps in (int(s) for s in args.format_steps.split(",")):
        start = time.perf_counter()
        greedy, sampled = start_rewards(args.proxy, args.task, steps)
        print(f"{args.proxy} {args.task} format_steps={steps}: held-out greedy reward {greedy:.3f}, "
              f"sampled reward {sampled:.3f} (mean of {DRAWS} draws; {time.perf_counter() - start:.0f} s)",
              flush=True)


if __name__ == "__main__":
    main()

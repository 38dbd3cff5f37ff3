"""Cost of the training framework: tokens/s of ``train()`` against a bare loop over the same model,
optimizer and batches, measured in the same process.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_train.py [--proxy small] [--steps 40] [--repeats 3]

The bare loop is what any training script must do per step: draw the batch, forward, backward, clip the
gradient norm, step, zero the gradients. ``train()`` adds the lr schedule, the divergence check (one
``loss.item()``), hooks, the progress bar and one evaluation at the end (``eval_batches=1`` here).
Runs alternate (bare, train, train, bare, ...) so load from other processes hits both alike. Three
ratios, train / bare (1.00 = free; target >= 0.95):

- ``step``: median time of one step, from the end of one step to the end of the next (in ``train()``
  a callback takes the timestamps), so the bookkeeping between steps counts and load spikes from
  other processes on a shared machine do not: the robust figure;
- ``steps``: the tokens/s that ``train()`` records (its training steps alone), medians over runs;
- ``loop``: steps x tokens per step over the record's wall time, so the final evaluation counts too.

On a CUDA device, ``--peak-tflops`` (the chip's dense bf16 peak) adds the model FLOP utilisation.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
from collections.abc import Callable

import torch

from optispace.optimizer import Optimizer
from optispace.proxies import TIERS, TrainConfig, train
from optispace.proxies.data import load_data, train_batch
from optispace.proxies.model import GPT
from optispace.proxies.train import resolve_device


class StepClock:
    """A callback that notes the time at the end of every step."""

    name = "clock"

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_after_step(self, step, model, optimizer, batch) -> None:
        self.times.append(time.perf_counter())


def median_interval(times: list[float]) -> float:
    return statistics.median(b - a for a, b in itertools.pairwise(times))


def bare_loop(cfg: TrainConfig, steps: int,
              make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer] | None = None,
              ) -> tuple[float, float]:
    """(tokens/s, median seconds per step) of the minimal loop (bf16 autocast on CUDA, as ``train``).

    ``make_optimizer(model)``: the optimizer to step (default: the config's recipe and lr).
    """
    tier = TIERS[cfg.proxy]
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = GPT(tier.model).to(device)
    optimizer = Optimizer(model, cfg.recipe, lr=cfg.lr) if make_optimizer is None else make_optimizer(model)
    forward = torch.compile(model) if cfg.compile else model
    data = load_data(cfg.data, tier.model.vocab_size, cfg.cache_dir)
    started = time.perf_counter()
    times = [started]
    for step in range(1, steps + 1):
        x, y = (t.to(device) for t in train_batch(data, cfg.seed, step, tier.batch_size, tier.model.seq_len))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = forward(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()  # train() syncs once per step too, reading the loss
        times.append(time.perf_counter())
    return steps * tier.tokens_per_step / (times[-1] - started), median_interval(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxy", default="small")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--recipe", default="adamw")
    parser.add_argument("--data", default=None, help="data spec (default: the stdlib corpus)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the GPU, for MFU")
    args = parser.parse_args()
    tier = TIERS[args.proxy]
    cfg = TrainConfig(recipe=args.recipe, proxy=args.proxy, tokens=args.steps * tier.tokens_per_step,
                      data=args.data, device=args.device, compile=args.compile, eval_every=10**9,
                      eval_batches=1)
    train(TrainConfig(**{**cfg.__dict__, "tokens": 2 * tier.tokens_per_step}), progress=False)  # warm-up
    bare, bare_step, steps_rate, loop_rate, train_step = [], [], [], [], []

    def run_bare() -> None:
        rate, interval = bare_loop(cfg, args.steps)
        bare.append(rate)
        bare_step.append(interval)

    for repeat in range(args.repeats):
        if repeat % 2 == 0:  # alternate which goes first, so a drift in load favours neither
            run_bare()
        clock = StepClock()
        record = train(cfg, callbacks=[clock], progress=False)
        steps_rate.append(record.tokens_per_s)
        loop_rate.append(args.steps * tier.tokens_per_step / record.wall_time_s)
        train_step.append(median_interval(clock.times[1:]))
        if repeat % 2 == 1:
            run_bare()
    anchor = statistics.median(bare)
    print(f"{args.proxy} tier, {args.recipe}, {args.steps} steps of {tier.tokens_per_step:,} tokens, "
          f"device {record.device}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} "
          f"(torch threads {torch.get_num_threads()}), median of {args.repeats}")
    print(f"anchor (bare loop): {anchor:,.0f} tokens/s, {statistics.median(bare_step) * 1e3:.1f} ms per step")
    print(f"train() step:  {statistics.median(train_step) * 1e3:.1f} ms per step, ratio "
          f"{statistics.median(bare_step) / statistics.median(train_step):.3f}")
    print(f"train() steps: {statistics.median(steps_rate):,.0f} tokens/s, ratio "
          f"{statistics.median(steps_rate) / anchor:.3f}")
    print(f"train() loop:  {statistics.median(loop_rate):,.0f} tokens/s, ratio "
          f"{statistics.median(loop_rate) / anchor:.3f}")
    if args.peak_tflops and record.device.startswith("cuda"):
        mfu = statistics.median(steps_rate) * tier.model.flops_per_token() / (args.peak_tflops * 1e12)
        print(f"model FLOP utilisation: {mfu:.1%} of {args.peak_tflops} TFLOP/s")


if __name__ == "__main__":
    main()

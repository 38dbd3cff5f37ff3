"""Optimizer step cost: composed recipes against their anchors, measured in the same run.

1. Composed ``adam`` / ``adamw`` vs ``torch.optim.Adam(W)(foreach=True)`` (and ``fused=True`` on
   CUDA) on GPT-2-small shapes (124M parameters, tied head): step time ratio (target <= 1.10).
2. Composed ``ember`` vs composed ``adam`` on one 50304 x 768 table: step time ratio, and the bytes
   read and written by the tensor operations of one step (counted op by op).
3. State bytes of ``ember`` vs ``adam`` on that table, exactly.
4. Per-parameter overhead: composed ``adamw`` vs ``torch.optim.AdamW(foreach=True)`` on 200 tensors
   of 8 x 8, where the step is Python and kernel launches, not arithmetic.

Timings are per step, the minimum and the median over interleaved repeats (the anchor and the
contender alternate, so drift on a shared machine hits both). Run on an idle machine, e.g.
``OMP_NUM_THREADS=1 .venv/bin/python bench/bench_optimizer.py`` (add ``--device cuda`` on a GPU).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from optispace import Optimizer

VOCAB, DIM, LAYERS, CONTEXT = 50257, 768, 12, 1024
TABLE = (50304, 768)


def gpt2_small_shapes() -> list[tuple[int, ...]]:
    """GPT-2 small's parameters (the head is tied to the token table)."""
    block = [(DIM,), (DIM,), (3 * DIM, DIM), (3 * DIM,), (DIM, DIM), (DIM,),
             (DIM,), (DIM,), (4 * DIM, DIM), (4 * DIM,), (DIM, 4 * DIM), (DIM,)]
    return [(VOCAB, DIM), (CONTEXT, DIM)] + block * LAYERS + [(DIM,), (DIM,)]


def parameters(shapes: list[tuple[int, ...]], device: torch.device,
               seed: int = 0) -> list[torch.nn.Parameter]:
    """Parameters of these shapes with fixed gradients (a step's cost does not depend on the values)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter(0.02 * torch.randn(shape, device=device, generator=gen))
        p.grad = 1e-3 * torch.randn(shape, device=device, generator=gen)
        params.append(p)
    return params


def time_steps(contenders: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict:
    """Per contender, the seconds of each of ``repeats`` steps, interleaved; one warm-up step each."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for step in contenders.values():
        step()
    for _ in range(repeats):
        for name, step in contenders.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


class ByteCounter(TorchDispatchMode):
    """Bytes read (tensor arguments, ``out=`` excluded) and written (results) by every aten op.

    Views (slices, reshapes) move nothing and are not counted; a block-wise op counts the bytes of
    its block, so what stays in cache between the ops on one block is counted once per op.
    """

    def __init__(self) -> None:
        super().__init__()
        self.read = self.written = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.is_view:
            return func(*args, **kwargs)
        inputs = [*args, *(v for k, v in kwargs.items() if k != "out")]
        self.read += sum(t.nbytes for t in tree_leaves(inputs) if isinstance(t, torch.Tensor))
        result = func(*args, **kwargs)
        self.written += sum(t.nbytes for t in tree_leaves(result) if isinstance(t, torch.Tensor))
        return result


def bytes_per_step(step: Callable[[], object]) -> int:
    counter = ByteCounter()
    with counter:
        step()
    return counter.read + counter.written


def summary(times: dict[str, list[float]]) -> dict[str, tuple[float, float]]:
    return {name: (min(t), statistics.median(t)) for name, t in times.items()}


def report_ratio(label: str, stats: dict[str, tuple[float, float]], ours: str, anchor: str) -> None:
    (o_min, o_med), (a_min, a_med) = stats[ours], stats[anchor]
    print(f"  {label}: {o_min / a_min:.3f} (min {o_min * 1e3:.1f} ms vs {a_min * 1e3:.1f} ms), "
          f"{o_med / a_med:.3f} (median {o_med * 1e3:.1f} ms vs {a_med * 1e3:.1f} ms)")


def bench_adam(device: torch.device, repeats: int) -> None:
    print(f"1. GPT-2 small ({sum(torch.Size(s).numel() for s in gpt2_small_shapes()):,} parameters), "
          f"step time, composed / torch:")
    for recipe, anchor_cls in (("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)):
        ours = parameters(gpt2_small_shapes(), device)
        theirs = parameters(gpt2_small_shapes(), device)
        contenders = {"composed": Optimizer(ours, recipe, lr=1e-3).step,
                      "foreach": anchor_cls(theirs, lr=1e-3, foreach=True).step}
        if device.type == "cuda":
            fused = parameters(gpt2_small_shapes(), device)
            contenders["fused"] = anchor_cls(fused, lr=1e-3, fused=True).step
        stats = summary(time_steps(contenders, repeats, device))
        report_ratio(f"{recipe} vs {anchor_cls.__name__}(foreach=True)", stats, "composed", "foreach")
        if device.type == "cuda":
            report_ratio(f"{recipe} vs {anchor_cls.__name__}(fused=True)", stats, "composed", "fused")
        del ours, theirs, contenders


def bench_table(device: torch.device, repeats: int) -> None:
    rows, cols = TABLE
    table_bytes = rows * cols * 4
    optimizers = {}
    for recipe in ("adam", "ember"):
        (p,) = parameters([TABLE], device)
        optimizers[recipe] = Optimizer([("wte", p)], {"embed": _table_chain(recipe)}, lr=1e-3)
    stats = summary(time_steps({r: o.step for r, o in optimizers.items()}, repeats, device))
    print(f"2. One {rows} x {cols} table, ember / adam:")
    report_ratio("step time", stats, "ember", "adam")
    moved = {r: bytes_per_step(o.step) for r, o in optimizers.items()}
    for recipe, n in moved.items():
        print(f"  bytes read + written by tensor ops per step, {recipe}: {n:,} "
              f"({n / table_bytes:.2f} x the table's {table_bytes:,} bytes)")
    print(f"  ratio ember / adam: {moved['ember'] / moved['adam']:.3f}")
    state = {r: sum(o.state_bytes().values()) for r, o in optimizers.items()}
    print(f"3. State bytes on the table: adam {state['adam']:,}, ember {state['ember']:,}; "
          f"ember / adam = 1/{state['adam'] / state['ember']:.1f} "
          f"(exactly {state['ember']:,}/{state['adam']:,})")


def bench_overhead(device: torch.device, repeats: int, steps: int = 20) -> None:
    shapes = [(8, 8)] * 200
    optimizers = {"composed": Optimizer(parameters(shapes, device), "adamw", lr=1e-3),
                  "foreach": torch.optim.AdamW(parameters(shapes, device), lr=1e-3, foreach=True)}

    def run(opt: torch.optim.Optimizer) -> Callable[[], None]:
        return lambda: [opt.step() for _ in range(steps)]

    stats = summary(time_steps({name: run(o) for name, o in optimizers.items()}, repeats, device))
    per_tensor = {name: t[0] / steps / len(shapes) * 1e6 for name, t in stats.items()}
    print(f"4. {len(shapes)} tensors of 8 x 8, {steps} steps a repeat; step time per tensor: "
          f"composed {per_tensor['composed']:.1f} us, torch {per_tensor['foreach']:.1f} us")
    report_ratio(f"{steps} steps, adamw vs AdamW(foreach=True)", stats, "composed", "foreach")


def _table_chain(recipe: str) -> str:
    """The chain each recipe gives a token table."""
    from optispace import RECIPES

    return str(RECIPES[recipe].chains()["embed"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per contender (default 5)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    bench_adam(device, args.repeats)
    bench_table(device, args.repeats)
    bench_overhead(device, args.repeats)


if __name__ == "__main__":
    main()

"""Optimizer step cost: composed recipes against their anchors, measured in the same run.

1. Composed ``adamw`` (eager, and ``fused=True``: the compiled pure update) vs
   ``torch.optim.AdamW(fused=True)`` and ``(foreach=True)`` on GPT-2-small shapes (124M parameters,
   tied head): step time ratios (target for the fused one vs torch's fused: <= 1.10).
2. Composed ``ember`` (eager and fused) on one 50304 x 768 table vs ``torch.optim.Adam(fused=True)``
   (target <= 0.60; the byte ratio is 16/28: two passes over the gradient, then the parameter read
   and written, against Adam's 7 tensors) and vs the measured bandwidth floor: an axpy
   (``y += a x``, 12 B per element) on the table's size, scaled to Ember's 16 B per parameter
   (target <= 1.5); the eager step on a row-sparse gradient (5% of rows non-zero, as a token
   table's: the other rows are left alone); and the bytes read and written by the tensor operations
   of one eager step. Also printed: Ember's two passes as this machine runs them at best, a plain
   read of the table (``sum``, for the row and column sums: one stream, which one core reads
   slower per byte than an axpy's two) plus an axpy (the update: gradient and parameter read,
   parameter written), and the step against that.
3. State bytes of ``ember`` vs ``adam`` on that table, exactly.
4. Recompilations of the fused step across 20 trials of one structure with different lrs, betas and
   weight decays (target 0), counted by torch's compile counters.
5. Per-parameter overhead: composed ``adamw`` vs ``torch.optim.AdamW(foreach=True)`` on 200 tensors
   of 8 x 8, where the step is Python and kernel launches, not arithmetic.
6. The ``small`` proxy tier in ``bench_train``'s bare loop (model not compiled, zipf tokens):
   tokens/s with composed ``adamw`` ``fused=True`` vs ``torch.optim.AdamW(fused=True)`` (target >= 0.97).

Timings are per step, the minimum and the median over interleaved repeats (the anchor and the
contender alternate, so drift on a shared machine hits both). Run on an idle machine, e.g.
``OMP_NUM_THREADS=1 .venv/bin/python bench/bench_optimizer.py`` (add ``--device cuda`` on a GPU,
``--sections 2`` for the table alone).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from optispace import Optimizer, native

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


def bench_adamw(device: torch.device, repeats: int) -> None:
    shapes = gpt2_small_shapes()
    print(f"1. GPT-2 small ({sum(torch.Size(s).numel() for s in shapes):,} parameters), step time:")
    start = time.perf_counter()
    # The eager composed step (2.8-3.1x torch's fused one, issue 13) is left out to fit in memory.
    contenders = {"composed fused": Optimizer(parameters(shapes, device), "adamw", lr=1e-3, fused=True).step,
                  "torch fused": torch.optim.AdamW(parameters(shapes, device), lr=1e-3, fused=True).step,
                  "torch foreach": torch.optim.AdamW(parameters(shapes, device), lr=1e-3, foreach=True).step}
    contenders["composed fused"]()  # compiles
    print(f"  (set up and compiled in {time.perf_counter() - start:.0f} s)")
    stats = summary(time_steps(contenders, repeats, device))
    for anchor in ("torch fused", "torch foreach"):
        report_ratio(f"adamw fused=True vs AdamW({anchor.split()[1]}=True)", stats, "composed fused", anchor)


def bench_table(device: torch.device, repeats: int) -> None:
    rows, cols = TABLE
    n, table_bytes = rows * cols, rows * cols * 4
    ember = _table_chain("ember")

    def table(chain: str, fused: bool | None = None) -> Optimizer:
        return Optimizer([("wte", parameters([TABLE], device)[0])], {"embed": chain}, lr=1e-3, fused=fused)

    optimizers = {"adam": table(_table_chain("adam")), "ember": table(ember)}
    sparse = table(ember)
    for p in sparse.param_groups[0]["params"]:
        p.grad[torch.rand(rows, device=device, generator=torch.Generator(device).manual_seed(1)) > 0.05] = 0.0
    contenders = {**{r: o.step for r, o in optimizers.items()}, "ember fused": table(ember, True).step,
                  "ember, 5% of rows": sparse.step,
                  "torch Adam fused": torch.optim.Adam(parameters([TABLE], device), lr=1e-3, fused=True).step}
    x, y, z = (torch.randn(n, device=device) for _ in range(3))
    contenders["axpy"] = lambda: y.add_(x, alpha=0.5)
    contenders["triad"] = lambda: torch.add(x, y, alpha=0.5, out=z)
    contenders["read"] = lambda: x.sum()
    stats = summary(time_steps(contenders, repeats, device))
    # The floor: the bytes a step must move at the best bandwidth a streaming kernel reached here.
    moved = {"axpy": 12 * n, "triad": 12 * n, "torch Adam fused": 28 * n}
    best = max(moved, key=lambda k: moved[k] / stats[k][1])
    bandwidth = moved[best] / stats[best][1]
    print(f"2. One {rows} x {cols} table ({ember}); bandwidth (median step): "
          + ", ".join(f"{k} {moved[k] / stats[k][1] / 1e9:.1f} GB/s" for k in moved)
          + f"; floor at the best, {bandwidth / 1e9:.1f} GB/s: Ember 16 B/parameter "
          f"{16 * n / bandwidth * 1e3:.1f} ms, Adam 28 B/parameter {28 * n / bandwidth * 1e3:.1f} ms")
    stats["ember floor"] = tuple(16 * n / bandwidth for _ in range(2))
    stats["read + axpy"] = tuple(r + a for r, a in zip(stats["read"], stats["axpy"], strict=True))
    print(f"  a read of the table (sum) {stats['read'][1] * 1e3:.1f} ms, "
          f"{4 * n / stats['read'][1] / 1e9:.1f} GB/s (median)")
    for ours in ("ember fused", "ember"):
        report_ratio(f"{ours} vs Adam(fused=True) (target <= 0.60)", stats, ours, "torch Adam fused")
        report_ratio(f"{ours} vs its floor (target <= 1.5)", stats, ours, "ember floor")
    report_ratio("ember fused vs a read + an axpy (its two passes at best here)", stats, "ember fused",
                 "read + axpy")
    report_ratio("composed adam (eager) vs Adam(fused=True)", stats, "adam", "torch Adam fused")
    report_ratio("ember (eager), 5% of rows vs all rows non-zero", stats, "ember, 5% of rows", "ember")
    moved = {r: bytes_per_step(o.step) for r, o in optimizers.items()}
    for recipe, count in moved.items():
        print(f"  bytes read + written by tensor ops per eager step, {recipe}: {count:,} "
              f"({count / table_bytes:.2f} x the table's {table_bytes:,} bytes)")
    if device.type == "cpu" and native._library() is not None:
        print("  (ember's row and column sums are optispace.native's kernel, not a tensor op: "
              "one more read of the gradient, 1.00 x)")
    state = {r: sum(o.state_bytes().values()) for r, o in optimizers.items()}
    print(f"3. State bytes on the table: adam {state['adam']:,}, ember {state['ember']:,}; "
          f"ember / adam = 1/{state['adam'] / state['ember']:.1f} "
          f"(exactly {state['ember']:,}/{state['adam']:,})")


def bench_recompiles(device: torch.device, trials: int = 20) -> None:
    from torch._dynamo.utils import counters

    shapes = [(64, 32), (32, 32), (32,)]
    graphs = [counters["stats"]["unique_graphs"]]
    for trial in range(trials):
        opt = Optimizer(parameters(shapes, device, seed=trial), "adamw", lr=1e-4 * (1 + trial),
                        betas=(0.8 + 0.01 * trial, 0.95 + 0.002 * trial), weight_decay=0.01 * trial + 0.01,
                        fused=True)
        opt.step()
        opt.step()
        graphs.append(counters["stats"]["unique_graphs"])
    print(f"4. Fused adamw, {trials} trials of one structure with different lr, betas, weight decay: "
          f"{graphs[-1] - graphs[1]} recompilations after the first trial's {graphs[1] - graphs[0]} "
          "compilation(s), one per group (target 0)")


def bench_overhead(device: torch.device, repeats: int, steps: int = 20) -> None:
    shapes = [(8, 8)] * 200
    optimizers = {"composed": Optimizer(parameters(shapes, device), "adamw", lr=1e-3),
                  "foreach": torch.optim.AdamW(parameters(shapes, device), lr=1e-3, foreach=True)}

    def run(opt: torch.optim.Optimizer) -> Callable[[], None]:
        return lambda: [opt.step() for _ in range(steps)]

    stats = summary(time_steps({name: run(o) for name, o in optimizers.items()}, repeats, device))
    per_tensor = {name: t[0] / steps / len(shapes) * 1e6 for name, t in stats.items()}
    print(f"5. {len(shapes)} tensors of 8 x 8, {steps} steps a repeat; step time per tensor: "
          f"composed {per_tensor['composed']:.1f} us, torch {per_tensor['foreach']:.1f} us")
    report_ratio(f"{steps} steps, adamw vs AdamW(foreach=True)", stats, "composed", "foreach")


def bench_small_tier(device: torch.device, repeats: int, steps: int = 20) -> None:
    from bench_train import bare_loop

    from optispace.proxies import TrainConfig

    cfg = TrainConfig(recipe="adamw", proxy="small", data="zipf", device=device.type, lr=1e-3)
    makers = {"composed fused": lambda m: Optimizer(m, "adamw", lr=1e-3, fused=True),
              "torch fused": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3, fused=True)}
    for make in makers.values():
        bare_loop(cfg, 2, make)  # compiles, warms up
    rates: dict[str, list[float]] = {name: [] for name in makers}
    for repeat in range(repeats):
        for name in (list(makers) if repeat % 2 == 0 else list(makers)[::-1]):
            rates[name].append(bare_loop(cfg, steps, makers[name])[0])
    ours, theirs = (statistics.median(rates[k]) for k in makers)
    print(f"6. small tier, bare loop, {steps} steps x {repeats}: composed adamw fused=True "
          f"{ours:,.0f} tokens/s, AdamW(fused=True) {theirs:,.0f} tokens/s; ratio {ours / theirs:.3f} "
          "(target >= 0.97)")


def _table_chain(recipe: str) -> str:
    """The chain each recipe gives a token table."""
    from optispace import RECIPES

    return str(RECIPES[recipe].chains()["embed"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per contender (default 5)")
    parser.add_argument("--sections", default="1,2,3,4,5,6",
                        help="which numbered sections to run, comma-separated (default all; 3 comes with 2)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    sections = {int(k) for k in args.sections.split(",")}
    runs = {1: lambda: bench_adamw(device, args.repeats), 2: lambda: bench_table(device, args.repeats),
            4: lambda: bench_recompiles(device), 5: lambda: bench_overhead(device, args.repeats),
            6: lambda: bench_small_tier(device, 3)}
    for number, run in runs.items():
        if number in sections:
            run()


if __name__ == "__main__":
    main()

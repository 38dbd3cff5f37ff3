"""``optispace recipes``: the named recipes as chains per role, and their state bytes on a model shape
(``--world N``: per rank and over all ranks, dim 0 sharded as FSDP2 does).

The model shape is the proxies' GPT layout (``optispace.roles.transformer_shapes``): a V x D token
table, an untied V x D head (``--tied`` shares the table), and per layer a 3D x D and a D x D
attention matrix, a 4D x D and a D x 4D MLP matrix and two norm gains. Nothing is allocated.
"""

from __future__ import annotations

import argparse
import math

from optispace.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", metavar="NAME", help="recipes to show (default: all)")
    parser.add_argument("--vocab", type=int, default=50304, help="rows of the token table, V (default 50304)")
    parser.add_argument("--dim", type=int, default=768, help="model width, D (default 768)")
    parser.add_argument("--layers", type=int, default=12, help="transformer blocks (default 12)")
    parser.add_argument("--tied", action="store_true", help="the LM head is the token table")
    parser.add_argument("--world", type=int, default=1, metavar="N",
                        help="ranks sharding dim 0 of every parameter and its state (ZeRO/FSDP2 Shard(0)): "
                        "bytes per rank and over all ranks (default 1, unsharded)")


def fmt_bytes(n: int) -> str:
    """Exact bytes with thousands separators, and a binary-prefixed size."""
    size, unit = float(n), "B"
    for prefix in ("KiB", "MiB", "GiB"):
        if size < 1024:
            break
        size, unit = size / 1024, prefix
    return f"{n:>15,} B" + (f"  ({size:.1f} {unit})" if unit != "B" else "")


def _ratio(part: int, whole: int) -> str:
    ratio = part / whole
    return f"{ratio:.6f}" + (f" (1/{1 / ratio:,.1f})" if 0 < ratio < 1 else "")


def _all_ranks(n: int, world: int) -> str:
    return f"  all {world} ranks {fmt_bytes(n).strip()}" if world > 1 else ""


def _hyperparameters(recipe) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in recipe.defaults.items())


def run(args: argparse.Namespace) -> int:
    from optispace import RECIPES
    from optispace.optimizer import sharded_state_bytes
    from optispace.roles import transformer_shapes

    if args.world < 1:
        raise UserError(f"--world={args.world} is not allowed; give a number of ranks >= 1")
    unknown = [n for n in args.names if n not in RECIPES]
    if unknown:
        raise UserError(f"unknown recipe {unknown[0]!r}; known: {', '.join(RECIPES)}")
    try:
        shapes = {role: s for role, s in transformer_shapes(args.vocab, args.dim, args.layers,
                                                              tied=args.tied).items() if s}
    except ValueError as e:
        raise UserError(str(e).replace("transformer_shapes: ", "--")) from None
    params = sum(math.prod(s) for group in shapes.values() for s in group)
    print(f"Model: V={args.vocab}, D={args.dim}, {args.layers} layers, head "
          f"{'tied to the table' if args.tied else 'untied'}: {params:,} parameters "
          f"({', '.join(f'{r} {len(s)}' for r, s in shapes.items())} tensors). State is fp32"
          + (f"; sharded over {args.world} ranks (dim 0, padded as FSDP2's Shard(0)): bytes per rank, "
             "then over all ranks.\n" if args.world > 1 else ".\n"))
    totals, tables = {}, {}
    for name in args.names or list(RECIPES):
        recipe = RECIPES[name]
        chains = recipe.chains()
        sharded = sharded_state_bytes(shapes, args.world, name)
        nbytes = sharded.per_rank
        totals[name] = sum(nbytes.values())
        tables[name] = nbytes["embed"] + nbytes.get("head", 0)
        print(f"{name}: {recipe.summary}; matches {recipe.reference}")
        print(f"  lr {recipe.lr!r}; {_hyperparameters(recipe) or 'no other hyperparameters'}")
        width = max(len(str(chains[r])) for r in shapes)
        for role in shapes:
            print(f"  {role:<7} {str(chains[role]):<{width}} {fmt_bytes(nbytes[role])}"
                  + _all_ranks(sharded.total[role], args.world))
        print(f"  {'total':<7} {'':<{width}} {fmt_bytes(totals[name])}"
              + _all_ranks(sum(sharded.total.values()), args.world) + "\n")
    if "adam" in totals and len(totals) > 1:
        per_rank = " per rank" if args.world > 1 else ""
        print(f"State bytes{per_rank} relative to adam  {'all roles':<22} token tables (embed, head)")
        for name in totals:
            print(f"  {name:<27} {_ratio(totals[name], totals['adam']):<22} "
                  f"{_ratio(tables[name], tables['adam'])}")
    return 0

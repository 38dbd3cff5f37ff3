"""Parameter roles: which part of a Transformer a tensor is, so each role can get its own chain.

- ``embed``: a token (or position) table: the weight of an ``nn.Embedding`` of a model, or, for
  named parameters, a tensor whose owner is named like one (:data:`EMBED_NAMES`: ``wte``,
  ``embed_tokens``, ``tok_embeddings``, ``word_embeddings``, ...). A head tied to a table is the
  same tensor, updated once, with this role.
- ``head``: the output projection onto the vocabulary: a 2-D tensor shaped like the largest table
  (``V x D``, the weight of a ``Linear(D, V)``), or named ``lm_head``. A name in :data:`HEAD_NAMES`
  (``lm_head``, ``output``, ...) settles which, when several have that shape; a model whose head is
  tied to its table has no other head. Several candidates that no name settles are an error
  listing them.
- ``matrix``: every other tensor of 2 or more dimensions
- ``vector``: the rest (biases, norm gains, scalars)

The owner of a parameter ``a.b.weight`` is ``b``; of a bare ``a.pos_emb``, ``pos_emb``. A bare list
of tensors has neither modules nor names, so its roles come from shapes alone (``matrix`` or
``vector``): :func:`token_roles_unknown` says so, and the optimizer refuses to guess when its
recipe treats the token tables differently. Parameters that do not require a gradient get no role.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

ROLES = ("embed", "head", "matrix", "vector")
# Token tables in common codebases: GPT-2/nanoGPT (wte, wpe), Llama in transformers and OPT
# (embed_tokens, embed_positions), Meta's Llama (tok_embeddings), BERT and BLOOM (word_embeddings,
# position_embeddings), GPT-NeoX (embed_in), minGPT (tok_emb, pos_emb), optispace's proxies (embed).
EMBED_NAMES = ("embed", "wte", "wpe", "embed_tokens", "embed_positions", "tok_embeddings", "word_embeddings",
               "position_embeddings", "embed_in", "tok_emb", "pos_emb")
# LM heads: nanoGPT and transformers (lm_head), Meta's Llama (output), GPT-NeoX (embed_out), timm (head).
HEAD_NAMES = ("lm_head", "output", "embed_out", "head")

Override = Mapping[str, str] | Callable[[str, nn.Parameter], str | None] | nn.Module
Named = list[tuple[str, nn.Parameter]]


def check_role(role: str, where: str) -> None:
    """Raise ``ValueError`` unless ``role`` is one of :data:`ROLES`."""
    if role not in ROLES:
        raise ValueError(f"{where}: unknown role {role!r}; the roles are {', '.join(ROLES)}")


def shape_role(p: torch.Tensor) -> str:
    """The role a tensor gets from its shape alone."""
    return "matrix" if p.ndim >= 2 else "vector"


def owner(name: str) -> str:
    """The module (or attribute) a parameter belongs to: ``b`` for ``a.b.weight``."""
    parts = name.split(".")
    return parts[-2] if len(parts) > 1 and parts[-1] == "weight" else parts[-1]


def named_items(params: Iterable) -> Named:
    """A list of tensors as ``("0", t), ("1", t), ...``; a list of ``(name, tensor)`` pairs as given."""
    items = list(params)
    if items and all(isinstance(x, tuple) and len(x) == 2 for x in items):
        named = [(str(n), p) for n, p in items]
    else:
        named = [(str(i), p) for i, p in enumerate(items)]
    for name, p in named:
        if not isinstance(p, torch.Tensor):
            raise ValueError(f"roles: parameter {name!r} is a {type(p).__name__}, not a tensor")
    return named


def token_roles_unknown(model_or_params: nn.Module | Iterable) -> str | None:
    """Why embed and head cannot be told from matrix here, or ``None`` when modules or names tell."""
    if isinstance(model_or_params, nn.Module):
        return None
    items = list(model_or_params)
    if not all(isinstance(x, tuple) for x in items):
        return "parameters without names (as model.parameters() gives) carry no embed or head role"
    if not any(owner(str(name)) in EMBED_NAMES for name, _ in items):
        return (f"no parameter is named like a token table ({', '.join(EMBED_NAMES)}), so no embed or "
                "head role was found")
    return None


def _tokens(model_or_params: nn.Module | Iterable) -> tuple[Named, set[int], bool]:
    """(named parameters, ids of the token tables, whether a module's head is tied to a table)."""
    if isinstance(model_or_params, nn.Module):
        tables = {id(m.weight) for m in model_or_params.modules() if isinstance(m, nn.Embedding)}
        tied = any(isinstance(m, nn.Linear) and id(m.weight) in tables for m in model_or_params.modules())
        return list(model_or_params.named_parameters()), tables, tied
    named = named_items(model_or_params)
    return named, {id(p) for name, p in named if p.ndim == 2 and owner(name) in EMBED_NAMES}, False


def _head_candidates(named: Named, tables: set[int], tied: bool) -> tuple[list[str], list[str]]:
    """(names given the head role, names that could each be the head with nothing to choose).

    A candidate is a 2-D tensor shaped like the largest table (``V x D``), or owned by ``lm_head``
    (whatever its shape); with no table, any 2-D tensor named like a head. Head names among the
    candidates settle it; a tied head leaves none.
    """
    shapes = [tuple(p.shape) for _, p in named if id(p) in tables]
    rows = max((s[0] for s in shapes), default=None)
    vocab = {s for s in shapes if s[0] == rows}
    candidates = [name for name, p in named if id(p) not in tables and p.ndim == 2
                  and (tuple(p.shape) in vocab or owner(name) == "lm_head"
                       or (rows is None and owner(name) in HEAD_NAMES))]
    by_name = [name for name in candidates if owner(name) in HEAD_NAMES]
    if by_name or tied:
        return by_name, []
    return (candidates, []) if len(candidates) <= 1 else ([], candidates)


def assign_roles(
    model_or_params: nn.Module | Iterable, override: Override | None = None
) -> dict[str, tuple[str, nn.Parameter]]:
    """Every trainable parameter's name -> (role, parameter), in the model's parameter order.

    ``override`` changes the assignment: a mapping ``{name: role}`` (every name must exist), a
    function ``(name, param) -> role`` returning ``None`` to keep the default, or a module whose own
    roles its parameters take (for parameters given without names). Names of a bare list of tensors
    are their positions (``"0"``, ``"1"``, ...); of a list of ``(name, tensor)`` pairs, those names.
    Several head candidates (module docstring) are a ``ValueError`` unless the override settles them:
    it names the head (the rest are ``matrix``) or gives a role to all candidates but one (the head).
    """
    named, tables, tied = _tokens(model_or_params)
    out: dict[str, tuple[str, nn.Parameter]] = {}
    seen: set[int] = set()
    for name, p in named:
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        out[name] = ("embed" if id(p) in tables else shape_role(p), p)
    heads, open_heads = _head_candidates([(n, p) for n, (_, p) in out.items()], tables, tied)
    for name in heads:
        out[name] = ("head", out[name][1])
    settled = _apply_override(out, override)
    unsettled = [name for name in open_heads if name not in settled]
    if unsettled and not any(role == "head" for role, _ in out.values()):
        if len(unsettled) > 1:
            raise ValueError(
                f"roles: {len(unsettled)} tensors could be the head (shaped like the largest token table): "
                f"{', '.join(unsettled)}, and no name settles it (head names: {', '.join(HEAD_NAMES)}); "
                f"say which with roles={{{unsettled[-1]!r}: 'head'}} (the others are then matrix)")
        out[unsettled[0]] = ("head", out[unsettled[0]][1])
    return out


def _apply_override(out: dict[str, tuple[str, nn.Parameter]], override: Override | None) -> set[str]:
    """Apply ``override`` to ``out`` in place; returns the names it gave a role."""
    if override is None:
        return set()
    if isinstance(override, nn.Module):
        by_id = {id(p): role for role, p in assign_roles(override).values()}
        return _apply_override(out, lambda name, p: by_id.get(id(p)))
    if callable(override):
        settled = set()
        for name, (_, p) in out.items():
            new = override(name, p)
            if new is not None:
                check_role(new, f"roles override for {name!r}")
                out[name] = (new, p)
                settled.add(name)
        return settled
    for name, role in override.items():
        if name not in out:
            raise ValueError(f"roles override: no trainable parameter named {name!r}; "
                             f"the names are {', '.join(out) or '(none)'}")
        check_role(role, f"roles override for {name!r}")
        out[name] = (role, out[name][1])
    return set(override)


def transformer_shapes(vocab: int, dim: int, layers: int, *, tied: bool = False,
                       mlp_ratio: int = 4) -> dict[str, list[tuple[int, ...]]]:
    """Parameter shapes by role of the proxies' GPT layout, without building it.

    Token table V x D; per layer a fused q/k/v (3D x D), an output projection (D x D), an MLP
    (rD x D, D x rD) and two norm gains (D); a final norm gain; an LM head V x D unless tied; no
    biases, no positional table (rotary positions).
    """
    for name, value in (("vocab", vocab), ("dim", dim), ("layers", layers), ("mlp_ratio", mlp_ratio)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "layers" else 1):
            raise ValueError(f"transformer_shapes: {name}={value!r} is not allowed; {name} must be a whole "
                             f"number >= {0 if name == 'layers' else 1}")
    hidden = mlp_ratio * dim
    return {
        "embed": [(vocab, dim)],
        "head": [] if tied else [(vocab, dim)],
        "matrix": [(3 * dim, dim), (dim, dim), (hidden, dim), (dim, hidden)] * layers,
        "vector": [(dim,)] * (2 * layers + 1),
    }

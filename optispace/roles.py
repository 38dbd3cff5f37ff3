"""Parameter roles: which part of a Transformer a tensor is, so each role can get its own chain.

- ``embed``: the weight of an ``nn.Embedding`` (a head tied to it is the same tensor, updated once,
  with this role)
- ``head``: the output projection onto the vocabulary: the weight of an ``nn.Linear`` named
  ``lm_head``, or of one mapping the largest embedding's width onto its number of rows (``D -> V``)
- ``matrix``: every other tensor of 2 or more dimensions
- ``vector``: the rest (biases, norm gains, scalars)

A bare list of tensors has no modules to look at, so its roles come from shapes alone (``matrix``
or ``vector``). Parameters that do not require a gradient get no role: they never take a step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

ROLES = ("embed", "head", "matrix", "vector")

Override = Mapping[str, str] | Callable[[str, nn.Parameter], str | None]


def check_role(role: str, where: str) -> None:
    """Raise ``ValueError`` unless ``role`` is one of :data:`ROLES`."""
    if role not in ROLES:
        raise ValueError(f"{where}: unknown role {role!r}; the roles are {', '.join(ROLES)}")


def shape_role(p: torch.Tensor) -> str:
    """The role a tensor gets from its shape alone."""
    return "matrix" if p.ndim >= 2 else "vector"


def _module_roles(model: nn.Module) -> dict[int, str]:
    """id(weight) -> ``embed`` or ``head``, from the modules that own the weights."""
    roles: dict[int, str] = {}
    tables = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    for table in tables:
        roles[id(table.weight)] = "embed"
    # Only the largest table is the vocabulary (a positional table is not projected onto).
    rows = max((t.num_embeddings for t in tables), default=0)
    shapes = {(t.embedding_dim, t.num_embeddings) for t in tables if t.num_embeddings == rows}
    for name, m in model.named_modules():
        if not isinstance(m, nn.Linear) or id(m.weight) in roles:
            continue
        if name.rsplit(".", 1)[-1] == "lm_head" or (m.in_features, m.out_features) in shapes:
            roles[id(m.weight)] = "head"
    return roles


def _named(model_or_params: nn.Module | Iterable) -> tuple[list[tuple[str, nn.Parameter]], dict[int, str]]:
    if isinstance(model_or_params, nn.Module):
        return list(model_or_params.named_parameters()), _module_roles(model_or_params)
    items = list(model_or_params)
    if all(isinstance(x, tuple) and len(x) == 2 for x in items):
        named = [(str(n), p) for n, p in items]
    else:
        named = [(str(i), p) for i, p in enumerate(items)]
    for name, p in named:
        if not isinstance(p, torch.Tensor):
            raise ValueError(f"roles: parameter {name!r} is a {type(p).__name__}, not a tensor")
    return named, {}


def assign_roles(
    model_or_params: nn.Module | Iterable, override: Override | None = None
) -> dict[str, tuple[str, nn.Parameter]]:
    """Every trainable parameter's name -> (role, parameter), in the model's parameter order.

    ``override`` changes the assignment: a mapping ``{name: role}`` (every name must exist), or a
    function ``(name, param) -> role`` returning ``None`` to keep the default. Names of a bare list
    of tensors are their positions (``"0"``, ``"1"``, ...); of a list of ``(name, tensor)`` pairs,
    those names.
    """
    named, module_roles = _named(model_or_params)
    out: dict[str, tuple[str, nn.Parameter]] = {}
    seen: set[int] = set()
    for name, p in named:
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        out[name] = (module_roles.get(id(p)) or shape_role(p), p)
    if override is None:
        return out
    if callable(override):
        for name, (_, p) in out.items():
            new = override(name, p)
            if new is not None:
                check_role(new, f"roles override for {name!r}")
                out[name] = (new, p)
        return out
    for name, role in override.items():
        if name not in out:
            raise ValueError(f"roles override: no trainable parameter named {name!r}; "
                             f"the names are {', '.join(out) or '(none)'}")
        check_role(role, f"roles override for {name!r}")
        out[name] = (role, out[name][1])
    return out


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

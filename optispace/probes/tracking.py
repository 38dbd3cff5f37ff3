"""What every probe keeps track of: how often each token has been seen, and which tensors play which role.

Token frequency is counted from the batches as they pass (``batch = (x, y)``, LongTensors of token
ids): a row of the embedding table is touched by the tokens of ``x``, a row of the LM head is the
logit of a target token, so the head's counts come from ``y``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch

TABLE_ROLES = ("embed", "head")


class TokenCounter:
    """Per token id: how many times it was seen, the step it was first seen and last seen (-1: never).

    Kept on the device the batches live on, so counting never waits for the GPU.
    """

    def __init__(self, vocab: int, device: torch.device | str = "cpu") -> None:
        self.counts = torch.zeros(vocab, dtype=torch.long, device=device)
        self.first_seen = torch.full((vocab,), -1, dtype=torch.long, device=device)
        self.last_seen = torch.full((vocab,), -1, dtype=torch.long, device=device)

    def update(self, step: int, tokens: torch.Tensor) -> torch.Tensor:
        """Count ``tokens`` as seen at ``step``; return the boolean mask of the ids present."""
        vocab = self.counts.numel()
        seen = torch.bincount(tokens.reshape(-1).to(self.counts.device), minlength=vocab)[:vocab]
        present = seen > 0
        self.counts += seen
        self.first_seen[present & (self.first_seen < 0)] = step
        self.last_seen[present] = step
        return present


def batch_tokens(role: str, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The token ids that select rows of ``role``'s table: inputs for ``embed``, targets for ``head``."""
    x, y = batch
    return y if role == "head" else x


def params_by_role(optimizer: torch.optim.Optimizer, roles: Mapping | None = None) -> dict[str, list]:
    """``{role: [parameters]}`` from the optimizer's param groups (key ``role``), else from ``roles``.

    ``roles`` is what ``optispace.roles.assign_roles`` returns: ``{name: (role, parameter)}``.
    """
    grouped: dict[str, list] = {}
    if all("role" in g for g in optimizer.param_groups):
        for group in optimizer.param_groups:
            grouped.setdefault(group["role"], []).extend(group["params"])
        return grouped
    if roles is None:
        raise ValueError("probes: the optimizer's param groups carry no 'role' key and no roles were given")
    for role, param in roles.values():
        grouped.setdefault(role, []).append(param)
    return grouped


def table_params(grouped: Mapping[str, list]) -> dict[str, torch.nn.Parameter]:
    """The token tables present: ``{"embed": weight, "head": weight}`` (a tied head appears as embed)."""
    tables = {}
    for role in TABLE_ROLES:
        params = grouped.get(role, [])
        if len(params) > 1:
            raise ValueError(f"probes: role {role!r} has {len(params)} tensors; a token table is one tensor")
        if params:
            tables[role] = params[0]
    return tables


def frequency_bucket(count: int) -> str:
    """Decade bucket of a token count: ``"0"``, ``"1-9"``, ``"10-99"``, ``"100-999"``, ..."""
    if count <= 0:
        return "0"
    decade = int(math.floor(math.log10(count)))
    return f"{10**decade}-{10 ** (decade + 1) - 1}"


def bucket_order(labels: Iterable[str]) -> list[str]:
    """Bucket labels sorted from rare to frequent."""
    return sorted(set(labels), key=lambda b: int(b.split("-")[0]))


def sampled(step: int, every: int) -> bool:
    """Whether ``step`` (1-based) is measured: every ``every``-th, starting with the first."""
    return (step - 1) % every == 0

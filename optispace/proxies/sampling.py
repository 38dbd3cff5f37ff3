"""Sampling continuations from a proxy, one token at a time through its KV cache."""

from __future__ import annotations

import torch

from optispace.proxies.model import GPT


@torch.no_grad()
def generate(model: GPT, prompts: torch.Tensor, new_tokens: int,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """``new_tokens`` ids after each row of ``prompts`` (B, T): drawn from softmax(logits) with
    ``generator`` (seeded, so a rerun draws the same), or the argmax (greedy) without one."""
    cache = model.new_cache()
    logits = model(prompts, cache=cache)[:, -1]
    drawn = []
    for i in range(new_tokens):
        if generator is None:
            token = logits.argmax(-1, keepdim=True)
        else:
            token = torch.multinomial(torch.softmax(logits.float(), -1), 1, generator=generator)
        drawn.append(token)
        if i + 1 < new_tokens:
            logits = model(token, cache=cache)[:, -1]
    return torch.cat(drawn, dim=1)

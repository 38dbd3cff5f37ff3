"""Sampling through the KV cache: greedy decoding matches recomputing the whole prefix each token,
and seeded sampling draws the same tokens twice."""

import torch

from optispace.proxies.model import GPT, ModelConfig
from optispace.proxies.sampling import generate

CFG = ModelConfig(vocab_size=40, dim=16, layers=2, heads=2, seq_len=16)


def test_cached_greedy_matches_full_recompute():
    torch.manual_seed(0)
    model = GPT(CFG).eval()
    prompts = torch.randint(40, (3, 5))
    cached = generate(model, prompts, 6)
    sequence = prompts
    with torch.no_grad():
        for _ in range(6):
            sequence = torch.cat((sequence, model(sequence)[:, -1].argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(cached, sequence[:, 5:])


def test_seeded_sampling_repeats_and_seeds_differ():
    torch.manual_seed(0)
    model = GPT(CFG).eval()
    prompts = torch.randint(40, (4, 3))
    draw = [generate(model, prompts, 8, torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert torch.equal(draw[0], draw[1]) and not torch.equal(draw[0], draw[2])

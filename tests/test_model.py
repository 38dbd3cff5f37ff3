"""The proxy model: shapes, causal masking, rotary positions, tying, and that every tier is a valid shape."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from optispace.proxies.model import GPT, ModelConfig, apply_rotary, rotary_tables
from optispace.proxies.tiers import TIERS

CFG = ModelConfig(vocab_size=97, dim=16, layers=2, heads=2, seq_len=12)


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(CFG).eval()


def test_shapes_and_loss(model):
    idx = torch.randint(0, CFG.vocab_size, (3, CFG.seq_len))
    logits = model(idx)
    assert logits.shape == (3, CFG.seq_len, CFG.vocab_size)
    loss = model(idx, idx)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(F.cross_entropy(logits.flatten(0, 1), idx.flatten()).item(), rel=1e-6)


def test_initial_loss_is_near_uniform(model):
    idx = torch.randint(0, CFG.vocab_size, (4, CFG.seq_len))
    assert model(idx, idx).item() == pytest.approx(torch.log(torch.tensor(97.0)).item(), abs=0.05)


@given(t=st.integers(0, CFG.seq_len - 2), seed=st.integers(0, 2**16))
def test_loss_at_t_ignores_later_tokens(model, t, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, CFG.vocab_size, (2, CFG.seq_len), generator=gen)
    y = torch.randint(0, CFG.vocab_size, (2, CFG.seq_len), generator=gen)
    changed = x.clone()
    changed[:, t + 1:] = (x[:, t + 1:] + 1 + torch.randint(0, CFG.vocab_size - 1, x[:, t + 1:].shape,
                                                             generator=gen)) % CFG.vocab_size

    def losses(inputs):
        return F.cross_entropy(model(inputs).transpose(1, 2), y, reduction="none")

    with torch.no_grad():
        before, after = losses(x), losses(changed)
    torch.testing.assert_close(before[:, : t + 1], after[:, : t + 1], rtol=0, atol=1e-6)
    assert not torch.allclose(before[:, t + 1:], after[:, t + 1:])  # later positions do see the change


def test_rotary_keeps_norms_and_depends_on_offset_only():
    cos, sin = rotary_tables(16, 8)
    q, k = torch.randn(8), torch.randn(8)

    def rot(v, pos):
        return apply_rotary(v.expand(16, 8), cos, sin)[pos]

    torch.testing.assert_close(rot(q, 5).norm(), q.norm())
    torch.testing.assert_close(rot(q, 7) @ rot(k, 3), rot(q, 12) @ rot(k, 8))


def test_untied_head_by_default_and_tied_as_option():
    names = dict(GPT(CFG).named_parameters())
    assert names["lm_head.weight"] is not names["embed.weight"]
    assert [n for n, p in names.items() if p.dim() == 2 and p.shape[0] == CFG.vocab_size] == \
        ["embed.weight", "lm_head.weight"]
    tied = GPT(ModelConfig(**{**CFG.__dict__, "tied": True}))
    assert tied.lm_head.weight is tied.embed.weight
    assert "lm_head.weight" not in dict(tied.named_parameters())  # counted once, as the embedding


def test_heads_must_split_width_evenly():
    with pytest.raises(ValueError, match="heads"):
        ModelConfig(vocab_size=10, dim=30, layers=1, heads=4, seq_len=8)


@pytest.mark.parametrize("name", list(TIERS))
def test_tiers_are_valid_shapes(name):
    tier = TIERS[name]
    assert tier.model.dim % tier.model.heads == 0
    assert tier.tokens >= tier.tokens_per_step
    assert tier.model.vocab_size > tier.model.dim  # token tables are V >> D, the regime the project studies
    assert tier.model.flops_per_token() > 0


@given(st.sampled_from([16, 32]), st.integers(1, 3), st.sampled_from([64, 300]), st.booleans())
def test_parameters_counts_every_parameter_of_the_model(dim, layers, vocab, tied):
    cfg = ModelConfig(vocab_size=vocab, dim=dim, layers=layers, heads=2, seq_len=8, tied=tied)
    assert cfg.parameters() == sum(p.numel() for p in GPT(cfg).parameters())


def test_output_mult_scales_the_logits():
    cfg = ModelConfig(vocab_size=64, dim=16, layers=1, heads=2, seq_len=8)
    idx = torch.randint(0, 64, (2, 8))
    torch.manual_seed(0)
    plain = GPT(cfg)(idx)
    torch.manual_seed(0)
    quarter = GPT(dataclasses.replace(cfg, output_mult=0.25))(idx)
    torch.testing.assert_close(quarter, plain * 0.25)

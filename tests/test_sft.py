"""SFT: the loss reads response targets only, new token rows start as stated, pairs encode with the
special tokens, and a run fine-tunes the cached start and measures forgetting."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from optispace.proxies import TIERS, TrainConfig, train
from optispace.proxies.model import INIT_STD
from optispace.proxies.sft import ChatTokens, add_token_rows, encode_pairs, response_loss


@given(st.integers(1, 3), st.integers(2, 6), st.integers(2, 9), st.integers(0, 2**31 - 1))
def test_response_loss_and_gradient_ignore_prompt_targets(batch, length, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, length, vocab, generator=g, requires_grad=True)
    targets = torch.randint(vocab, (batch, length), generator=g)
    mask = torch.rand(batch, length, generator=g) < 0.5
    mask[0, -1] = True  # at least one response token
    other = torch.where(mask, targets, torch.randint(vocab, (batch, length), generator=g))
    first = response_loss(logits, targets, mask)
    (grad_first,) = torch.autograd.grad(first, logits)
    second = response_loss(logits, other, mask)
    (grad_second,) = torch.autograd.grad(second, logits)
    assert torch.equal(first, second) and torch.equal(grad_first, grad_second)
    picked = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)[mask]
    torch.testing.assert_close(first, -picked.mean())


@given(st.integers(2, 20), st.integers(1, 8), st.integers(1, 4), st.sampled_from(["mean", "random"]),
       st.integers(0, 2**31 - 1))
def test_new_rows_are_appended_with_the_stated_init(vocab, dim, n, how, seed):
    weights = {"embed.weight": torch.randn(vocab, dim), "lm_head.weight": torch.randn(vocab, dim),
               "norm.weight": torch.ones(dim)}
    grown = add_token_rows(weights, n, how, torch.Generator().manual_seed(seed))
    assert grown["norm.weight"] is weights["norm.weight"]
    for name in ("embed.weight", "lm_head.weight"):
        old, new = grown[name][:vocab], grown[name][vocab:]
        assert grown[name].shape == (vocab + n, dim) and torch.equal(old, weights[name])
        if how == "mean":
            assert torch.equal(new, weights[name].mean(0).expand(n, -1))
    if how == "random":
        g = torch.Generator().manual_seed(seed)
        for name in ("embed.weight", "lm_head.weight"):  # drawn in this order from the seeded generator
            assert torch.equal(grown[name][vocab:], torch.randn(n, dim, generator=g) * INIT_STD)


class _Letters:
    """A stand-in tokenizer: one id per letter."""

    def token_to_id(self, c):
        return ord(c) - ord("a")


def test_pairs_encode_with_special_tokens_and_a_response_mask():
    tokens = ChatTokens(_Letters(), 26)
    rows, mask = encode_pairs([[1, 2], list(range(20))], [[3], list(range(20))], tokens, seq_len=12)
    p, r, e = 26, 27, 28
    assert rows[0].tolist() == [p, 1, 2, r, 3, e, e, e, e, e, e, e, e]
    assert mask[0].tolist() == [False] * 3 + [True, True] + [False] * 7  # targets 3 and the end token
    assert rows[1].tolist() == [p, 16, 17, 18, 19, r, 0, 1, 2, 3, 4, 5, 6]  # prompt tail, response head
    assert mask[1].tolist() == [False] * 5 + [True] * 7
    assert tokens.spell(["abc"]) == [[0, 1, 2]]


def test_sft_run_fine_tunes_the_cached_start_and_measures_forgetting(text_corpus):
    corpus, cache = text_corpus
    cfg = TrainConfig(recipe="adamw", proxy="tiny", regime="sft", data=str(corpus), cache_dir=str(cache),
                      lr=3e-3, eval_every=10, eval_batches=2, tokens=30 * TIERS["tiny"].tokens_per_step)
    record = train(cfg, progress=False)
    assert record.regime == "sft" and record.objective == "response_val_loss"
    assert record.config["model"]["vocab_size"] == TIERS["tiny"].model.vocab_size + 3
    assert record.curve[-1]["val_loss"] < record.curve[0]["val_loss"] and record.final_val_loss is not None
    m = record.metrics
    assert m["forgetting"] == m["pretrain_val_loss_end"] - m["pretrain_val_loss_start"]
    assert m["pretrain_val_loss_start"] < 6.0  # the start is pretrained: below ln 515 = 6.24
    assert list(cache.glob("runs/pretrain-tiny-*.pt"))



def test_sft_resumes_bit_for_bit(text_corpus, tmp_path):
    corpus, cache = text_corpus
    cfg = TrainConfig(recipe="ember", proxy="tiny", regime="sft", data=str(corpus), cache_dir=str(cache),
                      new_rows="random", eval_every=3, eval_batches=1,
                      tokens=6 * TIERS["tiny"].tokens_per_step)
    full = train(cfg, progress=False)

    def interrupt(step, tokens, value):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, on_eval=interrupt, progress=False, checkpoint=tmp_path / "sft.pt")
    resumed = train(cfg, progress=False, resume=tmp_path / "sft.pt")
    assert [p["val_loss"] for p in resumed.curve] == [p["val_loss"] for p in full.curve]
    assert resumed.metrics == full.metrics

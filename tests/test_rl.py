"""RL: group-normalised advantages, the clipped GRPO objective, completion masks, and a run."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from optispace.proxies import TIERS, TrainConfig, train
from optispace.proxies.rl import completion_mask, group_advantages, grpo_loss, warmup_config

rewards = st.lists(st.lists(st.floats(0, 1), min_size=2, max_size=8), min_size=1, max_size=4).filter(
    lambda groups: len({len(g) for g in groups}) == 1)


@given(rewards, st.floats(-100, 100))
def test_advantages_have_zero_mean_per_group_and_ignore_a_constant(groups, constant):
    r = torch.tensor(groups, dtype=torch.float64)
    a = group_advantages(r)
    torch.testing.assert_close(a.mean(-1), torch.zeros(len(groups), dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(group_advantages(r + constant), a, atol=1e-6, rtol=1e-6)


def test_equal_rewards_give_zero_advantage():
    assert torch.equal(group_advantages(torch.ones(2, 4)), torch.zeros(2, 4))


def test_grpo_gradient_at_ratio_one_and_clipping():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -0.5]], requires_grad=True)
    adv, mask = torch.tensor([1.0, -2.0]), torch.tensor([[True, True, False], [True, False, False]])
    loss = grpo_loss(logp, logp.detach(), adv, mask, clip=0.2)
    (grad,) = torch.autograd.grad(loss, logp)
    # at ratio 1: -mean_i A_i / |o_i| d(sum_t logp)
    assert torch.equal(grad, torch.tensor([[-0.25, -0.25, 0.0], [1.0, 0.0, 0.0]]))
    old = logp.detach() - 1.0  # ratio e > 1 + clip: no gradient for a positive advantage, some for a negative
    (grad,) = torch.autograd.grad(grpo_loss(logp, old, adv, mask, clip=0.2), logp)
    assert torch.equal(grad[0], torch.zeros(3)) and grad[1, 0] > 0


def test_kl_term_vanishes_at_the_reference_and_pulls_towards_it():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    mask, adv = torch.ones(1, 2, dtype=torch.bool), torch.zeros(1)
    assert grpo_loss(logp, logp.detach(), adv, mask, 0.2, kl=0.5, ref_logp=logp.detach()).item() == 0.0
    loss = grpo_loss(logp, logp.detach(), adv, mask, 0.2, kl=0.5, ref_logp=logp.detach() - 1.0)
    (grad,) = torch.autograd.grad(loss, logp)
    assert loss.item() > 0 and (grad > 0).all()  # lowering logp towards the reference lowers the loss


def test_completion_mask_ends_after_the_first_end_token():
    completions = torch.tensor([[5, 9, 6, 9], [9, 5, 5, 5], [5, 5, 5, 5]])
    assert completion_mask(completions, end=9).tolist() == [
        [True, True, False, False], [True, False, False, False], [True, True, True, True]]


@pytest.mark.parametrize("kl", [0.0, 0.1])
def test_rl_run_is_bit_identical_on_rerun(text_corpus, kl):
    corpus, cache = text_corpus
    cfg = TrainConfig(recipe="adamw", proxy="tiny", regime="rl", data=str(corpus), cache_dir=str(cache),
                      lr=1e-3, group_size=4, kl=kl, eval_every=3, eval_batches=1,
                      tokens=6 * TIERS["tiny"].tokens_per_step)
    first, second = train(cfg, progress=False), train(cfg, progress=False)
    assert _points(first) == _points(second)
    assert any(p["sampled_reward"] > 0 for p in first.curve)  # the warm-up policy earns rewards to compare
    assert first.objective == "reward_error" and 0 <= first.metrics["reward"] <= 1
    assert first.final_val_loss == 1 - first.curve[-1]["reward"] == 1 - first.metrics["reward"]
    assert list(cache.glob("runs/sft-tiny-*.pt"))


def _points(record):
    return [{k: v for k, v in p.items() if k != "elapsed_s"} for p in record.curve]


def test_rl_resumes_inside_a_batch_of_samples_bit_for_bit(text_corpus, tmp_path):
    corpus, cache = text_corpus
    cfg = TrainConfig(recipe="adamw", proxy="tiny", regime="rl", data=str(corpus), cache_dir=str(cache),
                      lr=1e-3, group_size=4, updates_per_batch=2, eval_every=3, eval_batches=1,
                      tokens=6 * TIERS["tiny"].tokens_per_step)
    full = train(cfg, progress=False)

    class Stop(Exception):
        pass

    def stop(step, tokens, value):
        raise Stop

    with pytest.raises(Stop):  # the checkpoint at step 3 sits inside the samples of steps 3 and 4
        train(cfg, on_eval=stop, progress=False, checkpoint=tmp_path / "rl.pt")
    assert _points(train(cfg, progress=False, resume=tmp_path / "rl.pt")) == _points(full)


def test_format_steps_set_the_length_of_the_cached_warm_up(text_corpus):
    corpus, cache = text_corpus
    cfg = TrainConfig(recipe="adamw", proxy="tiny", regime="rl", data=str(corpus), cache_dir=str(cache),
                      lr=1e-3, group_size=4, format_steps=7, eval_every=2, eval_batches=1,
                      tokens=2 * TIERS["tiny"].tokens_per_step)
    assert warmup_config(cfg).tokens == 7 * TIERS["tiny"].tokens_per_step
    before = set(cache.glob("runs/sft-tiny-*.pt"))
    short = train(cfg, progress=False)
    assert len(set(cache.glob("runs/sft-tiny-*.pt")) - before) == 1  # its own start, cached apart
    assert _points(train(cfg, progress=False)) == _points(short)

"""The RL regime: a policy learns a verifiable task from its own samples and an exact reward.

The policy is the pretrained proxy first fitted briefly by SFT on the task's format (a cached run,
``optispace.proxies.start``). Each step draws prompts, samples G completions of each (seeded, through
the KV cache), scores them exactly, and takes a GRPO update (Shao et al. 2024, DeepSeekMath):
advantages normalised within each group of G, the clipped importance ratio, an optional KL penalty to
the starting policy (the k3 estimator). Each batch of samples serves ``updates_per_batch`` updates
(GRPO's mu; 1 by default, as in TRL, where the ratio is 1 in value and the clip never binds). Objective:
one minus the mean exact-match reward of greedy answers to held-out prompts; the curve also carries the
reward.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np
import torch

from optispace.errors import UserError
from optispace.proxies.objectives import OBJECTIVES
from optispace.proxies.pairs import spread
from optispace.proxies.regime import Forward, precision
from optispace.proxies.sampling import generate
from optispace.proxies.sft import grown_from, text_corpus
from optispace.proxies.start import cached_run
from optispace.proxies.tasks import TASKS

if TYPE_CHECKING:
    from optispace.proxies.tiers import Tier
    from optispace.proxies.train import TrainConfig

ADVANTAGE_EPS = 1e-4  # keeps a group whose rewards are all equal at advantage 0 (TRL's value)
RL_SHARE = 4  # the default RL budget is a quarter of the tier's pretraining budget
WARMUP_LR = 3e-3  # the warm-up SFT: adamw at this lr for ``format_steps`` steps (800 by default: on the
# tiny tier that takes `reverse` to a sampled reward of about 0.4, so most groups of 8 have rewards to
# compare; a larger tier learns the format faster and needs fewer)


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """(r - mean_g r) / (std_g r + eps) within each row (one group of samples of one prompt)."""
    mean = rewards.mean(dim=-1, keepdim=True)
    std = rewards.std(dim=-1, keepdim=True, unbiased=False)
    return (rewards - mean) / (std + ADVANTAGE_EPS)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) at each position, in fp32."""
    return torch.log_softmax(logits.float(), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              clip: float, kl: float = 0.0, ref_logp: torch.Tensor | None = None) -> torch.Tensor:
    """-mean_i (1/|o_i|) sum_t [min(rho A_i, clip(rho, 1-e, 1+e) A_i) - kl * (exp(d) - d - 1)],
    rho = exp(logp - old_logp), d = ref_logp - logp, over the completion tokens ``mask`` (GRPO)."""
    ratio = torch.exp(logp - old_logp)
    a = advantages.unsqueeze(-1)
    objective = torch.minimum(ratio * a, ratio.clamp(1 - clip, 1 + clip) * a)
    if kl:
        d = ref_logp - logp
        objective = objective - kl * (torch.exp(d) - d - 1)
    per_sequence = (objective * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return -per_sequence.mean()


def completion_mask(completions: torch.Tensor, end: int) -> torch.Tensor:
    """True on each completion token up to and including its first ``end`` token."""
    ended = (completions == end).long().cumsum(-1)
    return (ended - (completions == end).long()) == 0


def warmup_config(cfg: TrainConfig) -> TrainConfig:
    """The cached SFT run that fits the policy to the task's format before RL."""
    from optispace.proxies.train import TrainConfig

    return TrainConfig(recipe="adamw", proxy=cfg.proxy, regime="sft", pairs=f"task:{cfg.task}", init=cfg.init,
                       lr=WARMUP_LR, tokens=cfg.format_steps * cfg.tier.tokens_per_step,
                       new_rows=cfg.new_rows, data=cfg.data, device=cfg.device, cache_dir=cfg.cache_dir,
                       shape=cfg.shape)


class RL:
    """GRPO on a verifiable task (see the module docstring)."""

    name = "rl"
    objective = OBJECTIVES["rl"]

    def __init__(self, cfg: TrainConfig, tier: Tier, device: torch.device) -> None:
        _, self.data, self.tokens = text_corpus(cfg, tier)
        self.task, self.cfg, self.device = TASKS[cfg.task], cfg, device
        self.train_problems, held_out = self.task.split
        self.eval_problems = spread(held_out, cfg.eval_batches * tier.batch_size)
        self.answer_tokens = len(self.task.solve(self.train_problems[0])) + 1  # and the end token
        self.train_prompts = self._prompts(self.train_problems)
        self.eval_prompts = self._prompts(self.eval_problems)
        length = self.train_prompts.shape[1] + self.answer_tokens
        if length > tier.model.seq_len:
            raise UserError(f"task {cfg.task}: prompt and answer need {length} tokens; tier {cfg.proxy} "
                            f"has a context of {tier.model.seq_len}")
        self.groups = max(1, tier.batch_size // cfg.group_size)
        self.model = grown_from(cached_run(warmup_config(cfg), self.data.info), tier, cfg.seed, device)
        self.reference = copy.deepcopy(self.model).requires_grad_(False) if cfg.kl else None
        self.drawn_at, self.samples, self.sampled_reward = 0, (), 0.0
        self.default_tokens = tier.tokens // RL_SHARE

    def _prompts(self, problems: list[str]) -> torch.Tensor:
        spelled = self.tokens.spell(problems)
        return torch.tensor([[self.tokens.prompt, *ids, self.tokens.response] for ids in spelled])

    def answers(self, completions: torch.Tensor) -> list[str | None]:
        return [self.tokens.read(row) for row in completions.tolist()]

    def rewards(self, problems: list[str], completions: torch.Tensor) -> torch.Tensor:
        """Exact-match reward of each completion."""
        answers = self.answers(completions)
        return torch.tensor([self.task.reward(p, a) for p, a in zip(problems, answers, strict=True)],
                            dtype=torch.float64)

    def batch(self, step: int) -> tuple[torch.Tensor, ...]:
        """The samples of the block of ``updates_per_batch`` steps holding ``step``, drawn at its first
        step (see ``draw``) and reused by the rest, so later updates see an importance ratio != 1."""
        first = step - (step - 1) % self.cfg.updates_per_batch
        if self.drawn_at != first:
            self.samples, self.drawn_at = self.draw(first), first
        return self.samples

    @torch.no_grad()
    def draw(self, step: int) -> tuple[torch.Tensor, ...]:
        """Prompts drawn by (seed, step), G sampled completions each, and what the loss needs: inputs,
        targets, completion mask, advantages, the sampling policy's log-probs (empty when each batch
        serves one update), the reference policy's (empty without a KL term)."""
        rng = np.random.default_rng((self.cfg.seed, step))
        picks = rng.integers(0, len(self.train_problems), size=self.groups)
        g = self.cfg.group_size
        prompts = self.train_prompts[torch.from_numpy(picks)].repeat_interleave(g, 0).to(self.device)
        generator = torch.Generator(self.device).manual_seed(int(rng.integers(2**62)))
        with precision(self.device):
            completions = generate(self.model, prompts, self.answer_tokens, generator)
            sequences = torch.cat((prompts, completions), dim=1)
            x, y = sequences[:, :-1], sequences[:, 1:]
            # with one update per batch the sampling policy is the current one: the loss detaches its
            # own log-probs instead of a forward pass here
            reused = self.cfg.updates_per_batch > 1
            old = token_logprobs(self.model(x), y) if reused else torch.empty(0)
            ref = torch.empty(0) if self.reference is None else token_logprobs(self.reference(x), y)
        problems = [self.train_problems[i] for i in picks for _ in range(g)]
        rewards = self.rewards(problems, completions)
        self.sampled_reward = float(rewards.mean())
        advantages = group_advantages(rewards.view(self.groups, g)).flatten().float().to(self.device)
        mask = torch.zeros_like(y, dtype=torch.bool)
        mask[:, prompts.shape[1] - 1:] = completion_mask(completions, self.tokens.end)
        return x, y, mask, advantages, old, ref

    def loss(self, forward: Forward, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, y, mask, advantages, old, ref = batch
        logp = token_logprobs(forward(x), y)
        old = old if old.numel() else logp.detach()
        return grpo_loss(logp, old, advantages, mask, self.cfg.clip, self.cfg.kl, ref)

    def state_dict(self) -> dict:
        """The samples in use, so a run resumed inside a block reuses them."""
        return {"drawn_at": self.drawn_at, "samples": self.samples, "sampled_reward": self.sampled_reward}

    def load_state_dict(self, state: dict) -> None:
        self.drawn_at, self.sampled_reward = state["drawn_at"], state["sampled_reward"]
        self.samples = tuple(t.to(self.device) for t in state["samples"])

    def held_out_reward(self) -> float:
        """Mean exact-match reward of greedy answers to the held-out prompts evaluated."""
        completions = generate(self.model, self.eval_prompts.to(self.device), self.answer_tokens)
        return float(self.rewards(self.eval_problems, completions).mean())

    def evaluate(self, forward: Forward) -> dict[str, float]:
        """The held-out reward (and its error, the objective), and the mean reward of the latest samples."""
        reward = self.held_out_reward()
        return {"reward_error": 1.0 - reward, "reward": reward, "sampled_reward": self.sampled_reward}

    def finish(self, forward: Forward) -> dict:
        return {"reward": self.held_out_reward()}

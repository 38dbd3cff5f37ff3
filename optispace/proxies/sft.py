"""The supervised fine-tuning regime: a pretrained proxy learns prompt -> response pairs.

It starts from pretrained weights (``optispace.proxies.start``), grows the vocabulary by three special
tokens (prompt, response, end) whose embedding and head rows are new and cold, and trains on
``<prompt> p <response> r <end>`` sequences with the loss on the response tokens only. Objective: the
response val loss on held-out pairs; ``metrics`` adds forgetting, the change in pretraining val loss
from the starting weights.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from optispace.errors import UserError
from optispace.proxies.corpus import TextSource
from optispace.proxies.data import (
    TokenData,
    cache_root,
    check_fits,
    load_text,
    text_source,
    val_batches,
)
from optispace.proxies.model import GPT, INIT_STD, ModelConfig
from optispace.proxies.objectives import OBJECTIVES
from optispace.proxies.pairs import Pair, load_pairs, spread
from optispace.proxies.regime import Forward, Stateless, mean_loss, precision
from optispace.proxies.start import start_weights

if TYPE_CHECKING:
    from optispace.proxies.tiers import Tier
    from optispace.proxies.train import TrainConfig

SPECIALS = ("<|prompt|>", "<|response|>", "<|end|>")
IGNORE = -100  # target id that cross-entropy skips
TABLES = ("embed.weight", "lm_head.weight")
SFT_SHARE = 4  # the default SFT budget is a quarter of the tier's pretraining budget


class ChatTokens:
    """The corpus's BPE tokenizer plus the special tokens, numbered after the tier's vocabulary."""

    def __init__(self, tokenizer, vocab_size: int) -> None:
        self.tokenizer = tokenizer
        self.prompt, self.response, self.end = range(vocab_size, vocab_size + len(SPECIALS))

    def encode(self, texts: list[str]) -> list[list[int]]:
        """BPE ids of each text."""
        return [e.ids for e in self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)]

    def spell(self, texts: list[str]) -> list[list[int]]:
        """One token per character (the tokenizer's single-byte tokens): the RL tasks' token space."""
        ids = [[self.tokenizer.token_to_id(c) for c in text] for text in texts]
        if any(i is None for row in ids for i in row):
            raise UserError("task: a task character has no single-character token in this corpus's tokenizer")
        return ids

    def read(self, ids: list[int]) -> str | None:
        """The text of sampled ids up to the end token; None when there is no end, or another special."""
        if self.end not in ids:
            return None
        answer = ids[:ids.index(self.end)]
        pieces = [self.tokenizer.id_to_token(i) if i < self.prompt else None for i in answer]
        return None if None in pieces else "".join(pieces)


def response_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over response positions, sum_i m_i CE_i / sum_i m_i; other targets are unread."""
    targets = targets.masked_fill(~mask, IGNORE)
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE)


def add_token_rows(weights: dict[str, torch.Tensor], n: int, how: str,
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``weights`` with ``n`` rows appended to the embedding and the head: each the mean of the existing
    rows (``mean``), or N(0, INIT_STD^2), the model's own initialisation (``random``)."""
    grown = dict(weights)
    for name in TABLES:
        old = weights[name]
        if how == "mean":
            new = old.mean(0, keepdim=True).expand(n, -1)
        else:
            new = torch.randn(n, old.shape[1], generator=generator) * INIT_STD
        grown[name] = torch.cat((old, new.to(old.dtype)))
    return grown


def encode_pairs(prompts: list[list[int]], responses: list[list[int]], tokens: ChatTokens,
                 seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``<prompt> p <response> r <end>`` (seq_len + 1 ids, padded with the end token) and the mask
    of the targets that are response tokens (seq_len). A long prompt keeps its last seq_len // 2 - 2
    tokens; a long response its first ones, then without its end token."""
    rows = np.full((len(prompts), seq_len + 1), tokens.end, dtype=np.int64)
    mask = np.zeros((len(prompts), seq_len), dtype=bool)
    keep = seq_len // 2 - 2
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        head = [tokens.prompt, *p[max(0, len(p) - keep):], tokens.response]
        ids = head + [*r, tokens.end][:seq_len + 1 - len(head)]
        rows[i, :len(ids)] = ids
        mask[i, len(head) - 1:len(ids) - 1] = True
    return torch.from_numpy(rows), torch.from_numpy(mask)


def grown_model(cfg: TrainConfig, tier: Tier, corpus: dict, device: torch.device) -> GPT:
    """The pretrained model with the special tokens' rows added (``cfg.new_rows``), on ``device``."""
    weights = add_token_rows(start_weights(cfg, tier, corpus), len(SPECIALS), cfg.new_rows,
                             torch.Generator().manual_seed(cfg.seed))
    return grown_from(weights, tier, cfg.seed, device)


def grown_from(weights: dict[str, torch.Tensor], tier: Tier, seed: int, device: torch.device) -> GPT:
    """The tier's model with the special tokens' rows, holding ``weights``, on ``device``."""
    torch.manual_seed(seed)  # training a cached start run drew from the global generator
    model = GPT(grown_config(tier.model))
    model.load_state_dict(weights)
    return model.to(device)


def text_corpus(cfg: TrainConfig, tier: Tier) -> tuple[TextSource, TokenData, ChatTokens]:
    """The text behind ``cfg.data``, its tokens and its tokenizer with the special tokens; a user error
    for token data (shards, zipf), which has no tokenizer to write prompts with."""
    source = text_source(cfg.data)
    if source is None:
        raise UserError(f"regime {cfg.regime}: data {cfg.data} is token ids without a tokenizer; this regime "
                        "needs text data (stdlib or text files) to write its prompts")
    data, tokenizer = load_text(source, tier.model.vocab_size, cfg.cache_dir)
    check_fits(data, tier.model.seq_len)
    return source, data, ChatTokens(tokenizer, tier.model.vocab_size)


def grown_config(model: ModelConfig) -> ModelConfig:
    return replace(model, vocab_size=model.vocab_size + len(SPECIALS))


class SFT(Stateless):
    """Fine-tuning on prompt/response pairs from pretrained weights (see the module docstring)."""

    name = "sft"
    objective = OBJECTIVES["sft"]

    def __init__(self, cfg: TrainConfig, tier: Tier, device: torch.device) -> None:
        source, self.data, self.tokens = text_corpus(cfg, tier)
        self.seq_len, self.batch_size = tier.model.seq_len, tier.batch_size
        cache = cache_root(cfg.cache_dir) / "pairs" / f"{self.data.info['fingerprint']}.json"
        train, held_out = load_pairs(cfg.pairs, source, cache)
        encode = self.tokens.spell if str(cfg.pairs).startswith("task:") else self.tokens.encode
        self.rows, self.mask = self._encode(train, encode)
        val_rows, val_mask = self._encode(spread(held_out, cfg.eval_batches * self.batch_size), encode)
        self.val = [(val_rows[i:i + self.batch_size].to(device), val_mask[i:i + self.batch_size].to(device))
                    for i in range(0, len(val_rows), self.batch_size)]
        self.model = grown_model(cfg, tier, self.data.info, device)
        self.seed, self.device, self.default_tokens = cfg.seed, device, tier.tokens // SFT_SHARE
        self.pretrain_val = [(x.to(device), y.to(device)) for x, y in
                             val_batches(self.data, cfg.eval_batches, self.batch_size, self.seq_len)]
        with torch.no_grad(), precision(device):
            self.pretrain_start = mean_loss(self.model, self.pretrain_val)

    def _encode(self, pairs: list[Pair], encode) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = encode([p.prompt for p in pairs])
        return encode_pairs(prompts, encode([p.response for p in pairs]), self.tokens, self.seq_len)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pairs drawn by a generator seeded by (seed, step): inputs, targets, response mask."""
        picks = torch.from_numpy(np.random.default_rng((self.seed, step)).integers(0, len(self.rows),
                                                                                   size=self.batch_size))
        rows, mask = self.rows[picks].to(self.device), self.mask[picks].to(self.device)
        return rows[:, :-1], rows[:, 1:], mask

    def loss(self, forward: Forward, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, y, mask = batch
        return response_loss(forward(x), y, mask)

    def evaluate(self, forward: Forward) -> dict[str, float]:
        """Response val loss: the mean over every response token of the held-out pairs evaluated."""
        total, count = 0.0, 0
        for rows, mask in self.val:
            n = int(mask.sum())
            total += response_loss(forward(rows[:, :-1]), rows[:, 1:], mask).item() * n
            count += n
        return {"response_val_loss": total / count}

    def finish(self, forward: Forward) -> dict:
        """Forgetting: pretraining val loss at the end minus at the start (positive: forgot)."""
        end = mean_loss(forward, self.pretrain_val)
        return {"pretrain_val_loss_start": self.pretrain_start, "pretrain_val_loss_end": end,
                "forgetting": end - self.pretrain_start}

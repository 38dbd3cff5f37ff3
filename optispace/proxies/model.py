"""A GPT-style decoder for the proxies, readable in one sitting.

Pre-norm blocks (RMSNorm), causal self-attention through ``F.scaled_dot_product_attention`` with rotary
position embeddings (RoPE, Su et al. 2021: position information without parameters, so the only
``nn.Embedding`` is the token table), a GELU MLP, and an LM head named ``lm_head``: its own matrix by
default, the embedding tensor when ``tied``. Initialisation follows GPT-2: N(0, 0.02), residual output
projections scaled by 1/sqrt(2 * layers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

INIT_STD = 0.02
ROPE_BASE = 10_000.0
NORM_EPS = 1e-6


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the decoder: vocabulary, width, depth, heads, context length."""

    vocab_size: int
    dim: int
    layers: int
    heads: int
    seq_len: int
    tied: bool = False
    mlp_ratio: int = 4
    #: Factor on the logits: 1, or base width / width for muP's readout multiplier (Yang et al. 2022,
    #: "Tensor Programs V": the readout scaled by 1/width, relative to a base width).
    output_mult: float = 1.0

    def __post_init__(self) -> None:
        if self.dim % self.heads or (self.dim // self.heads) % 2:
            raise ValueError(f"ModelConfig: dim {self.dim} must split into {self.heads} heads of even size "
                             "(rotary embeddings rotate pairs of channels)")

    def parameters(self) -> int:
        """Parameters of ``GPT(self)``: V*D embedding (+ V*D head unless tied), per layer 4D^2 + 2rD^2
        matrices and two norm gains of D, and the final norm's D."""
        per_layer = (4 + 2 * self.mlp_ratio) * self.dim**2 + 2 * self.dim
        tables = self.vocab_size * self.dim * (1 if self.tied else 2)
        return tables + self.layers * per_layer + self.dim

    def flops_per_token(self) -> int:
        """Training FLOPs per token, 6N + 12*L*T*D over non-embedding weights N (PaLM, appendix B)."""
        per_layer = (4 + 2 * self.mlp_ratio) * self.dim**2
        head = self.vocab_size * self.dim
        return 6 * (self.layers * per_layer + head) + 12 * self.layers * self.seq_len * self.dim


def rotary_tables(seq_len: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of angle t * base^(-2i/head_dim), shaped (seq_len, head_dim / 2)."""
    inv_freq = ROPE_BASE ** -(torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + half) of ``x`` (..., T, head_dim) by the position's angles."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos[: x.shape[-2]].to(x.dtype), sin[: x.shape[-2]].to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class LayerCache:
    """One layer's keys and values of the positions decoded so far (a KV cache), shaped (B, H, T, Dh)."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this call's keys and values; return all of them."""
        self.k = k if self.k is None else torch.cat((self.k, k), dim=2)
        self.v = v if self.v is None else torch.cat((self.v, v), dim=2)
        return self.k, self.v


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: LayerCache | None = None) -> torch.Tensor:
        """``x`` (batch, time, dim) -> (batch, time, dim); each head attends over head_dim channels.

        With a ``cache`` holding ``start`` earlier positions, ``x`` is the next token(s): they sit at
        positions ``start...`` and attend to the whole cached prefix.
        """
        q, k, v = rearrange(self.qkv(x), "b t (qkv h d) -> qkv b h t d", qkv=3, h=self.heads)
        start = 0 if cache is None else cache.length
        if start:
            cos, sin = cos[start:], sin[start:]
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.extend(k, v)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=not start)
        return self.proj(rearrange(y, "b h t d -> b t (h d)"))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.dim, cfg.mlp_ratio * cfg.dim, bias=False)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.dim, eps=NORM_EPS)
        self.attn = Attention(cfg)
        self.mlp_norm = nn.RMSNorm(cfg.dim, eps=NORM_EPS)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: LayerCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, cache)
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    """``GPT(cfg)(idx)`` gives logits (B, T, V); ``GPT(cfg)(idx, targets)`` the mean cross-entropy.
    With ``cache`` (one ``LayerCache`` per block, from ``new_cache``) the keys and values of ``idx`` are
    kept, and a later call with one token per row continues after them (sampling, Pope et al. 2022)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = nn.RMSNorm(cfg.dim, eps=NORM_EPS)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        cos, sin = rotary_tables(cfg.seq_len, cfg.dim // cfg.heads)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self._init_weights()
        if cfg.tied:
            self.lm_head.weight = self.embed.weight

    def _init_weights(self) -> None:
        residual_std = INIT_STD / math.sqrt(2 * self.cfg.layers)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=residual_std if name.endswith("proj.weight") else INIT_STD)

    def new_cache(self) -> list[LayerCache]:
        return [LayerCache() for _ in self.blocks]

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: list[LayerCache] | None = None) -> torch.Tensor:
        x = self.embed(idx)
        for i, block in enumerate(self.blocks):
            x = block(x, self.cos, self.sin, None if cache is None else cache[i])
        logits = self.lm_head(self.norm(x))
        if self.cfg.output_mult != 1.0:
            logits = logits * self.cfg.output_mult
        if targets is None:
            return logits
        # the loss in fp32 even under bf16 autocast: a softmax over a large vocabulary needs the range
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())

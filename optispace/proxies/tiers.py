"""Named proxy sizes, from a seconds-long CPU test model to the GPT-2 small shape of the
modded-nanogpt optimization track."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from optispace.proxies.model import ModelConfig

#: What a shape override may set: the model's fields and the batch (``optispace.search`` sweeps them).
SHAPE_KEYS = ("vocab_size", "dim", "layers", "heads", "seq_len", "batch_size", "output_mult")


@dataclass(frozen=True)
class Tier:
    """A model shape, the batch it trains on (batch_size sequences of model.seq_len tokens) and a
    default token budget."""

    model: ModelConfig
    batch_size: int
    tokens: int
    note: str

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.model.seq_len


TIERS: dict[str, Tier] = {
    "tiny": Tier(ModelConfig(vocab_size=512, dim=32, layers=1, heads=2, seq_len=32),
                 batch_size=8, tokens=200 * 8 * 32, note="seconds on CPU; for tests"),
    "small": Tier(ModelConfig(vocab_size=8192, dim=128, layers=2, heads=4, seq_len=128),
                  batch_size=16, tokens=2_000_000, note="minutes on 2 CPU cores"),
    "medium": Tier(ModelConfig(vocab_size=16384, dim=256, layers=4, heads=4, seq_len=256),
                   batch_size=32, tokens=20_000_000, note="slow on CPU, minutes on a GPU"),
    "base": Tier(ModelConfig(vocab_size=50304, dim=768, layers=12, heads=12, seq_len=1024),
                 batch_size=16, tokens=200_000_000, note="GPT-2 small shape, for GPU runs"),
}


def shaped(tier: Tier, shape: Mapping[str, float]) -> Tier:
    """``tier`` with the fields ``shape`` names replaced (``SHAPE_KEYS``); ``ValueError`` for others.

    The budget stays the tier's: a run gives its own with ``TrainConfig.tokens``.
    """
    unknown = sorted(set(shape) - set(SHAPE_KEYS))
    if unknown:
        raise ValueError(f"unknown shape key(s) {', '.join(unknown)}; allowed: {', '.join(SHAPE_KEYS)}")
    fields = {k: float(v) if k == "output_mult" else int(v) for k, v in shape.items() if k != "batch_size"}
    model = dataclasses.replace(tier.model, **fields)
    return dataclasses.replace(tier, model=model, batch_size=int(shape.get("batch_size", tier.batch_size)))

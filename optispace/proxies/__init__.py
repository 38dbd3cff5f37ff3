"""Transformer proxies: a GPT-style model in named tiers, real local text (or shards, or a Zipfian
source) as tokens, and a reproducible training loop.

    from optispace.proxies import TIERS, TrainConfig, RunRecord, train
"""

from optispace.proxies.tiers import TIERS
from optispace.proxies.train import RunRecord, TrainConfig, train

__all__ = ["TIERS", "RunRecord", "TrainConfig", "train"]

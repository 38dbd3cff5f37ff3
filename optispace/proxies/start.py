"""Where the SFT and RL regimes start: a given checkpoint, or a run trained once and cached.

A cached run is keyed by a fingerprint of everything its weights depend on (its config, the corpus, the
torch version, the bytes of its own starting checkpoint), like the token shards, so every trial of a
study fine-tunes the same weights. Concurrent builders are safe: each trains into a private file, and
the first to finish links it into place (later ones find it there and discard theirs).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from optispace.errors import UserError
from optispace.proxies.data import cache_root

if TYPE_CHECKING:
    from optispace.proxies.tiers import Tier
    from optispace.proxies.train import TrainConfig

START_FORMAT = 1  # bump when a cached run's recipe changes, so old caches are not reused
BASE_RECIPE = "adamw"  # the cached pretraining run: this recipe at its lr, the tier's default budget
# Settings that do not change a cached run's weights. A cached run is a pretrain or sft run, where
# format_steps does nothing (an rl run turns it into its warm-up's tokens, which are in the key).
_NOT_IDENTITY = ("device", "compile", "cache_dir", "parallel", "format_steps")


def start_weights(cfg: TrainConfig, tier: Tier, corpus: dict) -> dict[str, torch.Tensor]:
    """The pretrained weights (of ``tier``'s model) a fine-tune of ``cfg`` starts from: ``cfg.init``, else
    the cached pretraining run of the tier on the same data."""
    if cfg.init is not None:
        return load_checkpoint_model(Path(cfg.init), tier, corpus)
    from optispace.proxies.train import TrainConfig

    base = TrainConfig(recipe=BASE_RECIPE, proxy=cfg.proxy, data=cfg.data, device=cfg.device,
                       cache_dir=cfg.cache_dir, shape=cfg.shape)
    return cached_run(base, corpus)


def load_checkpoint_model(path: Path, tier: Tier, corpus: dict) -> dict[str, torch.Tensor]:
    """The model weights of a training checkpoint, refused unless it is the tier's shape and vocabulary
    and (when it says) was trained on the same corpus."""
    if not path.is_file():
        raise UserError(f"init: checkpoint {path} does not exist")
    from optispace.proxies.checkpoint import FORMAT as CHECKPOINT_FORMAT

    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many kinds for a file that is not a checkpoint
        raise UserError(f"init: {path} is not a torch checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"init: {path} is not an optispace checkpoint of format {CHECKPOINT_FORMAT}")
    model = state["config"].get("model")
    if model != asdict(tier.model):
        raise UserError(f"init: {path} holds a model of shape {model}, but this tier's is "
                        f"{asdict(tier.model)}; give a pretraining checkpoint of the same tier")
    theirs = (state.get("corpus") or {}).get("fingerprint")
    if theirs is not None and theirs != corpus["fingerprint"]:
        raise UserError(f"init: {path} was trained on corpus {theirs} ({state['corpus'].get('source')}), "
                        f"this run's data is {corpus['fingerprint']} ({corpus['source']}); its token ids "
                        "would mean other tokens: give the same --data")
    return state["model"]


def cached_run(cfg: TrainConfig, corpus: dict) -> dict[str, torch.Tensor]:
    """The final weights of ``train(cfg)``, trained on the first call and read from the cache after."""
    key = fingerprint(cfg, corpus)
    folder = cache_root(cfg.cache_dir) / "runs"
    final = folder / f"{cfg.regime}-{cfg.proxy}-{key}.pt"
    if not final.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        _train_into(cfg, final, folder / f".tmp-{key}-{os.getpid()}.pt")
    return torch.load(final, map_location="cpu", weights_only=False)["model"]


def _train_into(cfg: TrainConfig, final: Path, tmp: Path) -> None:
    from optispace.proxies.train import train

    try:
        record = train(cfg, checkpoint=tmp)
        if record.diverged:
            raise UserError(f"the cached {cfg.regime} run of {cfg.recipe} on {cfg.proxy} diverged at step "
                            f"{record.diverged_step}; nothing to start from")
        state = torch.load(tmp, map_location="cpu", weights_only=False)
        torch.save({key: state[key] for key in ("format", "config", "corpus", "model")}, tmp)
        with contextlib.suppress(FileExistsError):  # never replaces: a worker that finished first
            os.link(tmp, final)  # keeps the weights its trials already use
    finally:
        tmp.unlink(missing_ok=True)


def fingerprint(cfg: TrainConfig, corpus: dict) -> str:
    """sha256 of a run's identity: its config (less device and cache settings), the corpus fingerprint,
    the torch version, and the bytes of its ``init`` checkpoint."""
    settings = replace(cfg, init=None).as_dict()
    for name in _NOT_IDENTITY:
        settings.pop(name)
    init = None if cfg.init is None else _digest(Path(cfg.init))
    key = {"format": START_FORMAT, "config": settings, "corpus": corpus["fingerprint"], "init": init,
           "torch": torch.__version__.split("+")[0]}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _digest(path: Path) -> str:
    if not path.is_file():
        raise UserError(f"init: checkpoint {path} does not exist")
    return hashlib.sha256(path.read_bytes()).hexdigest()

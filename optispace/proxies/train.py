"""The proxies' training loop: ``train(TrainConfig) -> RunRecord``.

One run = one recipe on one tier for a token budget: warmup then decay, grad-norm clipping, evaluation
every ``eval_every`` steps on fixed validation batches. Steps are counted from 1: step k is the k-th
forward/backward/update, and a curve point at step k is measured after update k.

Reproducibility: the seed fixes the initialisation and the batches (batch k depends on (seed, k) only),
so a CPU rerun gives bit-identical losses, and a checkpoint (model, optimizer, step, RNG, curve) resumes
bit for bit. On CUDA: bf16 autocast, TF32 matmuls, optional ``torch.compile``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from optispace.errors import UserError
from optispace.optimizer import Optimizer
from optispace.proxies import checkpoint as checkpoints
from optispace.proxies import distributed
from optispace.proxies.data import TokenData
from optispace.proxies.model import GPT
from optispace.proxies.regime import Regime, build_regime, precision
from optispace.proxies.tiers import TIERS, Tier, shaped

SCHEDULES = ("cosine", "linear", "wsd", "constant")
WSD_DECAY = 0.2  # warmup-stable-decay: linear decay over the last 20% of steps (Hagele et al. 2024)
DIVERGENCE_FACTOR = 2.0  # a loss above twice that of a uniform guess (2 ln V) counts as diverged
log = logging.getLogger("optispace.train")
NEW_ROWS = ("mean", "random")  # how SFT initialises the embedding and head rows of its new tokens


@dataclass(frozen=True)
class TrainConfig:
    """What to train; ``tokens=None`` takes the tier's default budget, ``lr=None`` the recipe's lr.
    ``shape`` overrides the tier's model and batch (``optispace.proxies.tiers.SHAPE_KEYS``).
    ``parallel``: how several ranks share the run, ``ddp`` or ``fsdp2`` (one process ignores it)."""

    recipe: str | Mapping[str, str]
    proxy: str = "small"
    tokens: int | None = None
    lr: float | None = None
    role_lr: Mapping[str, float] = field(default_factory=dict)
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    device: str = "auto"
    data: str | Path | None = None
    schedule: str = "cosine"
    warmup: float = 0.1
    grad_clip: float | None = 1.0
    eval_every: int = 50
    eval_batches: int = 8
    compile: bool = False
    cache_dir: str | Path | None = None
    regime: str = "pretrain"
    init: str | Path | None = None
    pairs: str | Path | None = None
    new_rows: str = "mean"
    task: str = "reverse"
    group_size: int = 8
    clip: float = 0.2
    kl: float = 0.0
    updates_per_batch: int = 1
    format_steps: int = 800
    shape: Mapping[str, float] = field(default_factory=dict)
    parallel: str = "ddp"

    def __post_init__(self) -> None:
        checks = [
            (self.proxy in TIERS, "proxy", self.proxy, f"one of {', '.join(TIERS)}"),
            (self.tokens is None or self.tokens > 0, "tokens", self.tokens, "a positive token budget"),
            (self.lr is None or self.lr > 0, "lr", self.lr, "a positive learning rate"),
            (all(v > 0 for v in self.role_lr.values()), "role_lr", dict(self.role_lr), "positive lrs"),
            (self.seed >= 0, "seed", self.seed, "an integer >= 0"),
            (self.device in ("auto", "cpu") or self.device.startswith("cuda"), "device", self.device,
             "auto, cpu or cuda[:N]"),
            (self.schedule in SCHEDULES, "schedule", self.schedule, f"one of {', '.join(SCHEDULES)}"),
            (0 <= self.warmup < 1, "warmup", self.warmup, "a fraction of the steps in [0, 1)"),
            (self.grad_clip is None or self.grad_clip > 0, "grad_clip", self.grad_clip,
             "a positive norm, or None for no clipping"),
            (self.eval_every >= 1, "eval_every", self.eval_every, "a number of steps >= 1"),
            (self.eval_batches >= 1, "eval_batches", self.eval_batches, "a number of batches >= 1"),
            (self.parallel in distributed.PARALLEL, "parallel", self.parallel,
             f"one of {', '.join(distributed.PARALLEL)}"),
            *self._regime_checks(),
        ]
        for ok, name, value, allowed in checks:
            if not ok:
                raise UserError(f"TrainConfig.{name}: {value!r} is not allowed; use {allowed}")
        try:
            _ = self.tier
        except ValueError as e:
            raise UserError(f"TrainConfig.shape: {e}") from None

    @property
    def tier(self) -> Tier:
        """The proxy's tier with ``shape`` applied."""
        return shaped(TIERS[self.proxy], self.shape)

    def _regime_checks(self) -> list[tuple[bool, str, Any, str]]:
        from optispace.proxies.regime import REGIMES
        from optispace.proxies.tasks import TASKS

        tuning = self.regime in ("sft", "rl")
        return [
            (self.regime in REGIMES, "regime", self.regime, f"one of {', '.join(REGIMES)}"),
            (self.init is None or tuning, "init", self.init, "a checkpoint only with regime sft or rl"),
            (self.pairs is None or self.regime == "sft", "pairs", self.pairs, "prompt/response pairs only "
             "with regime sft"),
            (self.new_rows in NEW_ROWS, "new_rows", self.new_rows, f"one of {', '.join(NEW_ROWS)}"),
            (self.task in TASKS, "task", self.task, f"a task: {', '.join(TASKS)}"),
            (self.group_size >= 2, "group_size", self.group_size,
             "an integer >= 2 (advantages are normalised within each group of samples)"),
            (self.clip > 0, "clip", self.clip, "a positive clip range of the importance ratio"),
            (self.kl >= 0, "kl", self.kl, "a KL weight >= 0"),
            (self.updates_per_batch >= 1, "updates_per_batch", self.updates_per_batch,
             "a number of policy updates per batch of samples >= 1"),
            (self.format_steps >= 1, "format_steps", self.format_steps,
             "a number of steps >= 1 of the SFT run that fits the policy to the task's format"),
        ]

    def as_dict(self) -> dict:
        """The config as plain JSON types (paths as strings, tuples as lists)."""
        return json.loads(json.dumps(asdict(self), default=str))


@dataclass
class RunRecord:
    """The result of one run. ``curve`` points: step, tokens, train_loss, val_loss, elapsed_s, then the
    regime's other evaluation numbers (rl: ``reward``, ``sampled_reward``). ``val_loss`` (and
    ``final_val_loss``) is the value of the regime's ``objective``, a number to minimise: the val loss
    (pretrain), the response val loss (sft), one minus the mean held-out reward (rl). ``metrics``: the
    regime's final measurements (sft: pretraining val loss at start and end, forgetting; rl: reward).
    ``diverged`` is None, "non-finite loss" or "loss above bound"; then ``final_val_loss`` is None.
    ``tokens_per_s`` counts the training steps of this call only (evaluations excluded);
    ``wall_time_s`` the whole loop, evaluations included, plus the time before a resume."""

    config: dict
    corpus: dict
    curve: list[dict] = field(default_factory=list)
    final_val_loss: float | None = None
    diverged: str | None = None
    diverged_step: int | None = None
    tokens_per_s: float = 0.0
    wall_time_s: float = 0.0
    state_bytes: dict[str, int] = field(default_factory=dict)
    device: str = "cpu"
    probes: dict[str, dict] = field(default_factory=dict)
    world_size: int = 1
    regime: str = "pretrain"
    objective: str = "val_loss"
    metrics: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def lr_multiplier(schedule: str, warmup: float, steps: int, step: int) -> float:
    """The factor on each base lr at step ``step`` (1-based) of ``steps``: linear warmup to 1 over
    ``ceil(warmup * steps)`` steps, then ``schedule`` decays it from 1 towards 0 (not reaching 0: the
    last step still updates)."""
    warm = math.ceil(warmup * steps)
    if step <= warm:
        return step / warm
    p = (step - warm - 1) / (steps - warm)  # in [0, 1)
    if schedule == "linear":
        return 1.0 - p
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    if schedule == "wsd":
        return min(1.0, (1.0 - p) / WSD_DECAY)
    return 1.0


def resolve_device(name: str) -> torch.device:
    """``auto`` is cuda when a GPU is visible, else cpu; asking for cuda without one is a user error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device: {name} was asked for but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(name)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> Optimizer:
    """``optispace.Optimizer`` for the config's recipe, lrs and hyperparameters; its ``ValueError``
    (an unknown recipe, role or hyperparameter, a bad value) is the user's mistake."""
    try:
        # With compile on, the optimizer's step is compiled too (its fused path).
        return Optimizer(model, cfg.recipe, lr=cfg.lr, role_lr=cfg.role_lr, fused=cfg.compile or None,
                         **cfg.hyperparameters)
    except ValueError as e:
        raise UserError(f"recipe: {e}") from None


def train(cfg: TrainConfig, on_eval: Callable[[int, int, float], None] | None = None,
          callbacks: Sequence[Any] = (), progress: bool = True, *,
          checkpoint: str | Path | None = None, resume: str | Path | None = None) -> RunRecord:
    """Train ``cfg`` and return its record. ``on_eval(step, tokens, val_loss)`` runs after each
    evaluation and may raise (e.g. optuna.TrialPruned) out of ``train``; divergence never raises.
    ``checkpoint``: a file (under FSDP2 a folder, ``optispace.proxies.checkpoint``) rewritten at each
    evaluation; ``resume``: such a file or folder to continue from, made at any world size.

    In a process group of several ranks (``optispace.proxies.distributed``) the run is data-parallel
    on the same global batch, DDP or FSDP2 (``cfg.parallel``); only rank 0 writes the checkpoint
    (FSDP2: every rank its shards) and shows progress, and the callbacks and ``on_eval`` run on the
    ranks the caller gives them to."""
    tier = cfg.tier
    ranks = distributed.current()
    check_world(cfg, ranks.world)
    device = distributed.rank_device(resolve_device(cfg.device), ranks)
    callbacks = list(callbacks)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls
    torch.manual_seed(cfg.seed)
    regime = build_regime(cfg, tier, device)  # on every rank: data caches are safe to build at once
    model = regime.model
    sharded = ranks.world > 1 and cfg.parallel == "fsdp2"
    if sharded:  # before the optimizer, which then holds the DTensor shards
        distributed.shard(model, device, ranks.world)
    optimizer = make_optimizer(model, cfg)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    steps = math.ceil((cfg.tokens or regime.default_tokens) / tier.tokens_per_step)
    config = cfg.as_dict() | {"steps": steps, "batch_size": tier.batch_size, "seq_len": tier.model.seq_len,
                              "tokens_per_step": tier.tokens_per_step, "model": asdict(model.cfg)}
    record = RunRecord(config=config, corpus=regime.data.info, device=str(device), regime=regime.name,
                       objective=regime.objective, world_size=ranks.world)
    start, elapsed_before = 0, 0.0
    if resume is not None:
        start, elapsed_before = _load_checkpoint(Path(resume), regime, optimizer, record, sharded)
    run = _Run(cfg, regime, optimizer, base_lrs, device, steps, callbacks, record, ranks, sharded)
    _notify_start(callbacks, model, optimizer, regime.data)
    run.loop(start, elapsed_before, on_eval, progress and ranks.lead,
             None if checkpoint is None else Path(checkpoint))
    record.state_bytes = optimizer.state_bytes()
    if not record.diverged:
        record.metrics = run.finish()
    for cb in callbacks:
        summary = cb.on_end(record) if hasattr(cb, "on_end") else None
        if summary is not None:
            record.probes[cb.name] = summary
    return record


def check_world(cfg: TrainConfig, world: int) -> None:
    """A run of several ranks needs a batch they can split evenly, and the pretraining regime (SFT's
    and RL's losses are means over uneven token counts and sampled groups, not split yet)."""
    if world == 1:
        return
    batch_size = cfg.tier.batch_size
    if batch_size % world:
        raise UserError(f"{world} processes cannot split tier {cfg.proxy}'s batch of {batch_size} "
                        f"sequences evenly; use a number that divides {batch_size}")
    if cfg.regime != "pretrain":
        raise UserError(f"regime {cfg.regime} trains in one process for now; use one process")


class _Run:
    """The state of one training run between steps."""

    def __init__(self, cfg: TrainConfig, regime: Regime, optimizer: Optimizer, base_lrs: list[float],
                 device: torch.device, steps: int, callbacks: list, record: RunRecord,
                 ranks: distributed.Ranks, sharded: bool):
        tier = cfg.tier
        self.cfg, self.regime, self.model = cfg, regime, regime.model
        self.optimizer, self.base_lrs, self.device, self.steps = optimizer, base_lrs, device, steps
        self.callbacks, self.record, self.ranks, self.sharded = callbacks, record, ranks, sharded
        self.tokens_per_step = tier.tokens_per_step
        self.forward = torch.compile(self.model) if cfg.compile else self.model
        self.train_forward = self.forward
        # DDP: evaluation stays on the plain model, every rank runs it alike with no sync. FSDP2: the
        # model is its own wrapper; every rank evaluates the same batches, gathering the same shards.
        if ranks.world > 1 and not sharded:
            ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
            self.train_forward = torch.compile(ddp) if cfg.compile else ddp
        self.bound = DIVERGENCE_FACTOR * math.log(self.model.cfg.vocab_size)

    def precision(self) -> contextlib.AbstractContextManager:
        return precision(self.device)

    def loop(self, start: int, elapsed_before: float, on_eval, progress: bool,
             checkpoint: Path | None) -> None:
        from tqdm.auto import tqdm

        record, tokens_per_step = self.record, self.tokens_per_step
        t_start, train_time, done = time.perf_counter(), 0.0, 0
        recipe = self.cfg.recipe if isinstance(self.cfg.recipe, str) else "chains"
        bar = tqdm(total=self.steps, initial=start, disable=None if progress else True, unit="step",
                   desc=f"{self.cfg.proxy} {recipe}", leave=False)
        with bar:
            for step in range(start + 1, self.steps + 1):
                t0 = time.perf_counter()
                loss = self.train_step(step)
                train_time += time.perf_counter() - t0
                if record.diverged:
                    break
                done = step - start
                bar.update(1)
                tokens_per_s = done * tokens_per_step / train_time
                bar.set_postfix_str(f"loss {loss:.4f}, {tokens_per_s:,.0f} tok/s", refresh=False)
                if step % self.cfg.eval_every and step != self.steps:
                    continue
                values = self.evaluate()
                val_loss = values.pop(self.regime.objective)
                record.curve.append({"step": step, "tokens": step * tokens_per_step, "train_loss": loss,
                                     "val_loss": val_loss,
                                     "elapsed_s": elapsed_before + time.perf_counter() - t_start, **values})
                if self.check_divergence(val_loss, step):
                    break
                if checkpoint is not None:
                    self.save_checkpoint(checkpoint, step, record.curve[-1]["elapsed_s"])
                self.report({**record.curve[-1], "tokens_per_s": tokens_per_s})
                if on_eval is not None:
                    on_eval(step, step * tokens_per_step, val_loss)
        if done:
            record.tokens_per_s = done * tokens_per_step / train_time
        record.wall_time_s = elapsed_before + time.perf_counter() - t_start
        if not record.diverged and record.curve:
            record.final_val_loss = record.curve[-1]["val_loss"]

    def report(self, point: dict[str, Any]) -> None:
        """Hand an evaluation to the callbacks' ``on_eval``; when stderr is not a terminal (no progress
        bar there), also log it as one line (logger ``optispace.train``, level INFO)."""
        for cb in self.callbacks:
            if hasattr(cb, "on_eval"):
                cb.on_eval(point)
        if self.ranks.lead and not sys.stderr.isatty():
            log.info("step %d/%d: %s tokens, val loss %.4f, %s tokens/s", point["step"], self.steps,
                     f"{point['tokens']:,}", point["val_loss"], f"{point['tokens_per_s']:,.0f}")

    def train_step(self, step: int) -> float:
        """One update; returns the training loss, or marks the record diverged (no update made)."""
        batch = self.regime.batch(step)
        if self.ranks.world > 1:
            batch = distributed.local_slice(batch, self.ranks)
        factor = lr_multiplier(self.cfg.schedule, self.cfg.warmup, self.steps, step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor
        with self.precision():
            loss = self.regime.loss(self.train_forward, batch)
        loss.backward()
        value = loss.item()
        if self.ranks.world > 1:  # the global batch's loss, so every rank decides divergence alike
            value = distributed.mean_over_ranks(value, self.device)
        if self.check_divergence(value, step):
            return value
        for cb in self.callbacks:
            if hasattr(cb, "on_after_backward"):
                cb.on_after_backward(step, self.model, self.optimizer, batch[:2])
        if self.cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        for cb in self.callbacks:
            if hasattr(cb, "on_after_step"):
                cb.on_after_step(step, self.model, self.optimizer, batch[:2])
        return value

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The regime's evaluation (its objective among it), in eval mode."""
        self.model.eval()
        with self.precision():
            values = self.regime.evaluate(self.forward)
        self.model.train()
        return values

    @torch.no_grad()
    def finish(self) -> dict:
        """The regime's final measurements (e.g. SFT's forgetting), in eval mode."""
        self.model.eval()
        with self.precision():
            metrics = self.regime.finish(self.forward)
        self.model.train()
        return metrics

    def check_divergence(self, loss: float, step: int) -> bool:
        if math.isfinite(loss) and loss <= self.bound:
            return False
        self.record.diverged = "non-finite loss" if not math.isfinite(loss) else "loss above bound"
        self.record.diverged_step = step
        return True

    def save_checkpoint(self, path: Path, step: int, elapsed: float) -> None:
        """Everything a resumed run needs (``optispace.proxies.checkpoint``), never half-written."""
        progress = {"config": self.record.config, "corpus": self.record.corpus, "step": step,
                    "elapsed_s": elapsed, "curve": self.record.curve, "regime": self.regime.state_dict(),
                    "rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None}
        checkpoints.save(path, progress, self.model, self.optimizer, sharded=self.sharded,
                         lead=self.ranks.lead)


def _load_checkpoint(path: Path, regime: Regime, optimizer: Optimizer, record: RunRecord,
                     sharded: bool) -> tuple[int, float]:
    """Restore a checkpoint (file or folder) into the regime's model and state, ``optimizer`` and
    ``record``; returns (step, elapsed seconds)."""
    state = checkpoints.read(path)
    # a checkpoint from before a setting existed was made at that setting's default
    defaults = {f.name: f.default_factory() if f.default is MISSING else f.default
                for f in fields(TrainConfig) if f.default is not MISSING or f.default_factory is not MISSING}
    theirs = defaults | state["config"]
    # how the ranks shared the work is not the run: a checkpoint resumes under ddp, fsdp2 or alone
    differ = sorted(k for k in record.config.keys() | theirs.keys()
                    if k != "parallel" and record.config.get(k) != theirs.get(k))
    if differ:
        raise UserError(f"resume: {path} was made with a different config ({', '.join(differ)} differ); "
                        "resume with the same settings")
    checkpoints.restore(path, state, regime.model, optimizer, sharded=sharded)
    regime.load_state_dict(state.get("regime", {}))
    torch.set_rng_state(state["rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    record.curve = list(state["curve"])
    return state["step"], state["elapsed_s"]


def _notify_start(callbacks: list, model: GPT, optimizer: Optimizer, data: TokenData) -> None:
    starters = [cb for cb in callbacks if hasattr(cb, "on_start")]
    if not starters:
        return
    from optispace.roles import assign_roles

    roles = assign_roles(model)
    for cb in starters:
        cb.on_start(model, optimizer, roles, data)

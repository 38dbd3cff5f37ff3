"""The optimizer: one chain of primitives and one learning rate per parameter role.

``Optimizer(model, "ember", lr=3e-3, role_lr={"embed": 1e-2}, beta2=0.99)`` is a real
``torch.optim.Optimizer``: one param group per role present (keys ``role``, ``chain`` (canonical
text), ``lr``, ``param_names``, ``foreach``, plus a named recipe's ``recipe`` and hyperparameters,
from which the chain is derived again when a scheduler changes them), so torch schedulers work.
Each step, for each parameter with a gradient: ``u = chain(g)``, then ``p -= step_size * u``
(``step_size`` is the group's lr unless a scaling primitive changed it), in fp32 and cast back for
bf16/fp16 parameters.

State is allocated when the optimizer is built, exactly what the chains declare, in fp32 whatever
the parameter's dtype, under stable names (``momentum.m``, ``second_moment.v``) plus ``step``, the
parameter's own step count (a Python int), so a saved and resumed run continues bit for bit.

Parameters sharded by FSDP2 (DTensors placed ``Shard(0)``) step on each rank's block, with state for
the block, and shape-aware statistics summed over the shard group (``optispace.sharded``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import optispace.fused as fused_step
import optispace.sharded as sharded
from optispace.chain import Chain, parse_chain
from optispace.recipes import Recipe, check_lr, get_recipe
from optispace.roles import ROLES, Override, assign_roles, check_role, token_roles_unknown
from primitives import Context, Shard, Workspace

RecipeSpec = str | Recipe | Mapping[str, str | Chain]
_SMALL_CPU_TENSOR = 1 << 18  # elements (1 MiB of fp32): below it, kernel count beats memory reuse
_TEXTS_KEPT = 64  # chain texts (derived, and parsed) kept for reuse; a scheduler may make one a step
log = logging.getLogger("optispace.optimizer")


def resolve_recipe(
    recipe: RecipeSpec, roles_present: Iterable[str], lr: float | None,
    role_lr: Mapping[str, float] | None, hyperparameters: Mapping[str, Any],
) -> tuple[dict[str, Chain], dict[str, float], dict[str, Any]]:
    """(chain per role, lr per role, resolved hyperparameters) for the roles present.

    ``recipe`` is a name in ``RECIPES``, a :class:`Recipe`, or ``{role: chain text or Chain}``
    covering every role present (then ``lr`` or ``role_lr`` must give every role's lr, and there
    are no hyperparameters: they are written in the chain text).
    """
    present = list(roles_present)
    role_lr = dict(role_lr or {})
    for role in role_lr:
        check_role(role, "role_lr")
    if isinstance(recipe, str | Recipe):
        r = get_recipe(recipe) if isinstance(recipe, str) else recipe
        hp = r.resolve(hyperparameters)
        chains = r.chains(**hp)
        default_lr = r.lr
    elif isinstance(recipe, Mapping):
        if hyperparameters:
            raise ValueError(f"hyperparameters {', '.join(sorted(hyperparameters))} apply to named recipes; "
                             "with a {role: chain} recipe write them into the chain text")
        for role in recipe:
            check_role(role, "recipe")
        missing = [role for role in present if role not in recipe]
        if missing:
            raise ValueError(f"recipe: no chain for role(s) {', '.join(missing)}, which the model has; "
                             f"give a chain for each of {', '.join(present)}")
        chains = {role: c if isinstance(c, Chain) else parse_chain(c) for role, c in recipe.items()}
        hp, default_lr = {}, None
    else:
        raise ValueError(f"recipe: {recipe!r} is neither a recipe name nor a {{role: chain}} mapping")
    lrs = {}
    for role in present:
        value = role_lr.get(role, lr if lr is not None else default_lr)
        if value is None:
            raise ValueError(f"no lr for role {role!r}: give lr= or role_lr={{{role!r}: ...}}")
        lrs[role] = check_lr(value, f"role {role!r}")
    return {role: chains[role] for role in present}, lrs, hp


def state_bytes_for(
    shapes: Mapping[str, Iterable[tuple[int, ...]]], recipe: RecipeSpec = "adamw", **hyperparameters: Any
) -> dict[str, int]:
    """Bytes of optimizer state per role for parameters of these shapes, without allocating any."""
    # The lr plays no part in the state; 0 stands in for a {role: chain} recipe's missing one.
    chains, _, _ = resolve_recipe(recipe, list(shapes), 0.0, None, hyperparameters)
    return {role: sum(chains[role].state_bytes(tuple(s)) for s in shapes[role]) for role in shapes}


@dataclass(frozen=True)
class ShardedStateBytes:
    """Optimizer state of a model sharded over ``world`` ranks: bytes per role on each rank, and the
    sum over the ranks (padding and replicated statistics included, so never below one process's)."""

    world: int
    per_rank: dict[str, int]
    total: dict[str, int]


def shard_rows(shape: tuple[int, ...], world: int) -> tuple[int, ...]:
    """The padded local shape of a parameter under FSDP2's ``Shard(0)``: ``ceil(d0 / world)`` rows."""
    if not shape:
        return shape  # a 0-d tensor is kept whole on every rank
    return (-(-shape[0] // world), *shape[1:])


def sharded_state_bytes(
    shapes: Mapping[str, Iterable[tuple[int, ...]]], world: int, recipe: RecipeSpec = "adamw",
    **hyperparameters: Any,
) -> ShardedStateBytes:
    """State bytes per rank and in total when dim 0 of every parameter is sharded over ``world`` ranks
    (ZeRO/FSDP), computed without allocating.

    A rank keeps the state its chain declares for its padded shard (``shard_rows``): elementwise and
    row statistics shrink to ``ceil(d0/world)`` rows, statistics over the other dimensions (a
    factored second moment's column statistic and total) stay whole, replicated. So a V x D table
    costs Adam ``2 * ceil(V/N) * D`` numbers per rank and Ember ``ceil(V/N) + D + 1``.
    """
    if world < 1:
        raise ValueError(f"world: {world} is not allowed; give a number of ranks >= 1")
    local = {role: [shard_rows(tuple(s), world) for s in group] for role, group in shapes.items()}
    per_rank = state_bytes_for(local, recipe, **hyperparameters)
    return ShardedStateBytes(world, per_rank, {role: world * n for role, n in per_rank.items()})


class Optimizer(torch.optim.Optimizer):
    """One chain and one lr per parameter role (module docstring).

    ``model_or_params``: an ``nn.Module`` (roles from its modules); named parameters
    (``model.named_parameters()``: roles from the names, ``optispace.roles``); a list of tensors
    (roles from shapes alone, refused when the recipe treats embed or head unlike matrix); or torch
    param-group dicts ``[{"params": ..., "lr": ..., "role": ..., <hyperparameter>: ...}]``, each
    with its own lr and hyperparameters, as torch optimizers take them (``role``, optional, gives all
    its parameters that role). ``roles``: an override, a mapping ``{name: role}``, a function
    ``(name, param) -> role | None``, or the model the parameters come from. ``lr`` sets every
    role's lr, ``role_lr`` single roles'; a group's own ``lr`` comes first. ``foreach``: step a
    group's parameters with multi-tensor operations (default: on accelerators, and on CPU for groups
    of small tensors; the same bits either way). ``fused=True``: step each group whose chain has
    pure forms through its ``torch.compile``d update (``optispace.fused``; equal to the eager step to
    1e-6, not bit for bit); not with ``foreach=True``, as in torch. Every mistake (an unknown recipe, role or
    hyperparameter, a bad value, a chain that cannot act on a parameter's shape) raises
    ``ValueError`` here, at build time.
    """

    def __init__(
        self, model_or_params: nn.Module | Iterable, recipe: RecipeSpec = "adamw", *,
        lr: float | None = None, role_lr: Mapping[str, float] | None = None,
        roles: Override | None = None, foreach: bool | None = None, fused: bool | None = None,
        **hyperparameters: Any,
    ) -> None:
        if isinstance(model_or_params, nn.Module):
            _refuse_sparse(model_or_params)
            source, options, given, group_of = model_or_params, [None], {}, {}
        else:
            source, options, given, group_of = _input_groups(model_or_params)
        assigned = {name: (given.get(id(p), role), p) for name, (role, p) in
                    assign_roles(source, roles).items()}
        if not assigned:
            raise ValueError("optimizer: no trainable parameters (none requires a gradient)")
        reason = None if roles is not None or given else token_roles_unknown(source)
        if reason and _token_roles_matter(recipe, lr, role_lr, hyperparameters):
            raise ValueError(f"optimizer: {reason}, and recipe {_recipe_name(recipe)} treats embed or head "
                             "unlike matrix; pass the model, model.named_parameters(), or roles= (a "
                             "{name: role} mapping, a function (name, param) -> role, or the model itself)")
        _check_fused(fused, foreach, next(iter(assigned.values()))[1].device)
        self._recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
        self._workspace = Workspace()
        self._chains: dict[str, Chain] = {}  # chain text -> parsed chain
        self._derived: dict[tuple[str, str], str] = {}  # (role, hyperparameters) -> chain text
        groups = []
        for index, opts in enumerate(options):
            members = {name: rp for name, rp in assigned.items() if group_of.get(id(rp[1]), 0) == index}
            try:
                groups += _role_groups(members, opts or {}, recipe, lr, role_lr, hyperparameters)
            except ValueError as e:
                raise ValueError(str(e) if opts is None else f"param group {index}: {e}") from None
        _, _, default_hp = resolve_recipe(recipe, [], lr, role_lr, hyperparameters)
        default_lr = lr if lr is not None else getattr(self._recipe, "lr", None)
        defaults = {"foreach": foreach, "fused": fused, **default_hp,
                    **({} if default_lr is None else {"lr": default_lr})}
        super().__init__(groups, defaults)

    def _refresh_chains(self) -> None:
        """Re-derive the chain text of each group that holds ``recipe`` from its hyperparameters.

        A scheduler that sets a group's ``betas`` or ``momentum`` (OneCycleLR) changes the chain the
        group runs, as it changes torch's AdamW or SGD; state a new primitive declares is allocated
        (zeros, as torch's lazily made buffers start). Groups without ``recipe`` (a ``{role: chain}``
        recipe's, or one added later with its own chain) keep their chain.
        """
        if not isinstance(self._recipe, Recipe):
            return
        for group in self.param_groups:
            if group.get("recipe") != self._recipe.name:
                continue
            hp = {key: group[key] for key in self._recipe.defaults if key in group}
            key = (group["role"], repr(sorted(hp.items())))
            if key not in self._derived:
                if len(self._derived) >= _TEXTS_KEPT:
                    self._derived.clear()
                self._derived[key] = str(self._recipe.chains(**hp)[group["role"]])
            if self._derived[key] != group["chain"]:
                log.debug("%s chain now (hyperparameters changed): %s", group["role"], self._derived[key])
                group["chain"] = self._derived[key]
                self._allocate_missing(group, self._chain(group["chain"]))

    def _allocate_missing(self, group: dict[str, Any], chain: Chain) -> None:
        """Allocate the state ``chain`` declares that the group's parameters do not have yet."""
        for p in group["params"]:
            state = self.state[p]
            if any(spec.name not in state for spec in chain.state_specs(tuple(p.shape))):
                for name, value in _init_state(chain, p).items():
                    state.setdefault(name, value)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's, for a group with ``role``, ``chain`` (text or Chain) and ``lr``.

        Every parameter's shape is checked against the chain first, and its state is allocated.
        Parameters given as ``(name, tensor)`` pairs keep their names in ``param_names``.
        """
        missing = [key for key in ("role", "chain", "lr") if key not in param_group]
        if missing:
            raise ValueError(f"add_param_group: the group has no {', '.join(missing)}; "
                             "a group names its role, its chain and its lr")
        role = param_group["role"]
        check_role(role, "add_param_group")
        chain = param_group["chain"]
        chain = chain if isinstance(chain, Chain) else parse_chain(chain)
        param_group["chain"] = str(chain)
        self._chains[param_group["chain"]] = chain
        param_group["lr"] = check_lr(param_group["lr"], f"role {role!r}")
        params = list(param_group["params"])
        for i, item in enumerate(params):
            name, p = item if isinstance(item, tuple) else (str(i), item)
            try:
                chain.check_shape(tuple(p.shape))
            except ValueError as e:
                raise ValueError(f"parameter {name!r} (role {role}, shape {tuple(p.shape)}): {e}") from None
            sharded.shard_of(p, f"parameter {name!r}")
        param_group["params"] = params
        super().add_param_group(param_group)
        for p in self.param_groups[-1]["params"]:
            self.state[p] = {"step": 0, **_init_state(chain, p)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # torch pickles defaults, state and param_groups (and the recipe, below): scratch buffers
        # the parsed and derived chain texts start afresh.
        super().__setstate__(state)
        self._workspace = Workspace()
        self._recipe = state.get("_recipe", getattr(self, "_recipe", None))
        self._chains = {}
        self._derived = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_recipe": self._recipe}

    def state_bytes(self) -> dict[str, int]:
        """Bytes of optimizer state per role, as allocated on this rank (equal to what the chains declare
        for its blocks of sharded parameters; rank 0's equal ``sharded_state_bytes(...).per_rank``)."""
        return {
            group["role"]: sum(sharded.local(v).nbytes for p in group["params"]
                               for v in self.state[p].values() if isinstance(v, torch.Tensor))
            for group in self.param_groups
        }

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step for every parameter that has a gradient; the others are left alone.

        Sharded (DTensor) parameters of every group step together at the end (``optispace.sharded``:
        one all-reduce per round of partial sums), eagerly even under ``fused``.
        """
        self._refresh_chains()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        runs = []
        for group in self.param_groups:
            chain = self._chain(group["chain"])
            params = [p for p in group["params"] if p.grad is not None]
            if any(p.grad.is_sparse for p in params):
                raise ValueError("optispace.Optimizer does not take sparse gradients (as from "
                                 "nn.Embedding(sparse=True))")
            shards = [(p, sharded.shard_of(p)) for p in params]
            runs += [(self._run(p, chain, group["lr"], shard), shard) for p, shard in shards if shard]
            params = [p for p, shard in shards if shard is None]
            if group["fused"] and chain.fusable and params and len({p.device for p in params}) == 1:
                self._step_fused(params, chain, group["lr"])
            elif _grouped(params, group["foreach"]):
                self._step_many(params, chain, group["lr"])
            else:
                for p in params:
                    self._step_one(p, chain, group["lr"])
        if runs:
            sharded.run(runs)
            self._workspace.release()
        return loss

    def _chain(self, text: str) -> Chain:
        """The parsed chain of a group's text, parsed once per distinct text.

        A group's text may change between steps (a scheduler re-deriving a recipe's chain from new
        hyperparameters); the new text is parsed on its first step and found in the cache after, so
        a step is a dictionary lookup, which ``torch.compile`` traces without a graph break.
        """
        chain = self._chains.get(text)
        if chain is None:
            if len(self._chains) >= _TEXTS_KEPT:
                self._chains.clear()
            chain = self._chains[text] = parse_chain(text)
        return chain

    def _step_fused(self, params: list[torch.Tensor], chain: Chain, lr: float) -> None:
        """One step for parameters on one device through the chain's compiled pure update."""
        states = [self.state[p] for p in params]
        for state in states:
            state["step"] += 1
        fused_step.step(chain, params, states, lr)

    def _step_many(self, params: list[torch.Tensor], chain: Chain, lr: float) -> None:
        """One step for fp32 parameters on one device, with multi-tensor (foreach) operations."""
        states = [self.state[p] for p in params]
        for state in states:
            state["step"] += 1
        ctxs = [Context(grad=p.grad, param=p, step=s["step"], lr=lr, workspace=self._workspace)
                for p, s in zip(params, states, strict=True)]
        us = chain.apply_many([p.grad for p in params], states, ctxs)
        # Context.update for the whole group: the waiting decays, then the steps, one roundings each.
        todo = [i for i, ctx in enumerate(ctxs) if not ctx.applied]
        decayed = [i for i in todo if ctxs[i].param_scale != 1.0]
        if decayed:
            torch._foreach_mul_([params[i] for i in decayed], [ctxs[i].param_scale for i in decayed])
        by_size: dict[float, list[int]] = {}
        for i in todo:
            by_size.setdefault(ctxs[i].step_size, []).append(i)
        for size, indices in by_size.items():
            torch._foreach_add_([params[i] for i in indices], [us[i] for i in indices], alpha=-size)
        self._workspace.release()

    def _step_one(self, p: torch.Tensor, chain: Chain, lr: float) -> None:
        for _ in self._run(p, chain, lr, None):  # a parameter that is not sharded never asks for sums
            pass
        self._workspace.release()

    def _run(self, p: torch.Tensor, chain: Chain, lr: float,
             shard: Shard | None) -> Generator[torch.Tensor, torch.Tensor, None]:
        """One parameter's step, on this rank's block when ``shard``: yields the partial sums its
        chain needs summed over the shard group and takes their sums (``Chain.steps``)."""
        state = self.state[p]
        state["step"] += 1
        mine = sharded.local(p)
        grad = sharded.local(p.grad)
        if grad.dtype != torch.float32:
            grad = self._workspace.take(tuple(mine.shape), p.device).copy_(grad)
        work = mine
        if mine.dtype in (torch.bfloat16, torch.float16):
            work = self._workspace.take(tuple(mine.shape), p.device).copy_(mine)
        ctx = Context(grad=grad, param=work, step=state["step"], lr=lr, workspace=self._workspace,
                      shard=shard)
        if shard is None:
            u = chain.apply(grad, state, ctx)
        else:
            u = yield from chain.steps(grad, {k: sharded.local(v) for k, v in state.items()}, ctx)
        if not ctx.applied:
            ctx.update(work, u)
        if work is not mine:
            mine.copy_(work)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's, for a checkpoint of the same chains; state keeps its declared dtype (fp32).

        torch would cast floating state to each parameter's dtype (bf16 state for bf16 parameters).
        """
        saved_groups = state_dict["param_groups"]
        # A named recipe's group matches by recipe: its chain text follows its hyperparameters.
        ours = [(g["role"], g.get("recipe") or g["chain"]) for g in self.param_groups]
        theirs = [(g.get("role"), g.get("recipe") or g.get("chain")) for g in saved_groups]
        if ours != theirs:
            raise ValueError(f"load_state_dict: the checkpoint's (role, recipe or chain) {theirs} are not "
                             f"this optimizer's {ours}; build the optimizer with the recipe it was saved "
                             "with")
        super().load_state_dict(state_dict)
        # The saved groups list their parameters' keys in our order: indices, or names when the state
        # comes from torch.distributed.checkpoint's set_optimizer_state_dict.
        for group, saved_group in zip(self.param_groups, saved_groups, strict=True):
            chain = self._chain(group["chain"])
            for p, key in zip(group["params"], saved_group["params"], strict=True):
                saved = state_dict["state"][key]
                for spec in chain.state_specs(tuple(p.shape)):
                    value = saved[spec.name]
                    self.state[p][spec.name] = value.to(device=p.device, dtype=spec.dtype, copy=True)


_GROUP_KEYS = ("params", "role", "lr", "foreach")  # what a param group holds besides hyperparameters


def _input_groups(
    params: Iterable,
) -> tuple[list, list[dict[str, Any] | None], dict[int, str], dict[int, int]]:
    """(all parameters as one list, each group's options, id -> a group's ``role``, id -> group index).

    A list of tensors or of ``(name, tensor)`` pairs is one group without options (``None``); torch
    param-group dicts are flattened in order (bare tensors keep their position in the whole list as
    their name, as torch's ``state_dict`` numbers them), and must all give tensors, or all pairs.
    """
    items = list(params)
    if not items or not all(isinstance(x, Mapping) for x in items):
        return items, [None], {}, {}
    flat: list = []
    options: list[dict[str, Any] | None] = []
    given: dict[int, str] = {}
    group_of: dict[int, int] = {}
    for index, group in enumerate(items):
        if "params" not in group:
            raise ValueError(f"param group {index} has no 'params'")
        members = group["params"]
        members = [members] if isinstance(members, torch.Tensor) else list(members)
        if "role" in group:
            check_role(group["role"], f"param group {index}")
        for item in members:
            p = item[1] if isinstance(item, tuple) else item
            if id(p) in group_of:
                raise ValueError(f"param group {index}: a parameter is also in param group "
                                 f"{group_of[id(p)]}; each parameter belongs to one group")
            group_of[id(p)] = index
            if "role" in group:
                given[id(p)] = group["role"]
        flat += members
        options.append({k: v for k, v in group.items() if k not in ("params", "role")})
    if len({isinstance(x, tuple) for x in flat}) > 1:
        raise ValueError("param groups: give every group tensors, or every group (name, tensor) pairs")
    return flat, options, given, group_of


def _role_groups(
    members: dict[str, tuple[str, nn.Parameter]], opts: Mapping[str, Any], recipe: RecipeSpec,
    lr: float | None, role_lr: Mapping[str, float] | None, hyperparameters: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """One torch param group per role among ``members``, in ROLES order, with the input group's own
    lr (before ``role_lr`` and ``lr``), hyperparameters (before the keyword ones) and ``foreach``."""
    present = [role for role in ROLES if any(r == role for r, _ in members.values())]
    if "lr" in opts:
        lr, role_lr = opts["lr"], None
    own = {k: v for k, v in opts.items() if k not in _GROUP_KEYS}
    chains, lrs, hp = resolve_recipe(recipe, present, lr, role_lr, {**hyperparameters, **own})
    extra = {"foreach": opts["foreach"]} if "foreach" in opts else {}
    if not isinstance(recipe, Mapping):  # the chain follows the hyperparameters (_refresh_chains)
        extra["recipe"] = recipe if isinstance(recipe, str) else recipe.name
    return [{"params": [(name, p) for name, (r, p) in members.items() if r == role], "role": role,
             "chain": chains[role], "lr": lrs[role], **hp, **extra} for role in present]


def _token_roles_matter(recipe: RecipeSpec, lr: float | None, role_lr: Mapping[str, float] | None,
                        hyperparameters: Mapping[str, Any]) -> bool:
    """Does the recipe give ``embed`` or ``head`` another chain or lr than ``matrix``?"""
    covered = [r for r in ROLES if not isinstance(recipe, Mapping) or r in recipe]
    # The lr plays no part in the chains; 0 stands in for a {role: chain} recipe's missing one.
    chains, _, _ = resolve_recipe(recipe, covered, 0.0, None, hyperparameters)
    lrs = dict(role_lr or {})
    return any((role in chains and chains[role] != chains.get("matrix"))
               or (role in lrs and lrs[role] != lrs.get("matrix", lr)) for role in ("embed", "head"))


def _recipe_name(recipe: RecipeSpec) -> str:
    if isinstance(recipe, Recipe):
        return repr(recipe.name)
    return repr(recipe) if isinstance(recipe, str) else "{role: chain}"


def _grouped(params: list[torch.Tensor], foreach: bool | None) -> bool:
    """Step these parameters together? Only fp32 parameters on one device qualify.

    ``foreach=None``: on accelerators, and on CPU when every tensor is small; a large CPU tensor
    goes one by one, through scratch memory reused from step to step (multi-tensor operations
    allocate their results afresh, and fresh large CPU memory page-faults).
    """
    if len(params) < 2 or foreach is False:
        return False
    device = params[0].device
    if foreach is None and device.type == "cpu" and any(p.numel() > _SMALL_CPU_TENSOR for p in params):
        return False
    return all(p.device == device and p.dtype == p.grad.dtype == torch.float32 for p in params)


def _check_fused(fused: bool | None, foreach: bool | None, device: torch.device) -> None:
    """``ValueError`` for ``fused=True`` with ``foreach=True`` (as torch) or where compile cannot run."""
    if fused and foreach:
        raise ValueError("fused=True and foreach=True cannot be given together (as in torch); pick one")
    reason = fused_step.unavailable(device) if fused else None
    if reason is not None:
        raise ValueError(f"fused=True needs torch.compile, which cannot run here: {reason}")


def _init_state(chain: Chain, p: torch.Tensor) -> dict[str, torch.Tensor]:
    """The state ``chain`` declares for ``p``, zero-filled (for a sharded ``p``: its block's)."""
    if sharded.shard_of(p) is not None:
        return sharded.init_state(chain, p)
    return chain.init_state(tuple(p.shape), p.device)


def _refuse_sparse(model: nn.Module) -> None:
    """``ValueError`` for a module built to make sparse gradients (``nn.Embedding(sparse=True)``)."""
    for name, module in model.named_modules():
        if getattr(module, "sparse", False) is True:
            raise ValueError(f"module {name!r} makes sparse gradients, which optispace.Optimizer does not "
                             "take; build it with sparse=False")

"""The optimizer: one chain of primitives and one learning rate per parameter role.

``Optimizer(model, "ember", lr=3e-3, role_lr={"embed": 1e-2}, beta2=0.99)`` is a real
``torch.optim.Optimizer``: one param group per role present (keys ``role``, ``chain`` (canonical
text), ``lr``, ``param_names``, ``foreach``, plus the recipe's hyperparameters), so torch LR
schedulers work. Each step, for each
parameter with a gradient: ``u = chain(g)``, then ``p -= step_size * u`` (``step_size`` is the
group's lr unless a scaling primitive changed it), in fp32 and cast back for bf16/fp16 parameters.

State is allocated when the optimizer is built, exactly what the chains declare, in fp32 whatever
the parameter's dtype, under stable names (``momentum.m``, ``second_moment.v``) plus ``step``, the
parameter's own step count (a Python int), so a saved and resumed run continues bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from optispace import fused as fused_step
from optispace.chain import Chain, parse_chain
from optispace.recipes import Recipe, check_lr, get_recipe
from optispace.roles import ROLES, Override, assign_roles, check_role
from primitives import Context, Workspace

RecipeSpec = str | Recipe | Mapping[str, str | Chain]
_SMALL_CPU_TENSOR = 1 << 18  # elements (1 MiB of fp32): below it, kernel count beats memory reuse


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


class Optimizer(torch.optim.Optimizer):
    """One chain and one lr per parameter role (module docstring).

    ``model_or_params``: an ``nn.Module`` (roles from its modules), or parameters (a list of tensors
    or of ``(name, tensor)`` pairs; roles from shapes alone). ``roles``: an override, a mapping
    ``{name: role}`` or a function ``(name, param) -> role | None``. ``lr`` sets every role's lr,
    ``role_lr`` single roles'. ``foreach``: step a group's parameters with multi-tensor operations
    (default: on accelerators, and on CPU for groups of small tensors; the same bits either way).
    ``fused=True``: step each group whose chain has pure forms through its ``torch.compile``d
    update (``optispace.fused``; equal to the eager step to 1e-6, not bit for bit); not with
    ``foreach=True``, as in torch.
    Every mistake (an unknown recipe, role or hyperparameter, a bad value, a chain that cannot act
    on a parameter's shape) raises ``ValueError`` here, at build time.
    """

    def __init__(
        self, model_or_params: nn.Module | Iterable, recipe: RecipeSpec = "adamw", *,
        lr: float | None = None, role_lr: Mapping[str, float] | None = None,
        roles: Override | None = None, foreach: bool | None = None, fused: bool | None = None,
        **hyperparameters: Any,
    ) -> None:
        if isinstance(model_or_params, nn.Module):
            _refuse_sparse(model_or_params)
        assigned = assign_roles(model_or_params, roles)
        by_role: dict[str, list[tuple[str, nn.Parameter]]] = {}
        for name, (role, p) in assigned.items():
            by_role.setdefault(role, []).append((name, p))
        present = [role for role in ROLES if role in by_role]
        chains, lrs, hp = resolve_recipe(recipe, present, lr, role_lr, hyperparameters)
        if not present:
            raise ValueError("optimizer: no trainable parameters (none requires a gradient)")
        _check_fused(fused, foreach, next(iter(assigned.values()))[1].device)
        self._workspace = Workspace()
        self._chains: dict[str, Chain] = {}
        groups = [{"params": by_role[role], "role": role, "chain": chains[role], "lr": lrs[role], **hp}
                  for role in present]
        super().__init__(groups, {"foreach": foreach, "fused": fused})

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
        param_group["params"] = params
        super().add_param_group(param_group)
        for p in self.param_groups[-1]["params"]:
            self.state[p] = {"step": 0, **chain.init_state(tuple(p.shape), p.device)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # torch pickles only defaults, state and param_groups: scratch buffers and parsed chains
        # start afresh.
        super().__setstate__(state)
        self._workspace = Workspace()
        self._chains = {}

    def state_bytes(self) -> dict[str, int]:
        """Bytes of optimizer state per role, as allocated (equal to what the chains declare)."""
        return {
            group["role"]: sum(v.nbytes for p in group["params"] for v in self.state[p].values()
                               if isinstance(v, torch.Tensor))
            for group in self.param_groups
        }

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step for every parameter that has a gradient; the others are left alone."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            chain = self._chain(group["chain"])
            params = [p for p in group["params"] if p.grad is not None]
            if any(p.grad.is_sparse for p in params):
                raise ValueError("optispace.Optimizer does not take sparse gradients (as from "
                                 "nn.Embedding(sparse=True))")
            if group["fused"] and chain.fusable and params and len({p.device for p in params}) == 1:
                self._step_fused(params, chain, group["lr"])
            elif _grouped(params, group["foreach"]):
                self._step_many(params, chain, group["lr"])
            else:
                for p in params:
                    self._step_one(p, chain, group["lr"])
        return loss

    def _chain(self, text: str) -> Chain:
        """The parsed chain of a group's text, parsed once per distinct text.

        A group's text may change between steps (a scheduler re-deriving a recipe's chain from new
        hyperparameters); the new text is parsed on its first step and found in the cache after, so
        a step is a dictionary lookup, which ``torch.compile`` traces without a graph break.
        """
        chain = self._chains.get(text)
        if chain is None:
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
        state = self.state[p]
        state["step"] += 1
        grad, work = p.grad, p
        if grad.dtype != torch.float32:
            grad = self._workspace.take(tuple(p.shape), p.device).copy_(grad)
        if p.dtype in (torch.bfloat16, torch.float16):
            work = self._workspace.take(tuple(p.shape), p.device).copy_(p)
        ctx = Context(grad=grad, param=work, step=state["step"], lr=lr, workspace=self._workspace)
        u = chain.apply(grad, state, ctx)
        if not ctx.applied:
            ctx.update(work, u)
        if work is not p:
            p.copy_(work)
        self._workspace.release()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's, for a checkpoint of the same chains; state keeps its declared dtype (fp32).

        torch would cast floating state to each parameter's dtype (bf16 state for bf16 parameters).
        """
        saved_groups = state_dict["param_groups"]
        ours = [(g["role"], g["chain"]) for g in self.param_groups]
        theirs = [(g.get("role"), g.get("chain")) for g in saved_groups]
        if ours != theirs:
            raise ValueError(f"load_state_dict: the checkpoint's (role, chain) groups {theirs} are not this "
                             f"optimizer's {ours}; build the optimizer with the recipe it was saved with")
        super().load_state_dict(state_dict)
        index = {id(p): i for i, p in enumerate(p for group in self.param_groups for p in group["params"])}
        for group in self.param_groups:
            chain = self._chain(group["chain"])
            for p in group["params"]:
                saved = state_dict["state"][index[id(p)]]
                for spec in chain.state_specs(tuple(p.shape)):
                    value = saved[spec.name]
                    self.state[p][spec.name] = value.to(device=p.device, dtype=spec.dtype, copy=True)


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


def _refuse_sparse(model: nn.Module) -> None:
    """``ValueError`` for a module built to make sparse gradients (``nn.Embedding(sparse=True)``)."""
    for name, module in model.named_modules():
        if getattr(module, "sparse", False) is True:
            raise ValueError(f"module {name!r} makes sparse gradients, which optispace.Optimizer does not "
                             "take; build it with sparse=False")

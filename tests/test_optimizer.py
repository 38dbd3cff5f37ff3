"""The optimizer: param groups per role, lr per role, state bytes, skipping, dtypes, save and resume."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_chain import chains
from torch import nn

from optispace import RECIPES, Chain, Optimizer, assign_roles, sharded_state_bytes, state_bytes_for

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class LM(nn.Module):
    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.wte = nn.Embedding(30, 6, dtype=dtype)
        self.mix = nn.Linear(6, 6, dtype=dtype)
        self.mix2 = nn.Linear(6, 6, dtype=dtype)
        self.lm_head = nn.Linear(6, 30, bias=False, dtype=dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(torch.tanh(self.mix2(torch.tanh(self.mix(self.wte(ids))))))


def loss_step(model: nn.Module, opt: torch.optim.Optimizer, seed: int) -> None:
    ids = torch.randint(0, 30, (3, 5), generator=torch.Generator().manual_seed(seed))
    opt.zero_grad()
    logits = model(ids[:, :-1]).float()
    nn.functional.cross_entropy(logits.reshape(-1, 30), ids[:, 1:].reshape(-1)).backward()
    opt.step()


def test_one_param_group_per_role_with_chain_lr_and_hyperparameters() -> None:
    opt = Optimizer(LM(), "ember", lr=3e-3, role_lr={"embed": 1e-2}, beta2=0.99)
    groups = {g["role"]: g for g in opt.param_groups}
    assert list(groups) == ["embed", "head", "matrix", "vector"]
    assert groups["embed"]["chain"] == "second_moment(factored, beta2=0.99)"
    assert groups["matrix"]["chain"] == "momentum(0.9) > second_moment(full)"
    assert [groups[r]["lr"] for r in groups] == [1e-2, 3e-3, 3e-3, 3e-3]
    assert groups["vector"]["beta2"] == 0.99 and groups["vector"]["betas"] == (0.9, 0.999)


def test_groups_keep_parameter_names() -> None:
    opt = Optimizer(LM(), "adamw")
    names = [g["param_names"] for g in opt.param_groups]
    assert names == [["wte.weight"], ["lm_head.weight"], ["mix.weight", "mix2.weight"],
                     ["mix.bias", "mix2.bias"]]


def test_a_group_added_later_names_role_chain_and_lr() -> None:
    opt = Optimizer([("a", nn.Parameter(torch.zeros(3, 2)))], {"matrix": "momentum(0.9)"}, lr=0.1)
    extra = nn.Parameter(torch.zeros(4))
    opt.add_param_group({"params": [("b", extra)], "role": "vector", "chain": "sign", "lr": 0.5})
    assert opt.state_bytes() == {"matrix": 24, "vector": 0}
    extra.grad = torch.tensor([1.0, -2.0, 0.0, 3.0])
    opt.step()
    assert extra.tolist() == [-0.5, 0.5, 0.0, -0.5]
    with pytest.raises(ValueError, match="the group has no role, chain"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(2))], "lr": 0.1})
    with pytest.raises(ValueError, match="parameter 'c' .*orthogonalize"):
        opt.add_param_group({"params": [("c", nn.Parameter(torch.zeros(2)))], "role": "vector",
                             "chain": "orthogonalize", "lr": 0.1})


def test_recipe_lr_is_the_default() -> None:
    assert {g["lr"] for g in Optimizer(LM(), "rmsprop").param_groups} == {RECIPES["rmsprop"].lr}


def test_a_role_to_chain_mapping_is_a_recipe() -> None:
    recipe = {"embed": "sign", "head": "identity", "matrix": "momentum(0.9) > orthogonalize",
              "vector": Chain(())}
    opt = Optimizer(LM(), recipe, lr=0.1)
    assert [g["chain"] for g in opt.param_groups] == ["sign", "identity", "momentum(0.9) > orthogonalize",
                                                       "identity"]


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"recipe": "adamx"}, ["unknown recipe 'adamx'", "ember"]),
    ({"recipe": "adam", "beta1": 0.9}, ["unknown hyperparameter(s) beta1", "betas"]),
    ({"recipe": "adam", "betas": (0.9, 1.0)}, ["second_moment", "beta2=1.0", "[0, 1)"]),
    ({"recipe": "adam", "betas": 0.9}, ["betas=0.9", "sequence of 2"]),
    ({"recipe": "adam", "eps": -1e-8}, ["second_moment", "eps=-1e-08", ">= 0"]),
    ({"recipe": "adam", "lr": -1.0}, ["lr=-1.0", ">= 0"]),
    ({"recipe": "adam", "role_lr": {"hidden": 0.1}}, ["unknown role 'hidden'", "matrix"]),
    ({"recipe": "adam", "roles": {"mix.bias": "bias"}}, ["unknown role 'bias'"]),
    ({"recipe": {"embed": "sign", "head": "sign", "matrix": "sign"}, "lr": 0.1},
     ["no chain for role(s) vector"]),
    ({"recipe": {"embed": "sign", "head": "sign", "matrix": "sign", "vector": "sign", "hidden": "sign"},
      "lr": 0.1}, ["unknown role 'hidden'"]),
    ({"recipe": {r: "sign" for r in ("embed", "head", "matrix", "vector")}}, ["no lr for role 'embed'"]),
    ({"recipe": {r: "sign" for r in ("embed", "head", "matrix", "vector")}, "lr": 0.1, "eps": 1e-8},
     ["eps apply to named recipes"]),
    ({"recipe": {"embed": "sign", "head": "sign", "matrix": "sign", "vector": "orthogonalize"}, "lr": 0.1},
     ["'mix.bias'", "orthogonalize", "2-D"]),
    ({"recipe": {r: "momentum(0.9) > sgn" for r in ("embed", "head", "matrix", "vector")}, "lr": 0.1},
     ["column 17", "unknown primitive 'sgn'"]),
])
def test_mistakes_are_refused_when_the_optimizer_is_built(kwargs: dict, words: list[str]) -> None:
    with pytest.raises(ValueError) as e:
        Optimizer(LM(), **kwargs)
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_state_bytes_are_declared_and_allocated(recipe: str) -> None:
    model = LM()
    opt = Optimizer(model, recipe)
    shapes: dict[str, list] = {}
    for role, p in assign_roles(model).values():
        shapes.setdefault(role, []).append(tuple(p.shape))
    declared = state_bytes_for(shapes, recipe)
    assert opt.state_bytes() == declared
    loss_step(model, opt, 0)
    assert opt.state_bytes() == declared


role_shapes = st.fixed_dictionaries({
    "embed": st.lists(st.tuples(st.integers(1, 300), st.integers(1, 40)), min_size=1, max_size=2),
    "head": st.lists(st.tuples(st.integers(1, 300), st.integers(1, 40)), max_size=1),
    "matrix": st.lists(st.tuples(st.integers(1, 50), st.integers(1, 50)), max_size=3),
    "vector": st.lists(st.tuples(st.integers(1, 50)), max_size=3),
})


@settings(max_examples=40, deadline=None)
@given(role_shapes, st.integers(1, 70), st.sampled_from(list(RECIPES)))
def test_sharded_state_sums_to_at_least_one_process_and_world_1_is_unsharded(shapes, world, recipe) -> None:
    shapes = {role: group for role, group in shapes.items() if group}
    whole = state_bytes_for(shapes, recipe)
    sharded = sharded_state_bytes(shapes, world, recipe)
    assert sharded.total == {role: world * n for role, n in sharded.per_rank.items()}
    assert all(sharded.total[role] >= whole[role] >= sharded.per_rank[role] for role in shapes)
    assert sharded_state_bytes(shapes, 1, recipe).per_rank == whole


@pytest.mark.parametrize(("vocab", "world"), [(50304, 8), (50304, 64), (1001, 4), (3, 8)])
def test_a_sharded_table_costs_adam_2vd_over_n_and_ember_v_over_n_plus_d_per_rank(vocab, world) -> None:
    shapes, dim, rows = {"embed": [(vocab, 768)]}, 768, -(-vocab // world)  # FSDP2 pads to ceil(V/N) rows
    assert sharded_state_bytes(shapes, world, "adam").per_rank["embed"] == 4 * 2 * rows * dim
    assert sharded_state_bytes(shapes, world, "ember").per_rank["embed"] == 4 * (rows + dim + 1)
    with pytest.raises(ValueError, match="world: 0"):
        sharded_state_bytes(shapes, 0, "adam")


def test_state_is_fp32_for_bf16_parameters_and_the_update_is_computed_in_fp32() -> None:
    low, high = LM(torch.bfloat16), LM()
    high.load_state_dict({k: v.float() for k, v in low.state_dict().items()})
    opt_low, opt_high = Optimizer(low, "adamw", lr=1e-2), Optimizer(high, "adamw", lr=1e-2)
    ids = torch.randint(0, 30, (3, 5), generator=torch.Generator().manual_seed(0))
    logits = low(ids[:, :-1]).float().reshape(-1, 30)
    nn.functional.cross_entropy(logits, ids[:, 1:].reshape(-1)).backward()
    for p_low, p_high in zip(low.parameters(), high.parameters(), strict=True):
        p_high.grad = p_low.grad.float()
    opt_low.step()
    opt_high.step()
    assert all(v.dtype == torch.float32 for s in opt_low.state.values() for v in s.values()
               if isinstance(v, torch.Tensor))
    for p_low, p_high in zip(low.parameters(), high.parameters(), strict=True):
        assert p_low.dtype == torch.bfloat16
        assert torch.equal(p_low, p_high.to(torch.bfloat16))


def test_parameters_without_a_gradient_are_skipped() -> None:
    model = LM()
    opt = Optimizer(model, "adamw", lr=0.1)
    before = model.mix.weight.detach().clone()
    model.wte.weight.grad = torch.ones_like(model.wte.weight)
    opt.step()
    assert torch.equal(model.mix.weight, before)
    assert opt.state[model.mix.weight]["step"] == 0
    assert opt.state[model.wte.weight]["step"] == 1


def test_step_returns_the_closure_loss() -> None:
    model = LM()
    opt = Optimizer(model, "sgd", lr=0.1)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = model(torch.tensor([[1, 2]])).square().mean()
        loss.backward()
        return loss

    assert opt.step(closure) is not None


def test_sparse_gradients_are_refused() -> None:
    with pytest.raises(ValueError, match="module '' makes sparse gradients"):
        Optimizer(nn.Embedding(5, 2, sparse=True), "sgd")
    table = nn.Embedding(5, 2, sparse=True)
    opt = Optimizer(list(table.parameters()), "sgd")
    table(torch.tensor([1])).sum().backward()
    with pytest.raises(ValueError, match="sparse"):
        opt.step()


def _roundtrip(opt: Optimizer) -> dict:
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer)


@pytest.mark.parametrize("recipe", ["adamw", "ember", "muon", "adafactor", "lion"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_save_and_resume_continues_bit_for_bit(recipe: str, dtype: torch.dtype) -> None:
    straight = LM(dtype)
    opt = Optimizer(straight, recipe, lr=1e-2)
    for seed in range(3):
        loss_step(straight, opt, seed)
    saved_model = {k: v.clone() for k, v in straight.state_dict().items()}
    saved_opt = _roundtrip(opt)
    for seed in range(3, 6):
        loss_step(straight, opt, seed)

    resumed = LM(dtype)
    resumed.load_state_dict(saved_model)
    opt2 = Optimizer(resumed, recipe, lr=1e-2)
    opt2.load_state_dict(saved_opt)
    assert all(v.dtype == torch.float32 for s in opt2.state.values() for v in s.values()
               if isinstance(v, torch.Tensor))
    for seed in range(3, 6):
        loss_step(resumed, opt2, seed)
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


@settings(max_examples=20)
@given(chains, st.integers(0, 2**16))
def test_save_and_resume_is_bit_identical_for_any_chain(chain: Chain, seed: int) -> None:
    def run(opt: Optimizer, p: nn.Parameter, seeds: range) -> None:
        for s in seeds:
            p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(seed + s))
            opt.step()

    start = torch.randn(4, 3, generator=torch.Generator().manual_seed(seed))
    p = nn.Parameter(start.clone())
    opt = Optimizer([p], {"matrix": chain}, lr=1e-2)
    run(opt, p, range(2))
    saved_p, saved = p.detach().clone(), _roundtrip(opt)
    run(opt, p, range(2, 4))
    q = nn.Parameter(saved_p)
    opt2 = Optimizer([q], {"matrix": chain}, lr=1e-2)
    opt2.load_state_dict(saved)
    run(opt2, q, range(2, 4))
    assert torch.equal(p, q) or (p.isnan() == q.isnan()).all() and torch.equal(p.nan_to_num(), q.nan_to_num())


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_the_foreach_path_gives_the_same_bits(recipe: str) -> None:
    one, many = LM(), LM()
    many.load_state_dict(one.state_dict())
    opts = Optimizer(one, recipe, lr=1e-2, foreach=False), Optimizer(many, recipe, lr=1e-2, foreach=True)
    for seed in range(4):
        for model, opt in zip((one, many), opts, strict=True):
            loss_step(model, opt, seed)
    # One parameter of a group skips a step: the group's step counts (and corrections) then differ.
    for model, opt in zip((one, many), opts, strict=True):
        model.mix2.weight.grad = None
        opt.step()
        loss_step(model, opt, 5)
    for a, b in zip(one.parameters(), many.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_deep_copy_steps_like_the_original() -> None:
    model = LM()
    opt = Optimizer(model, "ember", lr=1e-2)
    loss_step(model, opt, 0)
    twin = copy.deepcopy((model, opt))
    loss_step(model, opt, 1)
    loss_step(twin[0], twin[1], 1)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin[0].parameters(), strict=True))


def test_a_state_dict_from_another_chain_is_refused() -> None:
    model = LM()
    saved = Optimizer(model, "adamw").state_dict()
    with pytest.raises(ValueError, match="build the optimizer with the recipe it was saved with"):
        Optimizer(model, "ember").load_state_dict(saved)


@pytest.mark.parametrize("params", [lambda m: m.parameters(), lambda m: [p for n, p in m.named_parameters()
                                                                         if n != "lm_head.weight"]])
def test_a_bare_parameter_iterator_is_refused_when_the_recipe_treats_token_tables_apart(params) -> None:
    with pytest.raises(ValueError, match=r"without names .*recipe 'ember' .*pass the model, "
                                         r"model.named_parameters\(\), or roles="):
        Optimizer(params(LM()), "ember")


def test_unrecognised_names_are_refused_when_the_recipe_treats_token_tables_apart() -> None:
    named = [(n.replace("wte", "table"), p) for n, p in LM().named_parameters()]
    with pytest.raises(ValueError, match="no parameter is named like a token table"):
        Optimizer(named, "muon")
    Optimizer(named, "adamw")  # the same chain on every role: nothing to tell apart


def test_a_bare_iterator_is_taken_when_roles_are_given_or_do_not_matter() -> None:
    model = LM()
    by_model = Optimizer(model.parameters(), "ember", roles=model).param_groups
    assert [g["chain"] for g in by_model] == [g["chain"] for g in Optimizer(model, "ember").param_groups]
    assert [g["role"] for g in Optimizer(model.parameters(), "adamw").param_groups] == ["matrix", "vector"]


def test_defaults_and_groups_hold_the_recipes_hyperparameters() -> None:
    opt = Optimizer(LM(), "adamw", lr=2e-3, eps=1e-6)
    assert opt.defaults == {"foreach": None, "fused": None, "betas": (0.9, 0.999), "eps": 1e-6,
                            "weight_decay": 1e-2, "lr": 2e-3}
    assert all(g["betas"] == (0.9, 0.999) and g["eps"] == 1e-6 for g in opt.param_groups)
    assert Optimizer(LM(), "muon").defaults["momentum"] == 0.95


def _torch_groups(model: nn.Module) -> list[dict]:
    """HF Trainer's split (no decay on biases and norms) with a group lr, as torch takes it."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    rest = [p for n, p in model.named_parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0, "lr": 3e-3}]


def test_torch_param_group_dicts_step_as_torch_adamw() -> None:
    from test_recipes import assert_params_close, make_model, train

    ours, ref = make_model(), make_model()
    opt = Optimizer(_torch_groups(ours), "adamw", lr=1e-2)
    assert [(g["role"], g["lr"], g["weight_decay"]) for g in opt.param_groups] == [
        ("matrix", 1e-2, 0.1), ("vector", 3e-3, 0.0)]
    train(ours, opt, steps=10)
    train(ref, torch.optim.AdamW(_torch_groups(ref), lr=1e-2), steps=10)
    assert_params_close(ours, ref, 1e-6)


def test_param_groups_take_a_role_and_named_parameters() -> None:
    model = LM()
    rest = [p for n, p in model.named_parameters() if n != "wte.weight"]
    opt = Optimizer([{"params": [model.wte.weight], "role": "embed", "lr": 0.5}, {"params": rest}], "ember",
                    lr=0.1)
    assert [(g["role"], g["lr"]) for g in opt.param_groups] == [("embed", 0.5), ("matrix", 0.1),
                                                                 ("vector", 0.1)]
    named = Optimizer([{"params": list(model.named_parameters()), "beta2": 0.9}], "ember")
    assert [g["role"] for g in named.param_groups] == ["embed", "head", "matrix", "vector"]
    assert named.param_groups[0]["chain"] == "second_moment(factored, beta2=0.9)"


@pytest.mark.parametrize(("groups", "words"), [
    (lambda m: [{"params": m.parameters(), "beta1": 0.9}],
     ["param group 0", "unknown hyperparameter(s) beta1"]),
    (lambda m: [{"params": [m.wte.weight]}, {"params": [m.wte.weight]}], ["also in param group 0"]),
    (lambda m: [{"params": [m.wte.weight], "role": "table"}], ["param group 0", "unknown role 'table'"]),
    (lambda m: [{"params": [m.wte.weight]}, {"params": [("b", m.mix.bias)]}], ["every group tensors"]),
    (lambda m: [{"lr": 0.1}], ["param group 0 has no 'params'"]),
])
def test_param_group_mistakes_name_the_group(groups, words: list[str]) -> None:
    with pytest.raises(ValueError) as e:
        Optimizer(groups(LM()), "adamw")
    assert all(w in str(e.value) for w in words)


@pytest.mark.parametrize(("recipe", "reference"),
                         [("adamw", torch.optim.AdamW), ("momentum", torch.optim.SGD)])
def test_one_cycle_lr_cycles_betas_and_momentum_as_on_torch(recipe: str, reference, caplog) -> None:
    from test_recipes import assert_params_close, make_model, train

    ours, ref = make_model(), make_model()
    opt = Optimizer(ours, recipe, lr=1e-2)
    ref_opt = reference(ref.parameters(), lr=1e-2, **({"momentum": 0.9} if recipe == "momentum" else {}))
    schedules = [torch.optim.lr_scheduler.OneCycleLR(o, max_lr=1e-2, total_steps=10) for o in (opt, ref_opt)]
    first = opt.param_groups[0]["chain"]
    with caplog.at_level("DEBUG", logger="optispace.optimizer"):
        train(ours, opt, schedules[0], steps=10)
    train(ref, ref_opt, schedules[1], steps=10)
    assert opt.param_groups[0]["chain"] != first  # the chain followed the cycled momentum
    assert opt.param_groups[0]["chain"] in caplog.text
    assert_params_close(ours, ref, 1e-6)


def test_a_scheduler_turning_momentum_on_allocates_its_state() -> None:
    from test_recipes import assert_params_close, make_model, train

    ours, ref = make_model(), make_model()
    opt, ref_opt = Optimizer(ours, "sgd", lr=1e-2), torch.optim.SGD(ref.parameters(), lr=1e-2)
    assert opt.param_groups[0]["chain"] == "identity"
    schedules = [torch.optim.lr_scheduler.OneCycleLR(o, max_lr=1e-2, total_steps=10) for o in (opt, ref_opt)]
    train(ours, opt, schedules[0], steps=10)
    train(ref, ref_opt, schedules[1], steps=10)
    assert "momentum.m" in opt.state[ours.wte.weight]
    assert_params_close(ours, ref, 1e-6)


def test_a_group_added_with_its_own_chain_keeps_it_when_hyperparameters_change() -> None:
    model, extra = LM(), nn.Parameter(torch.zeros(4))
    opt = Optimizer(model, "adamw")
    opt.add_param_group({"params": [("extra", extra)], "role": "vector", "chain": "sign", "lr": 0.1})
    for group in opt.param_groups:
        group["betas"] = (0.5, 0.999)
    extra.grad = torch.ones(4)
    opt.step()
    assert [g["chain"].split(" > ")[1] for g in opt.param_groups[:-1]] == ["momentum(0.5)"] * 4
    assert opt.param_groups[-1]["chain"] == "sign"


def test_resume_under_a_scheduler_cycling_betas_continues_bit_for_bit() -> None:
    def build(model: nn.Module) -> tuple[Optimizer, torch.optim.lr_scheduler.OneCycleLR]:
        opt = Optimizer(model, "ember", lr=1e-2)
        return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=6)

    def steps(model: nn.Module, opt: Optimizer, sched, seeds: range) -> None:
        for seed in seeds:
            loss_step(model, opt, seed)
            sched.step()

    straight = LM()
    opt, sched = build(straight)
    steps(straight, opt, sched, range(3))
    saved = ({k: v.clone() for k, v in straight.state_dict().items()}, _roundtrip(opt), sched.state_dict())
    steps(straight, opt, sched, range(3, 6))

    resumed = LM()
    resumed.load_state_dict(saved[0])
    opt2, sched2 = build(resumed)  # its chains are at the scheduler's first betas, the checkpoint's not
    opt2.load_state_dict(saved[1])
    sched2.load_state_dict(saved[2])
    steps(resumed, opt2, sched2, range(3, 6))
    assert all(torch.equal(a, b) for a, b in zip(straight.parameters(), resumed.parameters(), strict=True))
def test_chains_are_parsed_once_per_text_and_never_by_a_step(monkeypatch: pytest.MonkeyPatch) -> None:
    import optispace.optimizer as module

    model = LM()
    opt = Optimizer(model, "adamw", lr=1e-2)
    parsed: list[str] = []
    real = module.parse_chain.__wrapped__

    def counting(text: str) -> Chain:
        parsed.append(text)
        return real(text)

    monkeypatch.setattr(module, "parse_chain", counting)
    for seed in range(3):
        loss_step(model, opt, seed)
    assert parsed == []
    # A group whose text changes (a scheduler setting new betas re-derives it) is parsed once.
    group = opt.param_groups[2]
    group["betas"] = (0.8, 0.99)
    for seed in range(3, 6):
        loss_step(model, opt, seed)
    assert parsed == [str(RECIPES["adamw"].chains(betas=(0.8, 0.99))["matrix"])] == [group["chain"]]

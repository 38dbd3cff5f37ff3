"""Reference equality: every named recipe, composed from primitives, against its reference.

A small transformer-like model (token table, causal self-attention, MLP, norms, untied head) is
trained for 50 steps on Zipf-distributed token ids (so most table rows get no gradient on a step)
by the recipe and, from the same weights on the same batches, by its reference; the parameters
must agree to 1e-6 relative in fp32 (torch.optim.Muon runs Newton-Schulz in bf16: matched to 1e-6
over 5 steps, and within bf16's compounding over 50). Ember's reference is written out here from
the formulas of the Token Geometry paper (arXiv 2607.01455).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from lion_pytorch import Lion
from torch import nn

from optispace import RECIPES, Optimizer
from optispace.recipes import parse_variant
from optispace.roles import assign_roles

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

VOCAB, DIM, SEQ, BATCH, STEPS = 96, 16, 12, 4, 50


class TinyLM(nn.Module):
    """One pre-norm transformer block between an embedding table and an untied head."""

    def __init__(self) -> None:
        super().__init__()
        self.wte = nn.Embedding(VOCAB, DIM)
        self.ln1 = nn.LayerNorm(DIM)
        # No bias: a key bias gets an exactly-zero gradient (softmax ignores it), and Adam-like
        # methods would amplify the rounding noise left there into O(1) steps.
        self.qkv = nn.Linear(DIM, 3 * DIM, bias=False)
        self.proj = nn.Linear(DIM, DIM)
        self.ln2 = nn.LayerNorm(DIM)
        self.fc = nn.Linear(DIM, 2 * DIM)
        self.out = nn.Linear(2 * DIM, DIM)
        self.lm_head = nn.Linear(DIM, VOCAB, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.wte(ids)
        q, k, v = self.qkv(self.ln1(h)).chunk(3, dim=-1)
        h = h + self.proj(F.scaled_dot_product_attention(q, k, v, is_causal=True))
        h = h + self.out(F.gelu(self.fc(self.ln2(h))))
        return self.lm_head(h)


def zipf_batches(steps: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    probs = 1.0 / torch.arange(1, VOCAB + 1, dtype=torch.float64) ** 1.3
    return [torch.multinomial(probs, BATCH * (SEQ + 1), replacement=True, generator=gen).view(BATCH, SEQ + 1)
            for _ in range(steps)]


BATCHES = zipf_batches(STEPS)


def make_model(seed: int = 0) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM()


def train(model: nn.Module, opt, scheduler=None, steps: int = STEPS) -> None:
    """``steps`` steps of next-token cross-entropy; ``opt`` has ``step()`` and ``zero_grad()``."""
    for ids in BATCHES[:steps]:
        opt.zero_grad()
        logits = model(ids[:, :-1])
        F.cross_entropy(logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1)).backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()


def assert_params_close(ours: nn.Module, ref: nn.Module, rtol: float) -> None:
    """Per tensor, the largest difference is at most ``rtol`` times the reference's largest entry."""
    start, moved = make_model(), 0.0
    for (name, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters(), strict=True):
        scale = b.abs().max().item()
        err = (a - b).abs().max().item()
        assert err <= rtol * scale, f"{name}: max |ours - ref| = {err:.3g}, {err / scale:.3g} relative"
        moved = max(moved, (b - start.get_parameter(name)).abs().max().item())
    assert moved > 1e-3, "the reference barely moved: the comparison would prove nothing"


def groups_by_role(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    out: dict[str, list[nn.Parameter]] = {}
    for role, p in assign_roles(model).values():
        out.setdefault(role, []).append(p)
    return out


class Combined:
    """Several reference optimizers stepped together (Muon on matrices, AdamW on the rest)."""

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = optimizers

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def zero_grad(self) -> None:
        for o in self.optimizers:
            o.zero_grad()


class EmberReference:
    """Ember as the Token Geometry paper states it, on the token tables; torch AdamW on everything else.

    r, c, s: EMAs (beta2) of the row means, column means and global mean of g^2, each bias-corrected;
    v = r[i] c[j] / s; p *= 1 - lr wd; p -= lr g / (sqrt(v) + eps). ``per_row``: v is corrected by
    1 - beta2^n[i] instead, n[i] the steps on which row i had a nonzero gradient.
    """

    def __init__(self, model: nn.Module, lr: float, beta2: float, eps: float, wd: float,
                 betas: tuple[float, float], per_row: bool = False) -> None:
        roles = groups_by_role(model)
        self.tables = roles["embed"] + roles["head"]
        self.stats = [[torch.zeros(p.shape[0]), torch.zeros(p.shape[1]), torch.zeros(())]
                      for p in self.tables]
        self.seen = [torch.zeros(p.shape[0]) for p in self.tables]
        self.adamw = torch.optim.AdamW(roles["matrix"] + roles["vector"], lr=lr, betas=betas, eps=eps,
                                       weight_decay=wd)
        self.lr, self.beta2, self.eps, self.wd, self.t, self.per_row = lr, beta2, eps, wd, 0, per_row

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        for p, (r, c, s), seen in zip(self.tables, self.stats, self.seen, strict=True):
            g2 = p.grad.square()
            r.mul_(self.beta2).add_((1 - self.beta2) * g2.mean(dim=1))
            c.mul_(self.beta2).add_((1 - self.beta2) * g2.mean(dim=0))
            s.mul_(self.beta2).add_((1 - self.beta2) * g2.mean())
            seen.add_(g2.amax(dim=1) > 0)
            if self.per_row:
                v = r[:, None] * c[None, :] / s / (1 - self.beta2 ** seen.clamp(min=1))[:, None]
            else:
                correction = 1 - self.beta2**self.t
                r_hat, c_hat, s_hat = r / correction, c / correction, s / correction
                v = r_hat[:, None] * c_hat[None, :] / s_hat
            p.mul_(1 - self.lr * self.wd)
            p.sub_(self.lr * p.grad / (v.sqrt() + self.eps))
        self.adamw.step()

    def zero_grad(self) -> None:
        for p in self.tables:
            p.grad = None
        self.adamw.zero_grad()


def _muon_reference(model: nn.Module, lr: float, wd: float) -> Combined:
    roles = groups_by_role(model)
    return Combined(torch.optim.Muon(roles["matrix"], lr=lr, weight_decay=wd),
                    torch.optim.AdamW(roles["embed"] + roles["head"] + roles["vector"], lr=lr))


# (recipe, our arguments, reference factory, relative tolerance)
CASES = [
    ("sgd", {"lr": 0.5, "weight_decay": 0.01},
     lambda m: torch.optim.SGD(m.parameters(), lr=0.5, weight_decay=0.01), 1e-6),
    ("momentum", {"lr": 0.1, "dampening": 0.1, "weight_decay": 0.01},
     lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01), 1e-6),
    ("nesterov", {"lr": 0.1, "weight_decay": 0.01},
     lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01), 1e-6),
    ("adam", {"lr": 1e-2, "weight_decay": 0.01},
     lambda m: torch.optim.Adam(m.parameters(), lr=1e-2, weight_decay=0.01), 1e-6),
    ("adamw", {"lr": 1e-2, "betas": (0.8, 0.99), "weight_decay": 0.1},
     lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, betas=(0.8, 0.99), weight_decay=0.1), 1e-6),
    ("rmsprop", {"lr": 1e-3, "momentum": 0.5, "weight_decay": 0.01},
     lambda m: torch.optim.RMSprop(m.parameters(), lr=1e-3, momentum=0.5, weight_decay=0.01), 1e-6),
    ("adafactor", {"lr": 1e-2, "weight_decay": 0.01},
     lambda m: torch.optim.Adafactor(m.parameters(), lr=1e-2, weight_decay=0.01), 1e-6),
    ("lion", {"lr": 1e-3, "weight_decay": 0.1},
     lambda m: Lion(m.parameters(), lr=1e-3, weight_decay=0.1), 1e-6),
    ("signum", {"lr": 1e-3, "weight_decay": 0.1},
     lambda m: Lion(m.parameters(), lr=1e-3, betas=(0.9, 0.9), weight_decay=0.1), 1e-6),
    # bf16 Newton-Schulz turns fp32 rounding differences (from AdamW elsewhere) into bf16 rounding
    # flips, which compound over 50 steps to 0.5-2% (seeds 0-2); over 5 steps they match to 1e-6.
    ("muon", {"lr": 2e-2, "adamw_weight_decay": 0.01}, lambda m: _muon_reference(m, lr=2e-2, wd=0.1), 5e-2),
    ("ember", {"lr": 1e-2, "weight_decay": 0.01},
     lambda m: EmberReference(m, lr=1e-2, beta2=0.999, eps=1e-8, wd=0.01, betas=(0.9, 0.999)), 1e-6),
    ("ember", {"lr": 1e-2, "weight_decay": 0.01, "bias_correction": "row"},
     lambda m: EmberReference(m, lr=1e-2, beta2=0.999, eps=1e-8, wd=0.01, betas=(0.9, 0.999), per_row=True),
     1e-6),
]


def test_every_recipe_has_a_reference_case() -> None:
    assert sorted({case[0] for case in CASES}) == sorted(RECIPES)


@pytest.mark.parametrize(("recipe", "kwargs", "reference", "rtol"), CASES,
                         ids=[c[0] + ("_row" if "bias_correction" in c[1] else "") for c in CASES])
def test_recipe_matches_reference(recipe: str, kwargs: dict, reference, rtol: float) -> None:
    ours, ref = make_model(), make_model()
    opt = Optimizer(ours, recipe, **kwargs)
    ref_opt = reference(ref)
    train(ours, opt)
    train(ref, ref_opt)
    assert_params_close(ours, ref, rtol)


@pytest.mark.parametrize("recipe", ["adamw", "adafactor"])
def test_recipe_follows_a_torch_lr_scheduler(recipe: str) -> None:
    ours, ref = make_model(), make_model()
    opt = Optimizer(ours, recipe, lr=1e-2)
    ref_opt = (torch.optim.AdamW if recipe == "adamw" else torch.optim.Adafactor)(ref.parameters(), lr=1e-2)

    def schedule(o):
        return torch.optim.lr_scheduler.LambdaLR(o, lambda t: math.cos(t / STEPS * math.pi / 2))

    train(ours, opt, schedule(opt))
    train(ref, ref_opt, schedule(ref_opt))
    assert_params_close(ours, ref, 1e-6)


def test_muon_is_torch_muon_until_bf16_rounding_compounds() -> None:
    ours, ref = make_model(), make_model()
    opt = Optimizer(ours, "muon", lr=2e-2, adamw_weight_decay=0.01)
    ref_opt = _muon_reference(ref, lr=2e-2, wd=0.1)
    train(ours, opt, steps=5)
    train(ref, ref_opt, steps=5)
    assert_params_close(ours, ref, 1e-6)


def test_muon_fp32_option_runs_newton_schulz_in_fp32() -> None:
    bf16, fp32 = make_model(), make_model()
    opt16 = Optimizer(bf16, "muon", lr=2e-2)
    opt32 = Optimizer(fp32, "muon", lr=2e-2, ns_dtype="float32")
    assert "dtype=float32" in opt32.param_groups[2]["chain"]
    for model, o in ((bf16, opt16), (fp32, opt32)):
        train(model, o, steps=5)
    assert_params_close(fp32, bf16, 5e-2)
    assert not torch.equal(fp32.qkv.weight, bf16.qkv.weight)


def test_recipe_defaults_follow_the_references() -> None:
    torch_defaults = {
        "adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "rmsprop": torch.optim.RMSprop,
        "adafactor": torch.optim.Adafactor, "sgd": torch.optim.SGD,
    }
    for name, cls in torch_defaults.items():
        ref = cls([nn.Parameter(torch.zeros(2))]).defaults
        recipe = RECIPES[name]
        assert recipe.lr == ref["lr"], name
        for key, value in recipe.defaults.items():
            assert ref[key] == value, (name, key)
    muon = torch.optim.Muon([nn.Parameter(torch.zeros(2, 2))]).defaults
    for key in ("momentum", "nesterov", "weight_decay", "ns_coefficients", "eps", "ns_steps", "adjust_lr_fn"):
        assert RECIPES["muon"].defaults[key] == muon[key], key
    lion = Lion([nn.Parameter(torch.zeros(2))]).defaults
    assert (RECIPES["lion"].lr, RECIPES["lion"].defaults["betas"]) == (lion["lr"], lion["betas"])


def test_ember_keeps_o_of_v_plus_d_state_on_tables() -> None:
    model = copy.deepcopy(make_model())
    opt = Optimizer(model, "ember")
    assert opt.state_bytes()["embed"] == 4 * (VOCAB + DIM + 1)
    assert opt.state_bytes()["head"] == 4 * (VOCAB + DIM + 1)


def test_ember_corrects_bias_per_step_by_default_and_per_row_when_asked() -> None:
    ember = RECIPES["ember"]
    assert ember.defaults["bias_correction"] == "step"
    reference = {role: str(chain) for role, chain in ember.chains().items()}
    row = {role: str(chain) for role, chain in ember.chains(bias_correction="row").items()}
    assert reference["embed"] == reference["head"] == "second_moment(factored)"
    assert row["embed"] == row["head"] == "second_moment(factored, bias_correction=row)"
    assert (row["matrix"], row["vector"]) == (reference["matrix"], reference["vector"])
    with pytest.raises(ValueError, match="bias_correction='rows' is not allowed; bias_correction must be"):
        ember.chains(bias_correction="rows")


def test_ember_per_row_keeps_one_count_per_row_more() -> None:
    opt = Optimizer(make_model(), "ember", bias_correction="row")
    assert opt.state_bytes()["embed"] == 4 * (VOCAB + DIM + 1) + 4 * VOCAB


@pytest.mark.parametrize(("text", "recipe", "hyperparameters", "lr"), [
    ("ember", "ember", {}, None),
    (" ember(lr=3e-3, bias_correction=row) ", "ember", {"bias_correction": "row"}, 3e-3),
    ("adamw(betas=(0.9, 0.95), weight_decay=0)", "adamw", {"betas": (0.9, 0.95), "weight_decay": 0}, None),
])
def test_a_variant_is_a_recipe_with_some_hyperparameters_given(text: str, recipe: str, hyperparameters: dict,
                                                               lr: float | None) -> None:
    variant = parse_variant(text)
    assert (variant.recipe.name, variant.hyperparameters, variant.lr) == (recipe, hyperparameters, lr)


@pytest.mark.parametrize(("text", "message"), [
    ("embr(lr=1e-3)", "unknown recipe 'embr'"),
    ("ember(lr=-1)", "lr=-1 is not allowed"),
    ("ember(bias_correction=rows)", "bias_correction='rows' is not allowed"),
    ("ember(beta1=0.9)", "unknown hyperparameter"),
    ("ember(lr=1e-3", "column 14: expected ',', found the end of the text"),
    ("ember(3e-3)", "column 7: expected key=value"),
    ("ember(beta2=2.0)", "recipe 'ember': chain .* beta2=2.0 is not allowed"),
])
def test_a_variant_mistake_is_one_message(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_variant(text)

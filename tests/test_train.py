"""The training loop: it learns, it is bit-reproducible on CPU, it resumes exactly, it stops on
divergence without raising, and it calls its hooks."""

import dataclasses
import json
import math
import sysconfig
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from optispace.errors import UserError
from optispace.proxies import TIERS, RunRecord, TrainConfig, train
from optispace.proxies.train import lr_multiplier

TINY = TIERS["tiny"]
ZIPF = "zipf:n=20000"


def tiny(**overrides) -> TrainConfig:
    settings = {"recipe": "adamw", "proxy": "tiny", "data": ZIPF, "lr": 3e-3, "eval_every": 10,
                "eval_batches": 2, "tokens": 40 * TINY.tokens_per_step} | overrides
    return TrainConfig(**settings)


def losses(record: RunRecord) -> list[tuple]:
    return [(p["step"], p["tokens"], p["train_loss"], p["val_loss"]) for p in record.curve]


def test_tiny_tier_learns_real_text(tmp_path):
    corpus = tmp_path / "text"
    corpus.mkdir()
    for path in sorted(Path(sysconfig.get_paths()["stdlib"], "json").glob("*.py")):
        (corpus / path.name).write_text(path.read_text())
    record = train(tiny(data=str(corpus), tokens=None, cache_dir=str(tmp_path / "cache"), eval_every=50),
                   progress=False)
    assert record.final_val_loss < math.log(TINY.model.vocab_size) - 1.0
    assert record.curve[0]["val_loss"] > record.final_val_loss
    assert [p["step"] for p in record.curve] == [50, 100, 150, 200]
    assert record.corpus["train_tokens"] > 0 and len(record.corpus["fingerprint"]) == 16
    assert record.config["steps"] == 200 and record.config["tokens_per_step"] == TINY.tokens_per_step
    assert record.tokens_per_s > 0 and record.wall_time_s > 0 and record.device == "cpu"
    assert json.loads(record.to_json())["curve"] == record.curve


def test_cpu_reruns_are_bit_identical_and_seeds_differ():
    a, b = train(tiny(), progress=False), train(tiny(), progress=False)
    assert losses(a) == losses(b)
    c = train(tiny(seed=1), progress=False)
    assert losses(c) != losses(a)


def test_resume_continues_bit_for_bit(tmp_path):
    full = train(tiny(), progress=False)
    ckpt = tmp_path / "run.pt"

    class Interrupt(Exception):
        pass

    def stop_at_20(step, tokens, val_loss):
        if step == 20:
            raise Interrupt

    with pytest.raises(Interrupt):  # whatever on_eval raises (e.g. optuna.TrialPruned) propagates
        train(tiny(), on_eval=stop_at_20, progress=False, checkpoint=ckpt)
    resumed = train(tiny(), progress=False, resume=ckpt)
    assert losses(resumed) == losses(full)
    assert resumed.final_val_loss == full.final_val_loss


def test_resume_refuses_another_config(tmp_path):
    ckpt = tmp_path / "run.pt"
    train(tiny(tokens=10 * TINY.tokens_per_step), progress=False, checkpoint=ckpt)
    with pytest.raises(UserError, match="lr"):
        train(tiny(tokens=10 * TINY.tokens_per_step, lr=1e-3), progress=False, resume=ckpt)
    with pytest.raises(UserError, match="does not exist"):
        train(tiny(), progress=False, resume=tmp_path / "missing.pt")


class Poison:
    """Sets the first matrix to NaN after step 3, so step 4's loss is not finite."""

    name = "poison"

    def on_after_step(self, step, model, optimizer, batch):
        if step == 3:
            with torch.no_grad():
                model.lm_head.weight.fill_(math.nan)


def test_non_finite_loss_stops_at_its_step():
    record = train(tiny(eval_every=2), callbacks=[Poison()], progress=False)
    assert (record.diverged, record.diverged_step, record.final_val_loss) == ("non-finite loss", 4, None)
    assert [p["step"] for p in record.curve] == [2]


def test_loss_above_bound_stops_without_raising():
    # an Adam step of lr 50 moves every weight by about 50: the next loss is far above 2 ln V
    record = train(tiny(lr=50.0, warmup=0.0, grad_clip=None), progress=False)
    assert (record.diverged, record.diverged_step, record.final_val_loss) == ("loss above bound", 2, None)
    assert record.curve == []


class Recorder:
    name = "recorder"

    def __init__(self):
        self.calls = []

    def on_start(self, model, optimizer, roles, data):
        self.calls.append(("start", sorted({role for role, _ in roles.values()})))

    def on_after_backward(self, step, model, optimizer, batch):
        assert all(p.grad is not None for p in model.parameters())
        self.calls.append(("backward", step))

    def on_after_step(self, step, model, optimizer, batch):
        self.calls.append(("step", step))

    def on_end(self, record):
        return {"value": len(self.calls)}


def test_callback_hooks_run_in_order_and_on_end_lands_in_probes():
    rec = Recorder()
    record = train(tiny(tokens=3 * TINY.tokens_per_step), callbacks=[rec], progress=False)
    steps = [(hook, step) for step in (1, 2, 3) for hook in ("backward", "step")]
    assert rec.calls == [("start", ["embed", "head", "matrix", "vector"]), *steps]
    assert record.probes == {"recorder": {"value": 7}}


def test_on_eval_sees_every_evaluation():
    seen = []
    record = train(tiny(tokens=25 * TINY.tokens_per_step), on_eval=lambda *a: seen.append(a), progress=False)
    assert seen == [(p["step"], p["tokens"], p["val_loss"]) for p in record.curve]
    assert [s for s, _, _ in seen] == [10, 20, 25]  # the last step is always evaluated


def test_callbacks_see_every_evaluation_with_its_speed_and_stderr_gets_one_log_line_each(caplog, monkeypatch):
    points = []

    class Evals:
        def on_eval(self, point):
            points.append(point)

    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    with caplog.at_level("INFO", logger="optispace.train"):
        record = train(tiny(tokens=25 * TINY.tokens_per_step), callbacks=[Evals()], progress=False)
    assert [{k: v for k, v in p.items() if k != "tokens_per_s"} for p in points] == record.curve
    assert all(p["tokens_per_s"] > 0 for p in points)
    lines = [r.getMessage() for r in caplog.records if r.name == "optispace.train"]
    assert [line.split(":")[0] for line in lines] == ["step 10/25", "step 20/25", "step 25/25"]
    assert f"val loss {record.final_val_loss:.4f}" in lines[-1] and "tokens/s" in lines[-1]


def test_no_log_lines_on_a_terminal(caplog, monkeypatch):
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    with caplog.at_level("INFO", logger="optispace.train"):
        train(tiny(tokens=10 * TINY.tokens_per_step), progress=False)
    assert not [r for r in caplog.records if r.name == "optispace.train"]


@given(schedule=st.sampled_from(["cosine", "linear", "wsd", "constant"]), steps=st.integers(1, 300),
       warmup=st.floats(0, 0.5))
def test_schedule_warms_up_then_decays_without_reaching_zero(schedule, steps, warmup):
    factors = [lr_multiplier(schedule, warmup, steps, s) for s in range(1, steps + 1)]
    warm = math.ceil(warmup * steps)
    assert all(0 < f <= 1 for f in factors)
    assert factors[:warm] == sorted(factors[:warm])
    assert factors[warm:] == sorted(factors[warm:], reverse=True)
    if warm < steps:
        assert factors[warm] == 1.0


def test_wsd_is_stable_until_the_last_fifth():
    factors = [lr_multiplier("wsd", 0.1, 100, s) for s in range(1, 101)]
    assert factors[10:80] == [1.0] * 70 and factors[-1] < 0.1


BAD = [("proxy", "huge"), ("tokens", 0), ("lr", -1.0), ("schedule", "step"), ("warmup", 1.0),
       ("eval_every", 0), ("device", "tpu"), ("seed", -1)]


@pytest.mark.parametrize("field, value", BAD)
def test_bad_config_names_the_field(field, value):
    with pytest.raises(UserError, match=f"TrainConfig.{field}"):
        dataclasses.replace(tiny(), **{field: value})


def test_recipe_lrs_and_state_bytes_come_from_the_optimizer():
    record = train(tiny(recipe="ember", lr=None, role_lr={"embed": 1e-2}, tokens=2 * TINY.tokens_per_step),
                   progress=False)
    v, d = TINY.model.vocab_size, TINY.model.dim
    assert set(record.state_bytes) == {"embed", "head", "matrix", "vector"}
    assert record.state_bytes["embed"] < 4 * (v + d + 8)  # Ember's O(V + D) fp32 state on the table
    assert record.state_bytes["matrix"] > 2 * 4 * d * d  # AdamW's two moments on the body
    with pytest.raises(UserError, match="unknown recipe"):
        train(tiny(recipe="nonesuch"), progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("compile_model", [False, True])
def test_cuda_run_with_bf16_autocast(compile_model):
    record = train(tiny(device="cuda", compile=compile_model), progress=False)
    assert record.device.startswith("cuda") and record.diverged is None
    assert record.final_val_loss < math.log(TINY.model.vocab_size) - 0.5


# Losses of tiny() with seed 0, as ``float.hex``, from the training loop before regimes existed (commit
# 9620d54): the default regime must keep pretraining bit for bit.
COMMITTED = [(10, "0x1.66b5bc0000000p+2", "0x1.62b82c0000000p+2"),
             (20, "0x1.4005700000000p+2", "0x1.3e32ef0000000p+2"),
             (30, "0x1.36c5240000000p+2", "0x1.2f0ef50000000p+2"),
             (40, "0x1.35395a0000000p+2", "0x1.2ca5b10000000p+2")]


def test_pretrain_regime_keeps_the_committed_losses():
    record = train(tiny(), progress=False)
    assert [(p["step"], p["train_loss"].hex(), p["val_loss"].hex()) for p in record.curve] == COMMITTED
    assert record.regime == "pretrain" and record.objective == "val_loss" and record.metrics == {}
    assert record.config["regime"] == "pretrain" and record.config["model"] == dataclasses.asdict(TINY.model)
    assert set(record.curve[0]) == {"step", "tokens", "train_loss", "val_loss", "elapsed_s"}


def test_a_checkpoint_from_before_the_regimes_resumes(tmp_path):
    ckpt = tmp_path / "run.pt"
    full = train(tiny(tokens=10 * TINY.tokens_per_step), progress=False, checkpoint=ckpt)
    state = torch.load(ckpt, weights_only=False)
    for key in ("regime", "init", "pairs", "new_rows", "task", "group_size", "clip", "kl",
                "updates_per_batch", "format_steps", "shape"):
        del state["config"][key]
    torch.save(state, ckpt)  # as the loop wrote it before these settings existed
    assert losses(train(tiny(tokens=10 * TINY.tokens_per_step), progress=False, resume=ckpt)) == losses(full)


def test_shape_overrides_the_tiers_model_and_batch():
    record = train(tiny(shape={"dim": 16, "heads": 2, "batch_size": 4}, tokens=8 * 4 * 32), progress=False)
    assert record.config["model"]["dim"] == 16 and record.config["batch_size"] == 4
    assert record.config["steps"] == 8 and record.curve[-1]["tokens"] == 8 * 4 * 32


@pytest.mark.parametrize("shape", [{"dim": 30}, {"width": 16}])
def test_a_shape_that_is_no_model_is_refused(shape):
    with pytest.raises(UserError, match="TrainConfig.shape: "):
        tiny(shape=shape)

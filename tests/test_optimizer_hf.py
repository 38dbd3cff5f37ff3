"""The optimizer under Hugging Face's Trainer: given as ``optimizers=(opt, sched)`` and as
``optimizer_cls_and_kwargs``, a run resumed from its step-3 checkpoint has the losses of an
uninterrupted run (test-only dependency: transformers with accelerate)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_recipes import SEQ, VOCAB, make_model, zipf_batches
from torch import nn

transformers = pytest.importorskip("transformers", reason="transformers is not installed (test-only)")
pytest.importorskip("accelerate", reason="accelerate (which Trainer needs) is not installed (test-only)")

from optispace import Optimizer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

STEPS, CHECKPOINT = 6, 3


class CausalLM(nn.Module):
    """The reference-test model behind Trainer's interface: ``input_ids``, ``labels`` -> loss."""

    def __init__(self) -> None:
        super().__init__()
        self.lm = make_model()

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.lm(input_ids)
        return {"loss": F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1)), "logits": logits}


DATA = [{"input_ids": ids[:SEQ], "labels": ids[1:]} for batch in zipf_batches(STEPS, seed=1) for ids in batch]


def _losses(out: Path, how: str, resume: bool) -> list[tuple[int, float]]:
    model = CausalLM()
    args = transformers.TrainingArguments(
        output_dir=str(out), max_steps=STEPS, per_device_train_batch_size=4, save_steps=CHECKPOINT,
        save_strategy="steps", logging_steps=1, report_to="none", use_cpu=True, seed=0,
        dataloader_num_workers=0, disable_tqdm=True, weight_decay=0.01)
    if how == "optimizers":
        opt = Optimizer(model, "ember", lr=1e-2)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=STEPS)
        kwargs = {"optimizers": (opt, sched)}
    else:
        kwargs = {"optimizer_cls_and_kwargs": (Optimizer, {"recipe": "ember", "roles": model, "lr": 1e-2})}
    trainer = transformers.Trainer(model=model, args=args, train_dataset=DATA, **kwargs)
    trainer.train(resume_from_checkpoint=str(out / f"checkpoint-{CHECKPOINT}") if resume else None)
    return [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]


@pytest.mark.parametrize("how", ["optimizers", "optimizer_cls_and_kwargs"])
def test_a_trainer_run_resumed_from_its_checkpoint_has_the_same_losses(how: str, tmp_path: Path) -> None:
    straight = _losses(tmp_path, how, resume=False)
    assert [step for step, _ in straight] == list(range(1, STEPS + 1))
    resumed = _losses(tmp_path, how, resume=True)
    assert resumed[-(STEPS - CHECKPOINT):] == straight[CHECKPOINT:]

"""Update-size outliers on constructed updates whose outlier is known."""

import pytest
import torch

from optispace.probes import PROBES, build
from optispace.probes.outliers import OutlierProbe, phase_summary, tail, update_outliers


def test_an_outlier_row_is_found_with_its_ratio():
    update = torch.ones(100)
    update[37] = 500.0
    grad = torch.ones(100)
    in_batch = torch.zeros(100, dtype=torch.bool)
    in_batch[30:60] = True
    found = update_outliers(update, grad, in_batch)
    assert found["batch"]["row"] == 37 and found["batch"]["max"] == pytest.approx(500.0)
    assert found["moved"]["row"] == 37 and found["moved"]["median"] == 1.0
    assert found["per_grad"]["row"] == 37


def test_per_grad_ratio_separates_a_large_gradient_from_an_oversized_step():
    # row 3 moves 10x because its gradient is 10x: per unit of gradient it is typical; row 5 is not
    update, grad = torch.ones(8), torch.ones(8)
    update[3], grad[3] = 10.0, 10.0
    update[5] = 4.0
    found = update_outliers(update, grad, torch.ones(8, dtype=torch.bool))
    assert found["batch"]["row"] == 3
    assert found["per_grad"]["row"] == 5 and found["per_grad"]["max"] == pytest.approx(4.0)


def test_empty_or_still_populations_have_no_tail():
    assert tail(torch.zeros(4), torch.ones(4, dtype=torch.bool)) is None
    assert tail(torch.ones(4), torch.zeros(4, dtype=torch.bool)) is None
    assert tail(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([True, True, True]))["p99"] == pytest.approx(1.49)


def test_phase_summary_splits_early_and_late():
    series = [{"batch": {"max": m, "p99": m / 2}} for m in (1.0, 3.0, 100.0, 50.0)] + [{"batch": None}]
    assert phase_summary(series, "batch") == {
        "early_max": 3.0,
        "early_p99": 0.5,
        "late_max": 100.0,
        "late_p99": 25.0,
    }


def test_probe_finds_the_rare_row_that_takes_an_oversized_step():
    vocab, every = 16, 2
    table = torch.nn.Parameter(torch.zeros(vocab, 4))
    # a real optimizer whose param groups carry a role, as optispace.Optimizer's do
    opt = torch.optim.SGD([{"role": "embed", "params": [table]}], lr=0.0)
    probe = OutlierProbe(every=every)
    probe.on_start(None, opt, None, None)
    for step in range(1, 7):
        x = torch.tensor([[1, 2, 3, 15 if step == 5 else 4]])
        table.grad = torch.zeros(vocab, 4)
        table.grad[x[0]] = 1.0
        probe.on_after_backward(step, None, opt, (x, x))
        with torch.no_grad():  # a step of 0.1 per seen row, 30x for token 15 on its first appearance
            table -= 0.1 * table.grad * torch.where(torch.arange(vocab) == 15, 30.0, 1.0).view(-1, 1)
        probe.on_after_step(step, None, opt, (x, x))
    result = probe.on_end(None)
    assert [r["step"] for r in result["series"]] == [1, 3, 5]
    late = result["series"][-1]["batch"]
    assert late["row"] == 15 and late["max"] == pytest.approx(30.0)
    assert (late["seen"], late["first_seen"], late["previously_seen"]) == (1, 5, -1)
    assert result["series"][0]["batch"]["max"] == pytest.approx(1.0)
    assert result["value"] == pytest.approx(30.0)


def test_build_names_the_known_probes_on_a_typo():
    assert [p.name for p in build(["ray", "outliers"])] == ["ray", "outliers"]
    with pytest.raises(ValueError, match="known probes: ray, geometry, outliers"):
        build(["rays"])
    assert set(PROBES) == {"ray", "geometry", "outliers"}

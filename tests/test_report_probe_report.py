"""The token-geometry report, written from probes run on a simulated training loop."""

import pytest
import torch

from optispace.probes import build
from optispace.report.probe_report import read_runs, write_probe_report

VOCAB, DIM = 24, 4


def _simulated_run(recipe: str, seed: int) -> dict:
    """Rows of the batch's tokens get random gradients; 'line' moves them along fixed directions."""
    g = torch.Generator().manual_seed(seed)
    params = {"embed": torch.zeros(VOCAB, DIM), "head": torch.zeros(VOCAB, DIM), "vector": torch.zeros(DIM)}
    # a real optimizer whose param groups carry a role, as optispace.Optimizer's do
    opt = torch.optim.SGD([{"role": role, "params": [p]} for role, p in params.items()], lr=0.0)
    directions = torch.randn(VOCAB, DIM, generator=g)
    probes = build(["ray", "geometry", "outliers"])
    for probe in probes:
        getattr(probe, "on_start", lambda *a: None)(None, opt, None, None)
    for step in range(1, 41):
        x = torch.randint(0, VOCAB // (1 + step % 3), (2, 5), generator=g)  # low ids are frequent
        for p in params.values():
            p.grad = torch.randn(p.shape, generator=g)
        params["embed"].grad[~torch.isin(torch.arange(VOCAB), x)] = 0
        for probe in probes:
            getattr(probe, "on_after_backward", lambda *a: None)(step, None, opt, (x, x))
        for role, p in params.items():
            p -= 0.01 * (directions if recipe == "line" and role != "vector" else p.grad)
        for probe in probes:
            getattr(probe, "on_after_step", lambda *a: None)(step, None, opt, (x, x))
    return {
        "recipe": recipe,
        "seed": seed,
        "final_val_loss": 3.0,
        "diverged": None,
        "tokens_per_s": 100.0,
        "probes": {probe.name: probe.on_end(None) for probe in probes},
    }


@pytest.mark.slow
def test_report_has_every_section_figure_and_frame_and_is_deterministic(tmp_path):
    runs = [_simulated_run(recipe, seed) for recipe in ("line", "noise") for seed in (0, 1)]
    first = write_probe_report(runs, tmp_path / "a", "# Token geometry\n")
    write_probe_report(runs, tmp_path / "b", "# Token geometry\n")
    text = first.read_text()
    for heading in (
        "## Runs",
        "## 1. Do token rows",
        "## 2. Update-size outliers",
        "## 3. Gradient geometry",
    ):
        assert heading in text
    names = (
        "README.md",
        "runs.json",
        "ray_fit.png",
        "outlier_ratio.png",
        "autocorrelation.png",
        "ray.parquet",
    )
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert read_runs(tmp_path / "a") == ("# Token geometry\n", runs)


def test_straight_updates_beat_their_null_and_random_ones_do_not():
    line, noise = _simulated_run("line", 0), _simulated_run("noise", 0)
    assert line["probes"]["ray"]["value"] > 0.2
    assert abs(noise["probes"]["ray"]["value"]) < 0.15
    assert abs(noise["probes"]["geometry"]["summary"]["head"]["autocorrelation"]) < 0.2

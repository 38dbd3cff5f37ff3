"""``optispace train``: a run end to end, its JSON record, and one-line exit-2 errors for bad input."""

import json

import pytest
import torch

from optispace.cli import main

TINY = ["train", "--recipe", "adamw", "--proxy", "tiny", "--data", "zipf:n=5000"]


def test_run_prints_summary_and_writes_record(tmp_path, capsys):
    out = tmp_path / "run.json"
    assert main([*TINY, "--steps", "12", "--lr", "0.003", "--seed", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "final val loss" in text and "tokens/s on cpu" in text and "optimizer state bytes" in text
    record = json.loads(out.read_text())
    assert record["config"]["seed"] == 2 and record["config"]["steps"] == 12
    assert record["curve"][-1]["step"] == 12 and record["corpus"]["source"].startswith("zipf")


def test_checkpoint_then_resume(tmp_path, capsys):
    ckpt = tmp_path / "run.pt"
    assert main([*TINY, "--steps", "6", "--checkpoint", str(ckpt)]) == 0
    assert main([*TINY, "--steps", "6", "--resume", str(ckpt)]) == 0
    assert capsys.readouterr().out.count("after 6 steps") == 2


@pytest.mark.parametrize("extra, message", [
    (["--proxy", "huge"], "proxy"),
    (["--recipe", "nonesuch"], "unknown recipe"),
    (["--data", "/no/such/corpus"], "does not exist"),
    (["--tokens", "0"], "tokens"),
    (["--steps", "0"], "steps"),
    (["--tokens", "5", "--steps", "5"], "not allowed with"),
    (["--device", "cuda"], "cuda"),
    (["--probes", "nonesuch"], "probe"),
    (["--out", "/no/such/folder/run.json"], "--out"),
    (["--resume", "/no/such/run.pt"], "--resume: /no/such/run.pt is not a checkpoint file"),
    (["--checkpoint", "/no/such/folder/run.pt"], "--checkpoint: folder /no/such/folder does not exist"),
    (["--out", "/tmp"], "--out: /tmp is a folder"),
    (["--seed", str(2**64)], "--seed: 18446744073709551616 is out of range"),
    (["--steps", str(10**23)], "--steps: 100000000000000000000000 is out of range"),
    (["--lr", "fast"], "--lr"),
])
def test_bad_input_exits_2_with_one_line(extra, message, capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:  # argparse's own errors exit from inside parse_args
        raise SystemExit(main([*TINY, *extra]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def _torn(path):
    main([*TINY, "--steps", "2", "--checkpoint", str(path)])
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


BAD_CHECKPOINTS = {
    "truncated": (_torn, "cannot read"),
    "random bytes": (lambda path: path.write_bytes(bytes(range(256)) * 8), "cannot read"),
    "not a checkpoint": (lambda path: torch.save({"a": 1}, path), "is not an optispace checkpoint"),
    "a tensor": (lambda path: torch.save(torch.ones(2), path), "is not an optispace checkpoint"),
}


@pytest.mark.parametrize("name", BAD_CHECKPOINTS)
def test_resuming_from_a_file_that_is_no_checkpoint_is_one_line(name, tmp_path, capsys):
    make, message = BAD_CHECKPOINTS[name]
    path = tmp_path / "run.pt"
    make(path)
    capsys.readouterr()
    assert main([*TINY, "--steps", "2", "--resume", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err

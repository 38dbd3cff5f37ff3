"""``optispace train``: a run end to end, its JSON record, and one-line exit-2 errors for bad input."""

import json

import pytest

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
    (["--resume", "/no/such/run.pt"], "does not exist"),
    (["--lr", "fast"], "--lr"),
])
def test_bad_input_exits_2_with_one_line(extra, message, capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:  # argparse's own errors exit from inside parse_args
        raise SystemExit(main([*TINY, *extra]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def _losses(out):
    return [(p["step"], p["train_loss"], p["val_loss"]) for p in json.loads(out.read_text())["curve"]]


@pytest.mark.parametrize("regime, extra", [
    ("pretrain", []),
    ("sft", ["--new-rows", "random"]),
    ("rl", ["--group-size", "4", "--task", "reverse"]),
])
def test_each_regime_end_to_end_and_bit_identical_on_rerun(regime, extra, text_corpus, tmp_path, monkeypatch,
                                                            capsys):
    corpus, cache = text_corpus
    monkeypatch.setenv("OPTISPACE_CACHE", str(cache))
    args = ["train", "--recipe", "ember", "--proxy", "tiny", "--data", str(corpus), "--steps", "4",
            "--regime", regime, *extra]
    for name in ("a.json", "b.json"):
        assert main([*args, "--out", str(tmp_path / name)]) == 0
    assert _losses(tmp_path / "a.json") == _losses(tmp_path / "b.json")
    record = json.loads((tmp_path / "a.json").read_text())
    assert record["regime"] == regime and record["config"]["regime"] == regime
    objective = {"pretrain": "final val loss", "sft": "final response val loss", "rl": "final reward error"}
    assert objective[regime] in capsys.readouterr().out


def test_init_checkpoint_is_checked(text_corpus, tmp_path, monkeypatch, capsys):
    corpus, cache = text_corpus
    monkeypatch.setenv("OPTISPACE_CACHE", str(cache))
    ckpt, jsonl, other = tmp_path / "base.pt", tmp_path / "pairs.jsonl", tmp_path / "other"
    other.mkdir()
    for path in sorted(corpus.glob("json_*.py")):  # another corpus: another tokenizer
        (other / path.name).write_text(path.read_text())
    assert main(["train", "--recipe", "adamw", "--proxy", "tiny", "--data", str(corpus), "--steps", "3",
                 "--checkpoint", str(ckpt)]) == 0
    sft = ["train", "--recipe", "adamw", "--proxy", "tiny", "--data", str(corpus), "--steps", "2",
           "--regime", "sft"]
    assert main([*sft, "--init", str(ckpt)]) == 0
    jsonl.write_text('{"prompt": "a", "response": "b"}\n{"prompt": 1}\n')
    cases = [(["--init", str(ckpt), "--proxy", "small"], "same tier"),
             (["--init", str(ckpt), "--data", str(other), "--pairs", "task:addition"], "corpus"),
             (["--init", str(tmp_path / "none.pt")], "does not exist"),
             (["--regime", "rl", "--init", str(tmp_path / "none.pt")], "does not exist"),
             (["--regime", "rl", "--init", str(ckpt), "--proxy", "small"], "same tier"),
             (["--pairs", str(jsonl)], f"{jsonl}:2:"),
             (["--data", "zipf:n=5000"], "text data")]
    for extra, message in cases:
        capsys.readouterr()
        assert main([*sft, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and "Traceback" not in err


@pytest.mark.parametrize("extra, message", [
    (["--regime", "rl", "--group-size", "1"], "group_size"),
    (["--regime", "rl", "--task", "nonesuch"], "task"),
    (["--regime", "nonesuch"], "--regime"),
    (["--init", "/no/such.pt"], "init"),
    (["--regime", "rl", "--pairs", "x.jsonl"], "pairs"),
])
def test_bad_regime_input_exits_2_with_one_line(extra, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main([*TINY, *extra]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err

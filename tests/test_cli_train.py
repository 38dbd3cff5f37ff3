"""``optispace train``: a run end to end, its JSON record, and one-line exit-2 errors for bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
    (["--recipe", "ember(bias_correction=rows)"], "--recipe: recipe 'ember': bias_correction='rows' is not"),
    (["--recipe", "ember(lr=1e-3"], "--recipe: recipe 'ember(lr=1e-3', column 14"),
    (["--data", "/no/such/corpus"], "does not exist"),
    (["--tokens", "0"], "tokens"),
    (["--steps", "0"], "steps"),
    (["--tokens", "5", "--steps", "5"], "not allowed with"),
    (["--device", "cuda"], "cuda"),
    (["--probes", "nonesuch"], "probe"),
    (["--out", "/no/such/folder/run.json"], "--out"),
    (["--resume", "/no/such/run.pt"], "--resume: /no/such/run.pt is not a checkpoint file or folder"),
    (["--resume", "/tmp"], "resume: /tmp is a folder with no meta.pt, not a checkpoint folder"),
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


STRUCTURE = ("embed: sign | head: sign | matrix: momentum(0.9) > orthogonalize | "
             "vector: momentum(0.9, bias_correction=True)")


def _record(tmp_path, *args: str) -> dict:
    out = tmp_path / "run.json"
    assert main([*TINY[:2], *args, *TINY[3:], "--steps", "2", "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_a_structure_trains_its_chains_at_the_given_lr(tmp_path):
    record = _record(tmp_path, STRUCTURE, "--lr", "0.01")
    assert record["config"]["recipe"]["vector"] == "momentum(0.9)"
    assert record["config"]["recipe"]["matrix"] == "momentum(0.9) > orthogonalize"


def test_a_recipe_with_hyperparameters_trains_them_and_its_lr_yields_to_dash_dash_lr(tmp_path):
    config = _record(tmp_path, "ember(lr=0.002, bias_correction=row)")["config"]
    assert (config["recipe"], config["hyperparameters"]) == ("ember", {"bias_correction": "row"})
    assert config["lr"] == 0.002
    assert _record(tmp_path, "ember(lr=0.002, bias_correction=row)", "--lr", "0.003")["config"]["lr"] == 0.003


SEARCH = {"study": {"name": "s", "question": "?"},
          "proxy": {"tier": "tiny", "steps": 3, "eval_every": 3, "eval_batches": 1, "schedule": "constant",
                    "data": "/where/the/search/ran/corpus.txt"},
          "roles": {r: {"chain": "sign", "lr": 0.1} for r in ("embed", "head", "matrix", "vector")}}


def _study_with_a_trial(path, chains: dict, lrs: dict, search: dict | None = None) -> None:
    import optuna

    from optispace.search.storage import open_storage

    study = optuna.create_study(study_name="s", storage=open_storage(str(path)))
    if search is not None:
        study.set_user_attr("search", search)
    attrs = {**{f"trained_chain.{r}": c for r, c in chains.items()}, **{f"lr.{r}": v for r, v in lrs.items()}}
    for value in (3.0, 2.0):
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs=attrs))


def test_a_trial_of_a_study_is_retrained_with_its_chains_and_lrs(tmp_path, capsys):
    chains = {"embed": "second_moment(factored)", "head": "sign", "matrix": "momentum(0.9)",
              "vector": "identity"}
    lrs = {"embed": 0.01, "head": 0.002, "matrix": 0.003, "vector": 0.004}
    storage = tmp_path / "studies.journal"
    _study_with_a_trial(storage, chains, lrs)
    for ref in ("study:s#0", "study:s"):
        record = _record(tmp_path, ref, "--storage", str(storage))
        assert record["config"]["recipe"] == chains and record["config"]["role_lr"] == lrs
    assert "trial 1 of study 's'" in capsys.readouterr().err  # the best one


def test_a_trial_is_retrained_with_its_studys_settings_unless_the_command_line_gives_them(tmp_path):
    storage = tmp_path / "studies.journal"
    _study_with_a_trial(storage, dict.fromkeys(("embed", "head", "matrix", "vector"), "sign"),
                        dict.fromkeys(("embed", "head", "matrix", "vector"), 0.01), SEARCH)
    out = tmp_path / "run.json"
    argv = ["train", "--recipe", "study:s#0", "--storage", str(storage), "--data", "zipf:n=5000",
            "--out", str(out)]
    assert main(argv) == 0
    config = json.loads(out.read_text())["config"]
    settings = (config["proxy"], config["steps"], config["schedule"], config["eval_batches"])
    assert settings == ("tiny", 3, "constant", 1)
    assert main([*argv, "--steps", "2", "--lr", "0.003"]) == 0
    config = json.loads(out.read_text())["config"]
    assert (config["steps"], config["lr"], config["role_lr"]) == (2, 0.003, {})


@pytest.mark.parametrize("recipe, message", [
    ("embed: sign | matrix: sign", "--lr: a structure has no lr"),
    ("embed: sgn", "role embed: chain 'sgn', column 1"),
    ("hidden: sign", "unknown role 'hidden'"),
    ("study:s#x", "study:NAME#TRIAL"),
    ("study:nope#0", "no study 'nope'"),
    ("study:s#7", "no trial 7"),
])
def test_bad_structures_and_trials_exit_2_with_one_line(recipe, message, tmp_path, capsys):
    storage = tmp_path / "studies.journal"
    _study_with_a_trial(storage, dict.fromkeys(("embed", "head", "matrix", "vector"), "sign"),
                        dict.fromkeys(("embed", "head", "matrix", "vector"), 0.1))
    assert main([*TINY[:2], recipe, *TINY[3:], "--storage", str(storage), "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_a_trial_of_a_storage_that_does_not_exist_is_one_line_and_creates_none(tmp_path, capsys):
    storage = tmp_path / "studies.journal"
    assert main([*TINY[:2], "study:s#0", *TINY[3:], "--storage", str(storage), "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"no study storage at {storage}" in err
    assert not storage.exists()


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("optispace ")


@pytest.mark.parametrize("flag, lines", [([], 1), (["-q"], 0)])
def test_off_a_terminal_each_evaluation_logs_one_line_unless_quiet(flag, lines):
    argv = [sys.executable, "-m", "optispace.cli", *TINY, "--steps", "4", *flag]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count(" optispace.train: step ") == lines


def test_a_tracker_without_its_library_exits_2_naming_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)
    assert main([*TINY, "--steps", "2", "--wandb", "proj"]) == 2
    assert "pip install 'optispace[wandb]'" in capsys.readouterr().err


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
    (["--regime", "rl", "--format-steps", "0"], "format_steps"),
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


# Data-parallel runs: ranks launched by torch's elastic launcher (``--nproc``) or by torchrun itself.
def _optispace(*argv: str, launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *launcher, "-m", "optispace", *argv], capture_output=True,
                          text=True, timeout=300, env=os.environ | {"OMP_NUM_THREADS": "1"})


TORCHRUN = ("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2")


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [(), TORCHRUN], ids=["nproc", "torchrun"])
def test_two_ranks_train_as_one_process_and_only_rank_0_writes(tmp_path, launcher, capsys):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    assert main([*TINY, "--steps", "6", "--out", str(one)]) == 0
    nproc = () if launcher else ("--nproc", "2")
    done = _optispace(*TINY, "--steps", "6", *nproc, "--parallel", "ddp", "--out", str(two),
                      launcher=launcher)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("final val loss") == 1  # rank 0 prints, rank 1 does not
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert b["world_size"] == 2 and a["world_size"] == 1
    for p, q in zip(a["curve"], b["curve"], strict=True):  # tolerance: tests/test_distributed.py
        assert q["train_loss"] == pytest.approx(p["train_loss"], rel=1e-5)
        assert q["val_loss"] == pytest.approx(p["val_loss"], rel=1e-5)


@pytest.mark.slow
def test_torchrun_fsdp2_writes_a_checkpoint_folder_that_one_process_resumes(tmp_path, capsys):
    one, two, ckpt = tmp_path / "one.json", tmp_path / "two.json", tmp_path / "run"
    assert main([*TINY, "--steps", "6", "--out", str(one)]) == 0
    done = _optispace(*TINY, "--steps", "6", "--parallel", "fsdp2", "--checkpoint", str(ckpt),
                      "--out", str(two), launcher=TORCHRUN)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("optimizer state bytes on rank 0 of 2:") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.json", "run", "two.json"]  # no temp folder
    assert sorted(p.name for p in ckpt.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert b["world_size"] == 2 and b["config"]["parallel"] == "fsdp2"
    for p, q in zip(a["curve"], b["curve"], strict=True):  # tolerance: tests/test_distributed.py
        assert q["val_loss"] == pytest.approx(p["val_loss"], rel=1e-5)
    capsys.readouterr()
    assert main([*TINY, "--steps", "6", "--resume", str(ckpt)]) == 0  # one process reads every shard
    assert f"final val loss {b['final_val_loss']:.4f} after 6 steps" in capsys.readouterr().out


def _launch_two_ranks_for_long(out) -> subprocess.Popen:
    """`optispace train --nproc 2` of far more steps than a test waits for, its record to ``out``."""
    argv = [sys.executable, "-m", "optispace", *TINY, "--steps", "100000", "--nproc", "2", "--out", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ | {"OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_a_killed_rank_stops_the_run_with_a_message_and_no_record(tmp_path):
    out = tmp_path / "run.json"
    launched = _launch_two_ranks_for_long(out)
    try:
        victim = _wait_for_rank(launched.pid, rank=1)
        time.sleep(2)  # well into training
        os.kill(victim, signal.SIGKILL)
        _, err = launched.communicate(timeout=60)  # the bound: the launcher and gloo notice within seconds
    finally:
        launched.kill()
    assert launched.returncode != 0
    last = err.rstrip().splitlines()[-1]
    assert last == "optispace train: error: rank 1 was killed by SIGKILL; the other ranks were stopped"
    assert not out.exists()


@pytest.mark.slow
def test_sigterm_to_the_launching_command_stops_every_rank_as_an_interrupt(tmp_path):
    out = tmp_path / "run.json"
    launched = _launch_two_ranks_for_long(out)
    try:
        ranks = [_wait_for_rank(launched.pid, rank=r) for r in (0, 1)]
        time.sleep(2)
        launched.send_signal(signal.SIGTERM)
        _, err = launched.communicate(timeout=60)
    finally:
        launched.kill()
    assert launched.returncode == 130 and err.rstrip().splitlines()[-1] == "optispace train: interrupted"
    assert not out.exists() and not any(Path(f"/proc/{pid}").exists() for pid in ranks)


def _wait_for_rank(parent: int, rank: int, timeout: float = 120) -> int:
    """The pid of the process below ``parent`` that torch's launcher gave ``RANK=rank``, once it trains."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                env = (proc / "environ").read_bytes().split(b"\0")
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == parent and f"RANK={rank}".encode() in env:
                return int(proc.name)
        time.sleep(0.5)
    raise AssertionError(f"no rank {rank} under pid {parent} within {timeout} s")


@pytest.mark.parametrize("extra, message", [
    (["--nproc", "2", "--parallel", "zero"], "--parallel: unknown 'zero'; use ddp or fsdp2"),
    (["--nproc", "4", "--parallel", "fsdp2", "--device", "cuda"], "--nproc 4: only 2 CUDA GPU(s) visible"),
    (["--nproc", "2", "--parallel", "fsdp2", "--probes", "ray"], "--probes read whole parameters on rank 0"),
    (["--nproc", "2", "--parallel", "fsdp2", "--checkpoint", os.path.dirname(__file__)],
     "is a folder that is not a checkpoint; give a new path"),
    (["--nproc", "0"], "--nproc: 0 is out of range"),
    (["--nproc", "3"], "3 processes cannot split tier tiny's batch of 8 sequences evenly"),
    (["--nproc", "2", "--regime", "sft"], "regime sft trains in one process for now"),
    (["--nproc", "4", "--device", "cuda"], "--nproc 4: only 2 CUDA GPU(s) visible"),
])
def test_bad_parallel_input_exits_2_with_one_line_before_launching(extra, message, capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    monkeypatch.setattr("optispace.proxies.distributed.launch", lambda *a: pytest.fail("launched"))
    assert main([*TINY, "--steps", "2", *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_under_a_launcher_nproc_must_match_its_world(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main([*TINY, "--steps", "2", "--nproc", "4"]) == 2
    assert "--nproc 4 differs from the launcher's 2 processes" in capsys.readouterr().err

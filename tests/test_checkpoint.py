"""Training checkpoints (optispace/proxies/checkpoint.py): where a run may write one, the folder swap
that never leaves half a checkpoint, and the renaming of a file's optimizer state for a sharded run.
Saving and resuming across world sizes is tested with spawned ranks in tests/test_distributed.py."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from optispace.errors import UserError
from optispace.optimizer import Optimizer
from optispace.proxies.checkpoint import META, _by_name, _replace_folder, check_target, is_folder, read


def test_a_sharded_run_writes_a_new_or_empty_folder_or_replaces_a_checkpoint_folder_only(tmp_path):
    check_target(tmp_path / "new", sharded=True)
    (tmp_path / "empty").mkdir()
    check_target(tmp_path / "empty", sharded=True)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / META).write_bytes(b"")
    check_target(tmp_path / "ckpt", sharded=True)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="data is a folder that is not a checkpoint"):
        check_target(tmp_path / "data", sharded=True)
    with pytest.raises(UserError, match="ckpt is a folder; give a file path inside it"):
        check_target(tmp_path / "ckpt", sharded=False)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.binary(max_size=8), min_size=1, max_size=4))
def test_a_replaced_folder_holds_the_last_save_and_nothing_is_left_beside_it(tmp_path_factory, saves):
    root = tmp_path_factory.mktemp("swap")
    path = root / "run"
    path.write_bytes(b"a file checkpoint of an earlier run")
    for i, data in enumerate(saves):
        new = root / ".run.tmp"
        new.mkdir()
        (new / META).write_bytes(data)
        (new / f"__{i}_0.distcp").write_bytes(data)
        _replace_folder(new, path)
        assert is_folder(path) and (path / META).read_bytes() == data
        assert sorted(p.name for p in root.iterdir()) == ["run"]
        assert sorted(p.name for p in path.iterdir()) == sorted([META, f"__{i}_0.distcp"])


def test_a_folder_without_progress_is_not_a_checkpoint(tmp_path):
    with pytest.raises(UserError, match=f"is a folder with no {META}, not a checkpoint folder"):
        read(tmp_path)
    (tmp_path / META).write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot read .* as a checkpoint"):
        read(tmp_path)


def test_a_files_numbered_optimizer_state_is_keyed_by_parameter_name():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    optimizer = Optimizer(model, "adamw", lr=1e-3)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    saved = optimizer.state_dict()
    named = _by_name(saved, optimizer)
    names = [n for group in optimizer.param_groups for n in group["param_names"]]
    assert sorted(named["state"]) == sorted(dict(model.named_parameters()))
    for i, name in enumerate(names):
        assert named["state"][name] is saved["state"][i]
    assert [g["params"] for g in named["param_groups"]] == [g["param_names"] for g in optimizer.param_groups]

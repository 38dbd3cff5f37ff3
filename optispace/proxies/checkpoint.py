"""Training checkpoints: everything a resumed run needs, never half-written.

A run in one process or under DDP writes one file (``torch.save``, by rank 0). A run under FSDP2
writes a folder through torch.distributed.checkpoint (DCP): every rank its shards of the model and
optimizer state (DCP's ``.distcp`` files and ``.metadata``), rank 0 the run's progress (``meta.pt``:
config, corpus, step, curve, RNG state, the regime's state). DCP reshards on load, so a folder
resumes at another world size, under DDP or in one process; a file resumes under FSDP2 too, each
rank keeping its own shard of every whole tensor.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from optispace.errors import UserError

FORMAT = 1
META = "meta.pt"  # a checkpoint folder's progress, beside DCP's files


def is_folder(path: Path) -> bool:
    """Whether ``path`` is a checkpoint folder (FSDP2's), as opposed to a file."""
    return (path / META).is_file()


def check_target(path: Path, sharded: bool, flag: str = "--checkpoint") -> None:
    """Refuse, before training, a checkpoint path that the run would have to clobber: a folder that
    is not a checkpoint folder (a sharded run replaces its folder whole), or a folder for a file."""
    if not path.is_dir():
        return
    if not sharded:
        raise UserError(f"{flag}: {path} is a folder; give a file path inside it")
    if any(path.iterdir()) and not is_folder(path):
        raise UserError(f"{flag}: {path} is a folder that is not a checkpoint; give a new path "
                        "(a sharded run replaces its checkpoint folder at each evaluation)")


def save(path: Path, progress: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, *,
         sharded: bool, lead: bool) -> None:
    """Write ``progress`` (config, step, curve, RNG, ...) and the model's and optimizer's state: a
    file by rank 0, or, for a ``sharded`` (FSDP2) model, a folder every rank writes its shards to."""
    if sharded:
        _save_folder(path, progress, model, optimizer, lead)
    elif lead:
        state = {"format": FORMAT, **progress, "model": model.state_dict(),
                 "optimizer": optimizer.state_dict()}
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(state, tmp)
        tmp.replace(path)


def _save_folder(path: Path, progress: dict[str, Any], model: nn.Module,
                 optimizer: torch.optim.Optimizer, lead: bool) -> None:
    """DCP's sharded save into a fresh folder, which rank 0 then puts in the place of the last one."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    tmp = path.with_name(f".{path.name}.tmp")
    if lead and tmp.exists():
        shutil.rmtree(tmp)  # left by a run that stopped mid-save
    dist.barrier()  # no rank writes into the folder before rank 0 has cleared it
    model_state, optimizer_state = get_state_dict(model, optimizer)
    # collective: when it returns on rank 0 (the coordinator), every rank's shards are written
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=tmp)
    if lead:
        torch.save({"format": FORMAT, **progress}, tmp / META)
        _replace_folder(tmp, path)


def _replace_folder(new: Path, path: Path) -> None:
    """Put folder ``new`` at ``path`` (where the last checkpoint, a folder or a file, may be); at
    every moment ``path`` is absent or a whole checkpoint."""
    old = path.with_name(f".{path.name}.old")
    _remove(old)
    if path.exists():
        path.rename(old)
    new.rename(path)
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def read(path: Path) -> dict[str, Any]:
    """A checkpoint's progress (and, for a file, its tensors); ``UserError`` when it is not one."""
    if path.is_dir() and not is_folder(path):
        raise UserError(f"resume: {path} is a folder with no {META}, not a checkpoint folder")
    file = path / META if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"resume: checkpoint {path} does not exist")
    try:
        state = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many kinds (pickle, zip, EOF) for a file it cannot read
        raise UserError(f"resume: cannot read {path} as a checkpoint ({_reason(e)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"resume: {path} is not an optispace checkpoint of format {FORMAT}")
    return state


def restore(path: Path, state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, *,
            sharded: bool) -> None:
    """Load the model's and optimizer's state of checkpoint ``path`` (``state``: what ``read`` gave)
    into this run, resharding to its world size; ``UserError`` when that cannot be done."""
    from torch.distributed.checkpoint import CheckpointException

    try:
        if path.is_dir():
            _restore_folder(path, model, optimizer)
        elif sharded:
            _restore_file_sharded(state, model, optimizer)
        else:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
    except (CheckpointException, RuntimeError, ValueError, KeyError, OSError) as e:
        raise UserError(f"resume: {path} cannot be loaded into this run ({_reason(e)})") from None


def _reason(e: BaseException) -> str:
    """The first line of what went wrong; for DCP's error, of the first failed rank's."""
    failures = getattr(e, "failures", None)
    if failures:
        e = next(iter(failures.values()))[0]
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _restore_folder(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """DCP's load: each rank reads what its own (sharded or whole) tensors need of the saved shards."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    with warnings.catch_warnings():  # one process reading every shard is meant; DCP warns all the same
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=path, no_dist=not dist.is_initialized())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def _restore_file_sharded(state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """A file's whole tensors into a sharded model and optimizer: each DTensor takes its own part of
    the whole tensor of the same name (no communication), the rest are taken as they are."""
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    whole_optimizer = _by_name(state["optimizer"], optimizer)
    set_state_dict(model, optimizer, model_state_dict=_shard_like(model_state, state["model"]),
                   optim_state_dict=_shard_like(optimizer_state, whole_optimizer))


def _by_name(saved: dict[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """A torch optimizer state dict keyed by parameter number, keyed by parameter name instead (as
    DCP's ``get_state_dict`` keys it); the names are the groups' ``param_names``."""
    names = [name for group in optimizer.param_groups for name in group["param_names"]]
    groups = [{**group, "params": [names[i] for i in group["params"]]} for group in saved["param_groups"]]
    return {"state": {names[i]: value for i, value in saved["state"].items()}, "param_groups": groups}


def _shard_like(template: Any, whole: Any) -> Any:
    """``whole`` (nested dicts and lists of tensors) with every tensor that is a DTensor in
    ``template`` cut to this rank's shard, in the template's placements."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(template, dict):
        return {key: _shard_like(template[key], value) if key in template else value
                for key, value in whole.items()}
    if isinstance(template, list) and isinstance(whole, list) and len(template) == len(whole):
        return [_shard_like(t, w) for t, w in zip(template, whole, strict=True)]
    if isinstance(template, DTensor) and isinstance(whole, torch.Tensor):
        # src_data_rank=None: every rank holds the whole tensor and cuts its own part, no broadcast
        return distribute_tensor(whole.to(template.device), template.device_mesh, template.placements,
                                 src_data_rank=None)
    return whole

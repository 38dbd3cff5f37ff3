"""The ``optispace`` command and package: cheap to start, every public name where it was."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import optispace
from optispace.cli import COMMANDS


def _modules_loaded_by(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_help_loads_neither_torch_nor_any_command_module() -> None:
    loaded = _modules_loaded_by("import optispace.cli; optispace.cli.build_parser().format_help()")
    assert not {"torch", "optuna", "polars", "matplotlib"} & loaded
    assert not {f"optispace.commands.{name}" for name in COMMANDS} & loaded


def test_every_public_name_resolves_to_its_defining_module() -> None:
    assert sorted(optispace.__all__) == sorted(optispace._EXPORTS)
    for name, module in optispace._EXPORTS.items():
        assert getattr(optispace, name) is getattr(importlib.import_module(module), name)
    assert set(optispace.__all__) <= set(dir(optispace))


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="nonesuch"):
        optispace.nonesuch  # noqa: B018

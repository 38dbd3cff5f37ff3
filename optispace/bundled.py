"""The search files shipped with optispace (``searches/*.toml``; in a wheel, package data of
``optispace.searches``), so ``optispace search quickstart`` works outside a source checkout."""

from __future__ import annotations

import importlib.resources
from pathlib import Path


def searches_dir() -> Path | None:
    """The folder of bundled search files: the source tree's ``searches/``, else the installed package's."""
    source = Path(__file__).resolve().parents[1] / "searches"
    if source.is_dir():
        return source
    try:
        return Path(str(importlib.resources.files("optispace.searches")))
    except ModuleNotFoundError:
        return None


def bundled_searches() -> list[str]:
    """Names of the bundled search files, sorted (``quickstart``, ``smoke``, ...)."""
    folder = searches_dir()
    return sorted(p.stem for p in folder.glob("*.toml")) if folder is not None else []


def search_file(arg: str | Path) -> Path:
    """``arg`` as a path when it exists; else, a bare name (``quickstart`` or ``quickstart.toml``) of a
    bundled search file; else ``arg`` unchanged (reading it then says it does not exist)."""
    path = Path(arg)
    folder = searches_dir()
    if path.exists() or len(path.parts) != 1 or folder is None:
        return path
    bundled = folder / (path.name if path.suffix == ".toml" else f"{path.name}.toml")
    return bundled if bundled.is_file() else path

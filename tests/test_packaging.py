"""Packaging: the wheel carries the search files; psycopg2 and scipy are extras whose absence is an
error naming the extra; ``optispace search NAME`` finds a shipped search file."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from optispace.bundled import bundled_searches, search_file
from optispace.errors import MissingExtra

ROOT = Path(__file__).parents[1]


def test_the_wheel_carries_the_search_files_and_declares_the_extras(tmp_path: Path) -> None:
    pytest.importorskip("setuptools", reason="building a wheel without isolation needs setuptools")
    # A copy of the sources: an in-tree build leaves build/ and *.egg-info behind.
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".*", "build", "dist", "*.egg-info", "__pycache__", "reports", "bench", "tests"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("optispace-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert {f"optispace/searches/{p.name}" for p in (ROOT / "searches").glob("*.toml")} <= names
    assert "optispace/cli.py" in names and "primitives/base.py" in names
    for extra in ("postgres", "gp", "tensorboard", "wandb", "dev"):
        assert f"Provides-Extra: {extra}" in metadata
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert not [r for r in requires if ("psycopg2" in r or "scipy" in r) and "extra ==" not in r]


def test_a_bare_name_is_a_shipped_search_file(tmp_path: Path, monkeypatch) -> None:
    assert {"quickstart", "smoke"} <= set(bundled_searches())
    monkeypatch.chdir(tmp_path)
    shipped = ROOT / "searches" / "quickstart.toml"
    assert search_file("quickstart") == search_file("quickstart.toml") == shipped
    (tmp_path / "quickstart.toml").write_text("")
    assert search_file("quickstart.toml") == Path("quickstart.toml")  # a file here comes first
    assert search_file("nope") == Path("nope")


def test_the_gp_sampler_without_scipy_names_the_extra(monkeypatch) -> None:
    from optispace.search.spec import parse_search
    from optispace.search.study import make_sampler

    spec = parse_search(ROOT / "searches" / "smoke.toml")
    monkeypatch.setitem(sys.modules, "scipy", None)
    with pytest.raises(MissingExtra, match=r"sampler = \"gp\" needs scipy.*optispace\[gp\]"):
        make_sampler(type(spec)(**{**spec.__dict__, "sampler": "gp"}), 0)


def test_a_postgres_storage_without_psycopg2_names_the_extra(monkeypatch) -> None:
    pytest.importorskip("sqlalchemy")
    from optispace.search.storage import open_storage

    monkeypatch.setitem(sys.modules, "psycopg2", None)
    with pytest.raises(MissingExtra, match=r"needs psycopg2-binary.*optispace\[postgres\]"):
        open_storage("postgresql+psycopg2://user@127.0.0.1:1/db")

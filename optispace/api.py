"""The Python API for notebooks: a search from a dict or TOML text, run, and its report as polars frames.

    from optispace.api import Search

    search = Search({"study": {...}, "proxy": {...}, "roles": {...}})   # or TOML text, or a path
    search.run(n_trials=8)                     # exactly 8 finished trials (resumes what is there)
    report = search.report()                   # report.trials, .structures, .front, ... (polars)
    search.write_report("reports/mine")        # report.md, figures, Parquet, as `optispace report`

It is what ``optispace search`` and ``optispace report`` do, without the CLI: the same validation
(mistakes raise ``optispace.errors.UserError`` naming the key), the same storage (``storage=``
a journal path or RDB URL; by default ``$OPTISPACE_STORAGE``, else ``.optispace/studies.journal``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from optispace.errors import UserError


class Search:
    """A validated search and the storage its study lives in.

    ``source``: a dict with the tables of a search file (``study``, ``proxy``, ``roles``), the TOML
    text of one, or a ``Path`` to one. ``name`` overrides ``study.name``.
    """

    def __init__(self, source: Mapping[str, Any] | str | Path, *, storage: str | None = None,
                 name: str | None = None) -> None:
        from optispace.search.storage import default_url

        self.spec = _spec(source)
        self.storage = storage or default_url()
        self.name = name or self.spec.name

    def run(self, n_trials: int | None = None, *, workers: int = 1, progress: bool = True) -> Any:
        """Run (or resume) the study until it has ``n_trials`` finished trials (default: the
        search's ``trials``); returns ``optispace.search.run.Summary`` (name, counts, best trial)."""
        from optispace.search.run import run_search

        return run_search(self.spec, self.storage, name=self.name, n_trials=n_trials, workers=workers,
                          progress=progress)

    @property
    def study(self) -> Any:
        """The ``optuna.Study``, loaded from the storage."""
        import optuna

        from optispace.search.storage import open_storage

        try:
            return optuna.load_study(study_name=self.name, storage=open_storage(self.storage))
        except KeyError:
            raise UserError(f"no study {self.name!r} in {self.storage} yet; call run() first") from None

    def report(self, tolerance: float | None = None) -> Any:
        """Every analysis of the report as polars frames (``optispace.report.write.Report``)."""
        from optispace.report.build import build_report

        study = self.study
        if not study.get_trials(deepcopy=False):
            raise UserError(f"study {self.name!r} has no trials yet; call run() first")
        return build_report(study, tolerance)

    def write_report(self, out: str | Path, tolerance: float | None = None) -> list[Path]:
        """Write report.md, the figures and the Parquet files into ``out``; returns the paths."""
        from optispace.report.write import write_report

        return write_report(self.report(tolerance), Path(out))


def _spec(source: Mapping[str, Any] | str | Path) -> Any:
    from optispace.search.spec import parse_search, parse_search_data, parse_search_text

    if isinstance(source, Path):
        return parse_search(source)
    if isinstance(source, str):
        return parse_search_text(source, "<toml text>")
    if isinstance(source, Mapping):
        try:  # the tables as TOML would give them: lists, not tuples; plain JSON-able values
            raw = json.loads(json.dumps(source))
        except (TypeError, ValueError) as e:
            raise UserError(f"<dict>: a search holds strings, numbers, lists and tables: {e}") from None
        return parse_search_data(raw, "<dict>")
    raise UserError(f"a search is a dict, TOML text or a Path, not {type(source).__name__}")

"""Probes: observers of a training run that measure the token geometry Ember rests on.

A probe is a training callback (see ``docs/DESIGN.md``, Proxies) with a ``name`` and optional
``on_start``, ``on_after_backward``, ``on_after_step`` and ``on_end`` methods; ``on_end`` returns a
JSON-ready dict stored as ``record.probes[name]``, whose ``value`` is the one number that summarises it.
"""

from __future__ import annotations

from collections.abc import Sequence

from optispace.probes.geometry import GeometryProbe
from optispace.probes.outliers import OutlierProbe
from optispace.probes.ray import RayProbe

PROBES = {probe.name: probe for probe in (RayProbe, GeometryProbe, OutlierProbe)}


def build(names: Sequence[str]) -> list:
    """One probe with default sampling per name, in order; an unknown name raises ``ValueError``."""
    unknown = [n for n in names if n not in PROBES]
    if unknown:
        raise ValueError(f"unknown probe {unknown[0]!r}; known probes: {', '.join(PROBES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"probes: each probe may be named once, got {', '.join(names)}")
    return [PROBES[n]() for n in names]

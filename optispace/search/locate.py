"""Line numbers of keys in a TOML text.

``tomllib`` parses without positions, so an error about a key's value could not say where the key
is. This scans the text line by line the way TOML declares keys: a ``[table]`` or ``[[array]]``
header sets the prefix, and ``key = value`` (dotted or quoted keys allowed) declares
``prefix.key``. It only has to agree with ``tomllib`` on files that ``tomllib`` accepted.
"""

from __future__ import annotations

import re

_BARE = r"[A-Za-z0-9_-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"|\'[^\']*\''
_KEY = rf"(?:{_BARE}|{_QUOTED})(?:\s*\.\s*(?:{_BARE}|{_QUOTED}))*"
_HEADER = re.compile(rf"^\s*\[\[?\s*({_KEY})\s*\]\]?\s*(?:#.*)?$")
_ASSIGN = re.compile(rf"^\s*({_KEY})\s*=")
_PART = re.compile(rf"{_BARE}|{_QUOTED}")


def _split_key(key: str) -> tuple[str, ...]:
    return tuple(p[1:-1] if p[0] in "\"'" else p for p in _PART.findall(key))


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each declared key path (tables included) to the 1-based line that declares it first."""
    lines: dict[tuple[str, ...], int] = {}
    prefix: tuple[str, ...] = ()
    in_multiline_string = False
    for number, line in enumerate(text.splitlines(), start=1):
        # A key never starts inside a multi-line string; toggle on each unpaired triple quote.
        if (line.count('"""') + line.count("'''")) % 2 == 1:
            in_multiline_string = not in_multiline_string
            if not in_multiline_string:
                continue
        elif in_multiline_string:
            continue
        header = _HEADER.match(line)
        if header:
            prefix = _split_key(header.group(1))
            # [a.b] also declares [a] (implicitly) when nothing did before.
            for end in range(1, len(prefix) + 1):
                lines.setdefault(prefix[:end], number)
            continue
        assign = _ASSIGN.match(line)
        if assign:
            lines.setdefault(prefix + _split_key(assign.group(1)), number)
    return lines


def line_of(lines: dict[tuple[str, ...], int], path: tuple[str, ...]) -> int | None:
    """The line of ``path``, or of its longest declared prefix (a key inside an inline table)."""
    for end in range(len(path), 0, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None

"""Prompt / response pairs for the SFT regime, and their fixed held-out split.

Sources (``TrainConfig.pairs``, ``optispace train --pairs``): ``None`` (the built-in default: each
Python function with a docstring in the pretraining corpus, its signature and docstring as the prompt
and its body as the response), ``task:NAME`` (an RL task's problems and answers), or a JSONL file of
``{"prompt": ..., "response": ...}`` objects. A pair is held out when the hash of its key (file and
line of a function, the task problem, or a JSONL pair's text) falls in the corpus's validation share,
as a held-out corpus file does.
"""

from __future__ import annotations

import ast
import json
import os
from dataclasses import dataclass
from pathlib import Path

from optispace.errors import UserError
from optispace.proxies.corpus import TextSource, is_val_file


@dataclass(frozen=True)
class Pair:
    """One example: the model reads ``prompt`` and learns to write ``response``; ``key`` names it."""

    prompt: str
    response: str
    key: str


def load_pairs(spec: str | Path | None, source: TextSource | None,
               cache: Path | None = None) -> tuple[list[Pair], list[Pair]]:
    """(training pairs, held-out pairs) of a pairs spec (see the module docstring); the built-in pairs
    are read from ``cache`` (a JSON file) when it exists, else found and written there."""
    if spec is not None and str(spec).startswith("task:"):
        pairs = task_pairs(str(spec).removeprefix("task:"))
        where = str(spec)
    elif spec is not None:
        pairs, where = read_jsonl(Path(spec).expanduser()), str(spec)
    elif source is None:
        raise UserError("pairs: the built-in pairs come from a text corpus of Python files; this run's data "
                        "has none: give --pairs FILE.jsonl, or text data")
    else:
        pairs, where = cached_function_pairs(source, cache), f"the functions of {source.name}"
    train = [p for p in pairs if not is_val_file(p.key)]
    held_out = [p for p in pairs if is_val_file(p.key)]
    if not train or not held_out:
        raise UserError(f"pairs: {where} gives {len(train)} training and {len(held_out)} held-out pairs "
                        "(held out by a hash of each pair); give more pairs")
    return train, held_out


def spread(items: list, n: int) -> list:
    """``n`` of ``items`` at evenly spaced positions (all of them when there are no more than ``n``), so
    a held-out sample is not just the first file's or the smallest numbers."""
    if len(items) <= n:
        return list(items)
    return [items[i * len(items) // n] for i in range(n)]


def read_jsonl(path: Path) -> list[Pair]:
    """Every non-blank line of ``path`` as a pair; a malformed line is an error naming file and line."""
    if not path.is_file():
        raise UserError(f"pairs: {path} does not exist; give a JSONL file of prompt/response objects")
    pairs = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                pairs.append(_parse_line(line, f"{path}:{number}"))
    return pairs


def _parse_line(line: str, where: str) -> Pair:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"pairs: {where}: not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in ("prompt", "response")):
        raise UserError(f"pairs: {where}: want an object with string keys 'prompt' and 'response'")
    if not item["response"]:
        raise UserError(f"pairs: {where}: the response is empty; there would be nothing to learn")
    return Pair(item["prompt"], item["response"], f"{item['prompt']}\0{item['response']}")


def function_pairs(source: TextSource) -> list[Pair]:
    """Each function with a docstring and a body after it, in file order: the lines from ``def`` to the
    docstring's end are the prompt, the rest of the function the response. Files that do not parse
    (other Python versions, not Python) are skipped."""
    pairs = []
    for relpath in source.files:
        if not relpath.endswith(".py"):
            continue
        text = (source.root / relpath).read_text(encoding="utf-8", errors="replace")
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            continue
        lines = text.splitlines(keepends=True)
        for node in ast.walk(tree):
            pair = _function_pair(node, lines, relpath)
            if pair is not None:
                pairs.append(pair)
    return pairs


def cached_function_pairs(source: TextSource, cache: Path | None) -> list[Pair]:
    """``function_pairs(source)``, kept in the JSON file ``cache`` (parsing the stdlib takes a while)."""
    if cache is not None and cache.is_file():
        return [Pair(*item) for item in json.loads(cache.read_text())]
    pairs = function_pairs(source)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps([[p.prompt, p.response, p.key] for p in pairs]))
        tmp.replace(cache)  # the same pairs whoever writes them
    return pairs


def _function_pair(node: ast.AST, lines: list[str], relpath: str) -> Pair | None:
    if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or len(node.body) < 2:
        return None
    if ast.get_docstring(node, clean=False) is None:
        return None
    doc = node.body[0]
    prompt = "".join(lines[node.lineno - 1:doc.end_lineno])
    response = "".join(lines[doc.end_lineno:node.end_lineno])
    if not response.strip():
        return None
    return Pair(prompt, response, f"{relpath}:{node.lineno}")


def task_pairs(name: str) -> list[Pair]:
    """Every problem of an RL task (``optispace.proxies.tasks``) with its answer; keyed by the problem,
    so the held-out pairs are the task's held-out problems."""
    from optispace.proxies.tasks import TASKS

    if name not in TASKS:
        raise UserError(f"pairs: task:{name}: unknown task; tasks: {', '.join(TASKS)}")
    task = TASKS[name]
    return [Pair(p, task.solve(p), p) for p in task.problems()]

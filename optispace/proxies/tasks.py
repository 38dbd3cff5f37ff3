"""Verifiable tasks for the RL regime: every problem is enumerable offline and has one exact answer.

Problems and answers are short fixed-width strings of single characters (digits, ``+``, ``=``), so a
prompt has one length per task and each character is one token of the proxy's byte-level tokenizer.
The held-out problems are fixed by a hash of the problem text, as the corpus's held-out files are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from optispace.proxies.corpus import is_val_file


@dataclass(frozen=True)
class Task:
    """``problems()``: every problem, in a fixed order; ``solve(problem)``: its one exact answer."""

    name: str
    summary: str
    problems: Callable[[], list[str]]
    solve: Callable[[str], str]

    @cached_property
    def split(self) -> tuple[list[str], list[str]]:
        """(training problems, held-out problems), by ``is_val_file`` of the problem text."""
        problems = self.problems()
        return ([p for p in problems if not is_val_file(p)], [p for p in problems if is_val_file(p)])

    def reward(self, problem: str, answer: str | None) -> float:
        """1.0 when ``answer`` is exactly the solution, else 0.0 (None: no answer was finished)."""
        return float(answer == self.solve(problem))


def _addition_problems() -> list[str]:
    return [f"{a:02d}+{b:02d}=" for a in range(100) for b in range(100)]


def _addition_solve(problem: str) -> str:
    a, b = problem.rstrip("=").split("+")
    return f"{int(a) + int(b):03d}"


def _reverse_problems() -> list[str]:
    return [f"{n:04d}" for n in range(10_000)]


def _reverse_solve(problem: str) -> str:
    return problem[::-1]


TASKS: dict[str, Task] = {
    "addition": Task("addition", "two 2-digit numbers, their 3-digit sum: 07+45= -> 052",
                     _addition_problems, _addition_solve),
    "reverse": Task("reverse", "four digits, reversed: 1234 -> 4321", _reverse_problems, _reverse_solve),
}

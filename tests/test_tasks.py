"""The RL tasks: exact rewards on hand-written cases, and a fixed, disjoint held-out split."""

import pytest

from optispace.proxies.tasks import TASKS


@pytest.mark.parametrize("task, problem, answer, reward", [
    ("addition", "07+45=", "052", 1.0),
    ("addition", "99+99=", "198", 1.0),
    ("addition", "00+00=", "000", 1.0),
    ("addition", "07+45=", "52", 0.0),
    ("addition", "07+45=", "053", 0.0),
    ("addition", "07+45=", "0052", 0.0),
    ("addition", "07+45=", None, 0.0),
    ("reverse", "1234", "4321", 1.0),
    ("reverse", "0010", "0100", 1.0),
    ("reverse", "1234", "1234", 0.0),
    ("reverse", "1234", "432", 0.0),
])
def test_reward_is_exact_match(task, problem, answer, reward):
    assert TASKS[task].reward(problem, answer) == reward


@pytest.mark.parametrize("name", sorted(TASKS))
def test_split_is_disjoint_and_complete(name):
    task = TASKS[name]
    train, held_out = task.split
    assert set(train).isdisjoint(held_out) and sorted(train + held_out) == sorted(task.problems())
    assert 0.02 < len(held_out) / len(task.problems()) < 0.08  # the corpus's 5% share
    assert len({len(p) for p in task.problems()}) == 1  # one prompt length: prompts batch without padding

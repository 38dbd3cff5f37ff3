"""SFT pairs: JSONL with one-line errors naming file and line, the corpus's functions, task pairs."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from optispace.errors import UserError
from optispace.proxies.corpus import TextSource, is_val_file
from optispace.proxies.pairs import cached_function_pairs, function_pairs, load_pairs, read_jsonl, spread

SOURCE = '''def plain(x):
    return x


async def documented(a, b=1):
    """Add.

    Twice."""
    c = a + b
    return c


class K:
    def method(self):
        "Doc."
        return 1

    def only_doc(self):
        """Nothing after."""
'''


def test_functions_with_docstring_and_body_become_pairs(tmp_path):
    (tmp_path / "m.py").write_text(SOURCE)
    (tmp_path / "broken.py").write_text("def (:\n")
    pairs = function_pairs(TextSource("t", tmp_path, ("broken.py", "m.py")))
    assert [(p.prompt, p.response, p.key) for p in pairs] == [
        ('async def documented(a, b=1):\n    """Add.\n\n    Twice."""\n', "    c = a + b\n    return c\n",
         "m.py:5"),
        ('    def method(self):\n        "Doc."\n', "        return 1\n", "m.py:14"),
    ]


def test_jsonl_pairs_and_split(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(200)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    train, held_out = load_pairs(path, None)
    assert len(train) + len(held_out) == 200 and held_out
    assert all(is_val_file(p.key) for p in held_out) and not any(is_val_file(p.key) for p in train)
    assert train[0].prompt == "q0" and train[0].response == "a0"


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "a", "response": "b"', "not JSON"),
    ('["a", "b"]', "'prompt' and 'response'"),
    ('{"prompt": "a", "response": 3}', "'prompt' and 'response'"),
    ('{"prompt": "a", "response": ""}', "empty"),
])
def test_malformed_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n\n' + line + "\n")
    with pytest.raises(UserError, match=message) as info:
        read_jsonl(path)
    assert f"{path}:3:" in str(info.value) and "\n" not in str(info.value)


def test_task_pairs_hold_out_the_tasks_held_out_problems():
    from optispace.proxies.tasks import TASKS

    train, held_out = load_pairs("task:addition", None)
    assert [p.prompt for p in held_out] == TASKS["addition"].split[1]
    assert train[0].response == TASKS["addition"].solve(train[0].prompt)
    with pytest.raises(UserError, match="unknown task"):
        load_pairs("task:nonesuch", None)
    with pytest.raises(UserError, match="text corpus"):
        load_pairs(None, None)



def test_function_pairs_are_cached(tmp_path):
    (tmp_path / "m.py").write_text(SOURCE)
    source, cache = TextSource("t", tmp_path, ("m.py",)), tmp_path / "cache" / "pairs.json"
    first = cached_function_pairs(source, cache)
    assert first == function_pairs(source) and len(first) == 2
    (tmp_path / "m.py").write_text("")  # the cache (keyed by the corpus fingerprint) answers from now on
    assert function_pairs(source) == [] and cached_function_pairs(source, cache) == first


@given(st.lists(st.integers(), max_size=60, unique=True), st.integers(1, 20))
def test_spread_takes_n_distinct_items_in_order_from_all_over(items, n):
    picked = spread(items, n)
    assert len(picked) == min(n, len(items)) and picked == [x for x in items if x in picked]
    if len(items) > n:
        assert picked[0] == items[0] and items.index(picked[-1]) >= len(items) - len(items) // n - 1

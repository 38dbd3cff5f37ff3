"""Token counts, role lookup and frequency buckets shared by the probes."""

import pytest
import torch

from optispace.probes.tracking import (
    TokenCounter,
    batch_tokens,
    bucket_order,
    frequency_bucket,
    params_by_role,
    sampled,
    table_params,
)


def test_counter_keeps_counts_first_and_last_seen():
    counter = TokenCounter(5)
    assert counter.update(1, torch.tensor([[0, 2, 2]])).tolist() == [True, False, True, False, False]
    counter.update(4, torch.tensor([[2, 3]]))
    assert counter.counts.tolist() == [1, 0, 3, 1, 0]
    assert counter.first_seen.tolist() == [1, -1, 1, 4, -1]
    assert counter.last_seen.tolist() == [1, -1, 4, 4, -1]


def test_head_rows_follow_the_targets_and_embed_rows_the_inputs():
    x, y = torch.tensor([[1, 2]]), torch.tensor([[2, 3]])
    assert batch_tokens("embed", (x, y)) is x and batch_tokens("head", (x, y)) is y


def test_roles_come_from_param_groups_else_from_the_roles_mapping():
    table, bias = torch.zeros(4, 2), torch.zeros(2)
    keyed = torch.optim.SGD(
        [{"params": [table], "role": "embed"}, {"params": [bias], "role": "vector"}], lr=0.1
    )
    assert params_by_role(keyed) == {"embed": [table], "vector": [bias]}
    plain = torch.optim.SGD([table, bias], lr=0.1)
    grouped = params_by_role(plain, {"wte": ("embed", table), "b": ("vector", bias)})
    assert grouped == {"embed": [table], "vector": [bias]}
    with pytest.raises(ValueError, match="no 'role' key and no roles were given"):
        params_by_role(plain)


def test_a_token_table_is_one_tensor():
    table = torch.zeros(4, 2)
    assert table_params({"embed": [table], "matrix": [table]}) == {"embed": table}
    with pytest.raises(ValueError, match="role 'head' has 2 tensors"):
        table_params({"head": [table, table]})


def test_frequency_buckets_are_decades_in_rare_to_frequent_order():
    assert [frequency_bucket(c) for c in (0, 1, 9, 10, 999, 1000)] == [
        "0",
        "1-9",
        "1-9",
        "10-99",
        "100-999",
        "1000-9999",
    ]
    assert bucket_order(["100-999", "0", "1-9", "0"]) == ["0", "1-9", "100-999"]


def test_sampled_steps_start_at_the_first():
    assert [s for s in range(1, 25) if sampled(s, 10)] == [1, 11, 21]

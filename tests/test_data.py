"""Data specs, token streams, the Zipf source, the cache location and deterministic batches."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from optispace.errors import UserError
from optispace.proxies.data import (
    CACHE_ENV,
    TokenStream,
    cache_root,
    check_fits,
    load_data,
    train_batch,
    val_batches,
    vocab_range,
    zipf_data,
)
from optispace.proxies.shards import write_shard


@given(lengths=st.lists(st.integers(0, 20), min_size=1, max_size=5), data=st.data())
def test_stream_window_equals_concatenation(lengths, data):
    total = sum(lengths)
    arrays = np.split(np.arange(total, dtype=np.uint16), np.cumsum(lengths)[:-1])
    if total == 0:
        assert len(TokenStream(arrays)) == 0
        return
    start = data.draw(st.integers(0, total - 1))
    n = data.draw(st.integers(1, total - start))
    window = TokenStream(arrays).window(start, n)
    assert window.dtype == np.int64
    assert window.tolist() == list(range(start, start + n))


def test_batches_are_shifted_windows_fixed_by_seed_and_step():
    data = zipf_data(vocab=64, exponent=1.0, tokens=5000)
    x, y = train_batch(data, seed=3, step=7, batch_size=4, seq_len=16)
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(x, train_batch(data, 3, 7, 4, 16)[0])
    assert not torch.equal(x, train_batch(data, 3, 8, 4, 16)[0])
    assert not torch.equal(x, train_batch(data, 4, 7, 4, 16)[0])


def test_val_batches_are_fixed_and_spread():
    data = zipf_data(vocab=64, exponent=1.0, tokens=16_000)
    batches = val_batches(data, n_batches=3, batch_size=2, seq_len=8)
    assert len(batches) == 3 and all(x.shape == (2, 8) for x, _ in batches)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, val_batches(data, 3, 2, 8), strict=True))
    last = data.val.window(len(data.val) - 9, 9)
    assert batches[-1][1][-1].tolist() == last[1:].tolist()  # the last window ends at the stream's end


def test_zipf_frequencies_follow_the_exponent():
    data = zipf_data(vocab=100, exponent=1.2, tokens=200_000)
    counts = np.bincount(data.train.window(0, len(data.train)), minlength=100)
    assert counts[0] / counts[9] == pytest.approx(10**1.2, rel=0.1)
    assert 0 < data.info["entropy_nats"] < np.log(100)
    assert load_data("zipf:s=1.2,v=100,n=200000", 512).info == data.info


@pytest.mark.parametrize("spec", ["zipf:q=1", "zipf:s=x", "zipf:v=600", "zipf:s=0", "zipfy", "/no/such/path"])
def test_bad_specs_are_user_errors(spec):
    with pytest.raises(UserError, match="data"):
        load_data(spec, 512)


def test_shard_folder_with_val_shard(tmp_path):
    write_shard(tmp_path / "fineweb_train_000001.bin", np.arange(100) % 50, 50257)
    write_shard(tmp_path / "fineweb_train_000002.bin", np.arange(100, 200) % 50, 50257)
    write_shard(tmp_path / "fineweb_val_000000.bin", np.arange(40), 50257)
    data = load_data(tmp_path, 512)
    assert (len(data.train), len(data.val), data.info["split"]) == (200, 40, "val shards")
    assert data.info["vocab"] == 50
    assert data.train.window(95, 10).tolist() == [45, 46, 47, 48, 49, 0, 1, 2, 3, 4]
    assert load_data(tmp_path, 512).info["fingerprint"] == data.info["fingerprint"]


def test_single_shard_holds_out_its_tail_and_must_fit_the_vocab(tmp_path):
    path = tmp_path / "tokens.bin"
    write_shard(path, np.arange(1000) % 300, 300)
    data = load_data(path, 512)
    assert (len(data.train), len(data.val), data.info["split"]) == (950, 50, "stream tail")
    with pytest.raises(UserError, match="vocabulary"):
        load_data(path, 256)


def test_text_file_spec_builds_under_the_cache(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("the cat sat on the mat. " * 400)
    data = load_data(text, 300, cache_dir=tmp_path / "cache")
    assert (tmp_path / "cache" / "corpora" / data.info["fingerprint"] / "train.bin").exists()
    assert len(data.train) == data.info["train_tokens"] > 0


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    assert cache_root() == tmp_path / "env"
    monkeypatch.delenv(CACHE_ENV)
    assert "optispace" in str(cache_root())


def test_streams_shorter_than_a_window_are_refused():
    with pytest.raises(UserError, match="sequence length 64"):
        check_fits(zipf_data(vocab=8, exponent=1.0, tokens=800), 64)  # validation gets 50 tokens


def test_vocab_range_bounds_what_a_bpe_of_a_text_corpus_can_have(tmp_path):
    text = tmp_path / "few.txt"
    text.write_text("a few words of text\n" * 5)  # 100 bytes
    low, high, name = vocab_range(text)
    assert (low, high, name) == (257, 357, str(text))
    built = load_data(text, 2000, cache_dir=tmp_path / "cache").info["vocab"]
    assert low <= built <= high < 2000  # asked for more, the corpus gave at most the bound
    assert vocab_range("zipf:v=64") is None
    write_shard(tmp_path / "t.bin", np.arange(100) % 50, 50)
    assert vocab_range(tmp_path / "t.bin") is None

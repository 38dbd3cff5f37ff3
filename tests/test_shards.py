"""The modded-nanogpt .bin shard format: header words, uint16 / uint32 tokens, round-trip, bad files."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from optispace.proxies.shards import HEADER_BYTES, MAGIC, read_shard, token_dtype, write_shard


@given(vocab=st.sampled_from([2, 512, 50304, 65536, 65537, 2**20]), data=st.data())
def test_round_trip(tmp_path_factory, vocab, data):
    tokens = data.draw(hnp.arrays(np.int64, st.integers(0, 300), elements=st.integers(0, vocab - 1)))
    path = tmp_path_factory.mktemp("shards") / "x.bin"
    write_shard(path, tokens, vocab)
    back = read_shard(path)
    assert back.dtype == token_dtype(vocab)
    np.testing.assert_array_equal(back, tokens)
    assert path.stat().st_size == HEADER_BYTES + tokens.size * back.dtype.itemsize


def test_header_matches_modded_nanogpt(tmp_path):
    path = tmp_path / "x.bin"
    write_shard(path, np.arange(10), 50257)
    header = np.fromfile(path, dtype="<i4", count=256)
    assert list(header[:3]) == [MAGIC, 1, 10]
    assert header[3] == 2
    assert (np.fromfile(path, dtype="<u2", offset=HEADER_BYTES) == np.arange(10)).all()


def test_wide_vocab_uses_uint32_flagged_in_header(tmp_path):
    path = tmp_path / "x.bin"
    write_shard(path, np.array([0, 70_000]), 100_000)
    assert np.fromfile(path, dtype="<i4", count=4)[3] == 4
    assert read_shard(path).tolist() == [0, 70_000]


def test_shard_written_by_modded_nanogpt_reads(tmp_path):
    header = np.zeros(256, dtype="<i4")
    header[:3] = MAGIC, 1, 3  # their writer leaves word 3 at zero
    path = tmp_path / "theirs.bin"
    path.write_bytes(header.tobytes() + np.array([5, 6, 7], dtype="<u2").tobytes())
    assert read_shard(path).tolist() == [5, 6, 7]


def test_bad_files_are_named(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"not a shard" * 200)
    with pytest.raises(ValueError, match="magic"):
        read_shard(path)
    write_shard(path, np.arange(10), 512)
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(ValueError, match="10 tokens"):
        read_shard(path)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        write_shard(path, np.array([1, 4]), 4)

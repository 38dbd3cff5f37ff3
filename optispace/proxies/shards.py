"""Token shards in the modded-nanogpt ``.bin`` format.

Layout (matches ``data/cached_fineweb10B.py`` / ``_load_data_shard`` in modded-nanogpt): a header of
256 little-endian int32 -- ``[0]`` magic 20240520, ``[1]`` version 1, ``[2]`` token count -- then the
tokens as uint16. Vocabularies above 65535 do not fit in uint16; for those we write uint32 tokens and
flag it in header word ``[3]`` (the token width in bytes: 4). Existing shards have 0 there, read as 2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MAGIC = 20240520
VERSION = 1
HEADER_WORDS = 256
HEADER_BYTES = HEADER_WORDS * 4
_DTYPES = {2: np.uint16, 4: np.uint32}


def token_dtype(vocab_size: int) -> type[np.unsignedinteger]:
    """uint16 when every id fits (vocab <= 65536), uint32 otherwise."""
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def write_shard(path: str | Path, tokens: np.ndarray, vocab_size: int) -> None:
    """Write ``tokens`` (any integer array) as one shard, atomically (temp file, then rename)."""
    dtype = token_dtype(vocab_size)
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(f"write_shard: token ids must lie in [0, {vocab_size}), got "
                         f"[{tokens.min()}, {tokens.max()}]")
    header = np.zeros(HEADER_WORDS, dtype="<i4")
    header[0], header[1], header[2] = MAGIC, VERSION, tokens.size
    header[3] = np.dtype(dtype).itemsize
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(np.dtype(dtype).newbyteorder("<"), copy=False).tobytes())
    tmp.replace(path)


def read_shard(path: str | Path) -> np.ndarray:
    """The tokens of one shard as a read-only memory map (uint16 or uint32)."""
    path = Path(path)
    header = np.fromfile(path, dtype="<i4", count=HEADER_WORDS)
    if header.size < HEADER_WORDS or header[0] != MAGIC or header[1] != VERSION:
        raise ValueError(f"{path}: not a .bin token shard (want magic {MAGIC}, version {VERSION} "
                         f"in a {HEADER_BYTES}-byte header)")
    width = int(header[3]) or 2
    if width not in _DTYPES:
        raise ValueError(f"{path}: header word 3 gives token width {width} bytes; allowed: 0, 2, 4")
    count = int(header[2])
    expected = HEADER_BYTES + count * width
    if path.stat().st_size != expected:
        raise ValueError(f"{path}: header says {count} tokens ({expected} bytes) but the file has "
                         f"{path.stat().st_size} bytes")
    if count == 0:
        return np.zeros(0, dtype=_DTYPES[width])
    return np.memmap(path, dtype=np.dtype(_DTYPES[width]).newbyteorder("<"), mode="r",
                     offset=HEADER_BYTES, shape=(count,))

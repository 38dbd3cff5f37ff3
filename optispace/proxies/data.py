"""Token data for the proxies: where tokens come from (the stdlib corpus, user text files or folders,
modded-nanogpt ``.bin`` shards, a synthetic Zipfian source) and how batches are drawn from them.

Data specs (``TrainConfig.data``, ``optispace train --data``):
``None`` or ``"stdlib"`` (the default corpus), ``"stdlib:no-tests"``, ``"zipf[:s=1.1,v=V,n=N]"``,
or a path: a ``.bin`` shard, a folder holding ``.bin`` shards, a text file, a folder of text files.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from optispace.errors import UserError
from optispace.proxies.corpus import (
    VAL_PERCENT,
    TextSource,
    build_text_corpus,
    load_built,
    stdlib_source,
    user_text_source,
)
from optispace.proxies.shards import read_shard

CACHE_ENV = "OPTISPACE_CACHE"
_ZIPF_DEFAULTS = {"s": 1.1, "v": None, "n": 2**20}  # v None: the model's vocabulary
_FINGERPRINT_PREFIX_BYTES = 1 << 20


class TokenStream:
    """Several token arrays read as one concatenated stream, without copying them."""

    def __init__(self, arrays: list[np.ndarray]) -> None:
        self.arrays = [a for a in arrays if len(a)]
        self.ends = np.cumsum([len(a) for a in self.arrays], dtype=np.int64)

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def window(self, start: int, n: int) -> np.ndarray:
        """``stream[start : start + n]`` as int64, crossing array boundaries where needed."""
        out = np.empty(n, dtype=np.int64)
        i = int(np.searchsorted(self.ends, start, side="right"))
        filled = 0
        while filled < n:
            a = self.arrays[i]
            lo = start + filled - (int(self.ends[i]) - len(a))
            take = min(n - filled, len(a) - lo)
            out[filled:filled + take] = a[lo:lo + take]
            filled += take
            i += 1
        return out


@dataclass
class TokenData:
    """Train and validation streams plus ``info``: fingerprint, source, split, token counts, vocab."""

    train: TokenStream
    val: TokenStream
    info: dict


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$OPTISPACE_CACHE``, else the user's cache folder for optispace."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    import platformdirs

    return Path(platformdirs.user_cache_dir("optispace"))


def load_data(spec: str | Path | None, vocab_size: int, cache_dir: str | Path | None = None) -> TokenData:
    """Resolve a data spec (see the module docstring) into token streams whose ids are < ``vocab_size``."""
    if str(spec).startswith("zipf"):
        return zipf_data(**_zipf_params(str(spec), vocab_size))
    source = text_source(spec)
    if source is None:
        return _shards(Path(spec).expanduser(), vocab_size)
    return _text(source, vocab_size, cache_root(cache_dir))


def text_source(spec: str | Path | None) -> TextSource | None:
    """The text files behind a data spec; None for token shards and the Zipfian source."""
    if spec is None or str(spec) in ("stdlib", "stdlib:no-tests"):
        return stdlib_source(include_tests=str(spec) != "stdlib:no-tests")
    if str(spec).startswith("zipf"):
        return None
    check_data(spec, 0)  # a path that does not exist: one line (the vocabulary plays no part)
    path = Path(spec).expanduser()
    if path.suffix == ".bin" or (path.is_dir() and any(path.glob("*.bin"))):
        return None
    source = user_text_source(path)
    if not source.files:
        raise UserError(f"data: {path} holds no text files")
    return source


def load_text(source: TextSource, vocab_size: int, cache_dir: str | Path | None = None):
    """A text corpus's token streams and its byte-level BPE tokenizer (``tokenizers.Tokenizer``),
    built once and cached."""
    from tokenizers import Tokenizer

    folder = build_text_corpus(source, vocab_size, cache_root(cache_dir))
    return _streams(folder), Tokenizer.from_file(str(folder / "tokenizer.json"))


def check_data(spec: str | Path | None, vocab_size: int) -> None:
    """``UserError`` unless ``spec`` has a form :func:`load_data` accepts (nothing is read or built)."""
    if spec is None or str(spec) in ("stdlib", "stdlib:no-tests"):
        return
    if str(spec).startswith("zipf"):
        _zipf_params(str(spec), vocab_size)
    elif not Path(spec).expanduser().exists():
        raise UserError(f"data: {str(spec)!r} does not exist; give stdlib, stdlib:no-tests, "
                        "zipf[:s=..,v=..,n=..], a .bin shard, a folder of shards, or text files")


def vocab_range(spec: str | Path | None) -> tuple[int, int, str] | None:
    """The vocabulary sizes a byte-level BPE of the text corpus ``spec`` can have, and its name;
    None for shards and the Zipfian source (their ids are checked against the model when loaded).

    The BPE starts from 256 bytes and the end-of-text token; each merge needs a pair of adjacent
    tokens in the text, so the vocabulary grows by at most one per byte of text beyond that.
    """
    source = text_source(spec)
    if source is None:
        return None
    low = 256 + 1
    return low, low + sum((source.root / f).stat().st_size for f in source.files), source.name


def _text(source, vocab_size: int, cache_dir: Path) -> TokenData:
    return _streams(build_text_corpus(source, vocab_size, cache_dir))


def _streams(folder: Path) -> TokenData:
    train, val, info = load_built(folder)
    return TokenData(TokenStream([train]), TokenStream([val]), info)


def _shards(path: Path, vocab_size: int) -> TokenData:
    """Shards named ``*val*`` are validation; with none, the tail of the last shard is held out."""
    paths = [path] if path.is_file() else sorted(path.glob("*.bin"))
    try:
        arrays = {p: read_shard(p) for p in paths}
    except ValueError as e:
        raise UserError(f"data: {e}") from None
    val_paths = [p for p in paths if "val" in p.name]
    train = [arrays[p] for p in paths if p not in val_paths]
    val = [arrays[p] for p in val_paths]
    split = "val shards"
    if not val or not train:
        train = train or val
        last = train[-1]
        cut = len(last) - len(last) * VAL_PERCENT // 100
        train, val, split = [*train[:-1], last[:cut]], [last[cut:]], "stream tail"
    data_vocab = 1 + max(int(a.max()) for a in arrays.values() if len(a))
    if data_vocab > vocab_size:
        raise UserError(f"data: {path} has token ids up to {data_vocab - 1} but the model's vocabulary is "
                        f"{vocab_size}; choose a proxy tier with a larger vocabulary")
    digest = hashlib.sha256()
    for p in paths:  # name, size and the first MiB: hashing whole multi-GB shards would take minutes
        with open(p, "rb") as f:
            digest.update(f"{p.name}:{p.stat().st_size}:".encode() + f.read(_FINGERPRINT_PREFIX_BYTES))
    info = {"fingerprint": digest.hexdigest()[:16], "source": f"shards {path}", "files": len(paths),
            "split": split, "train_tokens": sum(map(len, train)), "val_tokens": sum(map(len, val)),
            "vocab": data_vocab}
    return TokenData(TokenStream(train), TokenStream(val), info)


def _zipf_params(spec: str, vocab_size: int) -> dict:
    params = dict(_ZIPF_DEFAULTS, v=vocab_size)
    head, _, body = spec.partition(":")
    if head != "zipf":
        raise UserError(f"data: {spec!r}: write zipf or zipf:s=1.1,v=512,n=100000")
    for item in filter(None, body.split(",")):
        key, eq, value = item.partition("=")
        if key not in params or not eq:
            raise UserError(f"data: {spec!r}: unknown zipf setting {item!r}; allowed: s=, v=, n=")
        try:
            params[key] = float(value) if key == "s" else int(value)
        except ValueError:
            raise UserError(f"data: {spec!r}: {key} must be a number, got {value!r}") from None
    if not (params["s"] > 0 and 2 <= params["v"] <= vocab_size and params["n"] >= 16):
        raise UserError(f"data: {spec!r}: need s > 0, 2 <= v <= {vocab_size} (the model's vocabulary), "
                        "n >= 16")
    return {"vocab": params["v"], "exponent": params["s"], "tokens": params["n"]}


def zipf_data(vocab: int, exponent: float, tokens: int) -> TokenData:
    """i.i.d. tokens with P(k) proportional to (k + 1)^-exponent; validation is 1/16 as many tokens.

    The best achievable loss is the distribution's entropy, recorded as ``info["entropy_nats"]``.
    """
    p = np.arange(1, vocab + 1, dtype=np.float64) ** -exponent
    p /= p.sum()
    train = np.random.default_rng(0).choice(vocab, size=tokens, p=p).astype(np.int64)
    val = np.random.default_rng(1).choice(vocab, size=max(tokens // 16, 2), p=p).astype(np.int64)
    key = json.dumps({"zipf": [vocab, exponent, tokens]})
    info = {"fingerprint": hashlib.sha256(key.encode()).hexdigest()[:16],
            "source": f"zipf(v={vocab}, s={exponent}, n={tokens})", "split": "independent draws",
            "train_tokens": int(train.size), "val_tokens": int(val.size), "vocab": vocab,
            "entropy_nats": float(-(p * np.log(p)).sum())}
    return TokenData(TokenStream([train]), TokenStream([val]), info)


def check_fits(data: TokenData, seq_len: int) -> None:
    """Both streams must hold at least one window of ``seq_len + 1`` tokens."""
    for name, stream in (("train", data.train), ("validation", data.val)):
        if len(stream) <= seq_len:
            raise UserError(f"data: the {name} split of {data.info['source']} has {len(stream)} tokens; "
                            f"the proxy needs more than its sequence length {seq_len}")


def train_batch(data: TokenData, seed: int, step: int, batch_size: int, seq_len: int):
    """Batch ``step``: windows at offsets drawn from a generator seeded by (seed, step), so any step's
    batch is redrawn from the step alone (a resumed run needs no other data position)."""
    starts = np.random.default_rng((seed, step)).integers(0, len(data.train) - seq_len, size=batch_size)
    return _stack(data.train, starts, seq_len)


def val_batches(data: TokenData, n_batches: int, batch_size: int, seq_len: int) -> list:
    """Fixed validation batches: ``n_batches * batch_size`` windows spread evenly over the val stream."""
    starts = np.linspace(0, len(data.val) - seq_len - 1, n_batches * batch_size).astype(np.int64)
    return [_stack(data.val, starts[i:i + batch_size], seq_len)
            for i in range(0, len(starts), batch_size)]


def _stack(stream: TokenStream, starts: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.from_numpy(np.stack([stream.window(int(s), seq_len + 1) for s in starts]))
    return rows[:, :-1], rows[:, 1:]


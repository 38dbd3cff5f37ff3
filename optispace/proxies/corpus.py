"""Text corpora turned into token shards: file discovery, a fixed held-out split, a locally trained
byte-level BPE tokenizer (HF ``tokenizers``), and a cache keyed by a fingerprint of all of it.

The embedded default is the source of the running interpreter's standard library: real text that every
machine with Python has, so nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from optispace.proxies.shards import read_shard, write_shard

EOT = "<|endoftext|>"  # separates documents, id 0, as GPT-2's end-of-text does in modded-nanogpt shards
VAL_PERCENT = 5  # share of files held out for validation, chosen by a hash of the relative path
FORMAT = 1  # bump when the way shards are built changes, so old caches are not reused
_TEST_DIRS = frozenset({"test", "tests", "idle_test"})
_ENCODE_CHUNK = 64  # documents per encode call: bounds the memory of the Encoding objects


@dataclass(frozen=True)
class TextSource:
    """A named, ordered set of text files under ``root`` (paths relative to it, sorted)."""

    name: str
    root: Path
    files: tuple[str, ...]


def stdlib_source(include_tests: bool = True) -> TextSource:
    """Every ``*.py`` of the interpreter's stdlib (not site-packages), optionally without test folders."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).parts
        if parts[0] in ("site-packages", "dist-packages"):
            continue
        if not include_tests and _TEST_DIRS.intersection(parts[:-1]):
            continue
        files.append(path.relative_to(root).as_posix())
    version = ".".join(map(str, sys.version_info[:3]))
    name = f"stdlib (CPython {version}{'' if include_tests else ', no tests'})"
    return TextSource(name, root, tuple(sorted(files)))


def user_text_source(path: Path) -> TextSource:
    """One text file, or every non-hidden, non-binary file under a folder (recursively, sorted)."""
    if path.is_file():
        return TextSource(str(path), path.parent, (path.name,))
    files = sorted(
        p.relative_to(path).as_posix()
        for p in path.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        and not _is_binary(p)
    )
    return TextSource(str(path), path, tuple(files))


def _is_binary(path: Path) -> bool:
    with open(path, "rb") as f:
        return b"\0" in f.read(8192)


def is_val_file(relpath: str) -> bool:
    """The fixed held-out split: a file is validation when sha256(path) mod 100 < VAL_PERCENT."""
    return int(hashlib.sha256(relpath.encode()).hexdigest()[:8], 16) % 100 < VAL_PERCENT


def _read(source: TextSource, relpath: str) -> bytes:
    return (source.root / relpath).read_bytes()


def fingerprint(source: TextSource, vocab_size: int) -> str:
    """sha256 of everything the tokens depend on: file paths and contents, vocab, tokenizer version."""
    import tokenizers

    files = [[rel, hashlib.sha256(_read(source, rel)).hexdigest()] for rel in source.files]
    key = {"format": FORMAT, "files": files, "vocab": vocab_size, "tokenizer": "byte-level BPE",
           "tokenizers": tokenizers.__version__, "val_percent": VAL_PERCENT}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def train_tokenizer(texts: Sequence[str], vocab_size: int):
    """A byte-level BPE (GPT-2 style pre-tokenization, 256 byte symbols) trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer, length=len(texts))
    return tok


def encode(tok, texts: Sequence[str]) -> np.ndarray:
    """All documents as one stream, each preceded by the end-of-text token."""
    eot = tok.token_to_id(EOT)
    pieces: list[np.ndarray] = []
    for start in range(0, len(texts), _ENCODE_CHUNK):
        for enc in tok.encode_batch_fast(list(texts[start:start + _ENCODE_CHUNK]), add_special_tokens=False):
            pieces.append(np.array([eot, *enc.ids], dtype=np.int64))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)


def _texts(source: TextSource, files: Sequence[str]) -> list[str]:
    return [_read(source, rel).decode("utf-8", errors="replace") for rel in files]


def build_text_corpus(source: TextSource, vocab_size: int, cache_dir: Path) -> Path:
    """Tokenize ``source`` once and return its cache folder (``train.bin``, ``val.bin``, ``info.json``,
    ``tokenizer.json``). Concurrent builders are safe: each writes a private folder, the first rename wins.
    """
    fp = fingerprint(source, vocab_size)
    final = cache_dir / "corpora" / fp
    if (final / "info.json").exists():
        return final
    tmp = cache_dir / "corpora" / f".tmp-{fp}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _build_into(tmp, source, vocab_size, fp)
        try:
            tmp.rename(final)
        except OSError:
            if not (final / "info.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _build_into(folder: Path, source: TextSource, vocab_size: int, fp: str) -> None:
    val_files = [f for f in source.files if is_val_file(f)]
    train_files = [f for f in source.files if not is_val_file(f)]
    split = "path hash"
    if not val_files or not train_files:
        # too few files for a split by path: hold out the tail of the token stream instead
        train_files, val_files, split = list(source.files), [], "stream tail"
    train_texts = _texts(source, train_files)
    tok = train_tokenizer(train_texts, vocab_size)
    train = encode(tok, train_texts)
    if val_files:
        val = encode(tok, _texts(source, val_files))
    else:
        cut = len(train) - max(1, len(train) * VAL_PERCENT // 100)
        train, val = train[:cut], train[cut:]
    vocab = tok.get_vocab_size()
    write_shard(folder / "train.bin", train, vocab)
    write_shard(folder / "val.bin", val, vocab)
    tok.save(str(folder / "tokenizer.json"))
    info = {"fingerprint": fp, "source": source.name, "files": len(source.files),
            "val_files": len(val_files), "split": split, "train_tokens": int(train.size),
            "val_tokens": int(val.size), "vocab": vocab}
    (folder / "info.json").write_text(json.dumps(info, indent=2) + "\n")


def load_built(folder: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """Train tokens, val tokens and info of a corpus made by ``build_text_corpus``."""
    info = json.loads((folder / "info.json").read_text())
    return read_shard(folder / "train.bin"), read_shard(folder / "val.bin"), info


"""Text corpora: stdlib discovery, the held-out split, the local BPE tokenizer, fingerprint and cache."""

import numpy as np
import pytest

from optispace.proxies.corpus import (
    TextSource,
    build_text_corpus,
    fingerprint,
    is_val_file,
    load_built,
    stdlib_source,
    train_tokenizer,
    user_text_source,
)

TEXT = "def f(x):\n    return x + 1\n\nclass Point:\n    '''A point.'''\n    x: int = 0\n" * 20


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "texts"
    for i in range(60):  # 3 of these 60 paths hash into the held-out split
        (root / f"pkg{i % 3}").mkdir(parents=True, exist_ok=True)
        (root / f"pkg{i % 3}" / f"mod{i}.py").write_text(TEXT.replace("Point", f"Point{i}"))
    (root / ".hidden").write_text("skip me")
    (root / "blob.dat").write_bytes(b"\0\1\2")
    return root


def test_stdlib_source_is_sorted_python_without_site_packages():
    full, lean = stdlib_source(), stdlib_source(include_tests=False)
    assert list(full.files) == sorted(full.files)
    assert all(f.endswith(".py") and not f.startswith("site-packages/") for f in full.files)
    assert "json/__init__.py" in lean.files
    assert not any(f.startswith("test/") or "/tests/" in f for f in lean.files)
    assert set(lean.files) <= set(full.files)
    if (full.root / "test").is_dir():  # some distributions ship the stdlib without its tests
        assert any(f.startswith("test/") for f in full.files) and len(lean.files) < len(full.files)


def test_user_folder_skips_hidden_and_binary(folder):
    source = user_text_source(folder)
    assert len(source.files) == 60
    assert list(source.files) == sorted(source.files)


def test_val_split_is_a_fixed_few_percent():
    names = [f"m{i}.py" for i in range(4000)]
    share = sum(map(is_val_file, names)) / len(names)
    assert 0.03 < share < 0.07
    assert [is_val_file(n) for n in names[:50]] == [is_val_file(n) for n in names[:50]]


def test_build_is_deterministic_and_cached(folder, tmp_path):
    source = user_text_source(folder)
    a = build_text_corpus(source, 300, tmp_path / "cache_a")
    b = build_text_corpus(source, 300, tmp_path / "cache_b")
    assert a.name == b.name == fingerprint(source, 300)
    for name in ("train.bin", "val.bin", "tokenizer.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    train, val, info = load_built(a)
    assert info["split"] == "path hash" and info["val_files"] > 0
    assert (info["train_tokens"], info["val_tokens"]) == (len(train), len(val))
    assert info["vocab"] <= 300 and int(np.max(train)) < info["vocab"]
    mtime = (a / "train.bin").stat().st_mtime_ns
    assert build_text_corpus(source, 300, tmp_path / "cache_a") == a
    assert (a / "train.bin").stat().st_mtime_ns == mtime  # reused, not rebuilt


def test_fingerprint_follows_content_and_vocab(folder):
    source = user_text_source(folder)
    before = fingerprint(source, 300)
    assert fingerprint(source, 301) != before
    (folder / "pkg0" / "mod0.py").write_text("changed")
    assert fingerprint(source, 300) != before


def test_single_file_holds_out_its_tail(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text(TEXT)
    folder = build_text_corpus(user_text_source(path), 280, tmp_path / "cache")
    train, val, info = load_built(folder)
    assert info["split"] == "stream tail" and len(val) > 0 and len(train) > 10 * len(val)


def test_tokenizer_round_trips_and_starts_documents_with_eot(tmp_path):
    tok = train_tokenizer([TEXT], 300)
    assert tok.decode(tok.encode(TEXT).ids) == TEXT
    source = TextSource("t", tmp_path, ("a.txt",))
    (tmp_path / "a.txt").write_text(TEXT)
    train, _, info = load_built(build_text_corpus(source, 300, tmp_path / "c"))
    assert train[0] == tok.token_to_id("<|endoftext|>") == 0
    assert info["vocab"] <= 300

"""The one-read row and column sums of x^2 (optispace/native.py) against the definitions and the torch path.

Tolerance: the kernel adds the same float32 squares as the torch operations in another order, so
each sum agrees with the float64 sum of the float32 squares to float32 summation error (1e-5
relative here, with sums of at most a few thousand terms); the rows it reports as seen are exactly
the torch path's.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from test_primitives_base import randn, seeds

import optispace.native as native
import primitives.second_moment as second_moment

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(autouse=True)
def installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(second_moment, "native_square_sums", native.square_sums)
    if native._library() is None:
        pytest.skip("no C compiler here: the torch operations run (test_primitives_second_moment)")


def torch_path(x2: torch.Tensor, touched: bool) -> native.Sums:
    """:func:`square_sums` without the kernel."""
    hook, second_moment.native_square_sums = second_moment.native_square_sums, None
    try:
        return second_moment.square_sums(x2, None, touched)
    finally:
        second_moment.native_square_sums = hook


def sparse(rows: int, cols: int, seed: int) -> torch.Tensor:
    """A gradient with zero rows, a row whose squares underflow, and large entries."""
    kept = torch.rand(rows, generator=torch.Generator().manual_seed(seed)) < 0.5
    x = randn((rows, cols), seed) * kept[:, None]
    x[rows // 2] = 1e-30
    x[0, 0] = 1e18
    return x


@given(st.integers(1, 600), st.integers(1, 70), seeds, st.integers(1, 3))
def test_sums_are_the_definitions(rows: int, cols: int, seed: int, threads: int) -> None:
    x = sparse(rows, cols, seed)
    torch.set_num_threads(threads)
    try:
        row, col, seen = native.square_sums(x, True)
    finally:
        torch.set_num_threads(1)
    squares = x.square().double()  # float32 squares, as the kernel makes them, summed in float64
    torch.testing.assert_close(row.double(), squares.sum(1), rtol=1e-5, atol=0)
    torch.testing.assert_close(col.double(), squares.sum(0), rtol=1e-5, atol=0)
    assert torch.equal(seen, torch_path(x, True)[2])
    assert torch.equal(seen, (x != 0).any(dim=1))


@given(st.integers(1, 2000), st.integers(1, 40), seeds)
def test_row_sums_do_not_depend_on_the_thread_count(rows: int, cols: int, seed: int) -> None:
    x = randn((rows, cols), seed)
    sums = []
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        sums.append(native.square_sums(x, False))
    torch.set_num_threads(1)
    assert all(torch.equal(s[0], sums[0][0]) and s[2] is None for s in sums)
    assert torch.equal(native.square_sums(x, False)[1], sums[0][1])  # one thread count, one order


def test_a_nan_row_is_seen_and_its_sum_is_nan() -> None:
    x = torch.zeros(5, 3)
    x[2, 1] = float("nan")
    row, _, seen = native.square_sums(x, True)
    assert seen.tolist() == [False, False, True, False, False]
    assert row[2].isnan() and (row[[0, 1, 3, 4]] == 0).all()


@pytest.mark.parametrize("x", [torch.ones(4, 6).t(), torch.ones(4, 6, dtype=torch.float64), torch.ones(4)],
                         ids=["transposed", "float64", "vector"])
def test_what_the_kernel_cannot_take_goes_to_the_torch_operations(x: torch.Tensor) -> None:
    assert native.square_sums(x, False) is None
    if x.ndim == 2 and x.dtype == torch.float32:
        row, col, _ = second_moment.square_sums(x, None)
        assert torch.equal(row, torch.full((6,), 4.0)) and torch.equal(col, torch.full((4,), 6.0))


def test_without_a_compiler_the_torch_operations_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "_LIB", None)
    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    monkeypatch.delenv("CC", raising=False)
    x = randn((300, 20), 0)
    assert native.square_sums(x, False) is None
    row, col, _ = second_moment.square_sums(x, None)
    want_row, want_col, _ = torch_path(x, False)
    assert torch.equal(row, want_row) and torch.equal(col, want_col)


def test_on_a_gpu_the_squares_are_made_in_bounded_blocks() -> None:
    blocks = second_moment.row_blocks(50304, 768, torch.device("cuda"))
    assert len(blocks) == 3 and all((b.stop - b.start) * 768 <= 1 << 24 for b in blocks)
    assert second_moment.row_blocks(100, 768, torch.device("cuda")) == [None]


def built_in(folder, monkeypatch: pytest.MonkeyPatch):
    """The kernel's library as a fresh process would build or load it, with ``folder`` as the temp folder."""
    monkeypatch.setattr(native.tempfile, "gettempdir", lambda: str(folder))
    monkeypatch.setattr(native, "_LIB", None)
    return native._library()


def test_a_damaged_cached_library_is_built_again(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    assert built_in(tmp_path / "first", monkeypatch) is not None
    (good,) = (tmp_path / "first").glob("*/*.so")
    # a new folder: a library this process has loaded is never overwritten (it is mapped)
    damaged = tmp_path / "second" / good.relative_to(tmp_path / "first")
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"not a library")
    assert built_in(tmp_path / "second", monkeypatch) is not None
    assert damaged.read_bytes() == good.read_bytes()


def test_a_forked_child_sums_with_threads_of_its_own() -> None:
    import multiprocessing

    torch.set_num_threads(2)
    try:
        x = randn((1000, 30), 0)
        want = native.square_sums(x, False)  # the parent's pool of 2 threads exists now
        with multiprocessing.get_context("fork").Pool(1) as pool:
            got = pool.apply_async(_sums_with_two_threads, (x,)).get(timeout=120)
    finally:
        torch.set_num_threads(1)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def _sums_with_two_threads(x: torch.Tensor) -> native.Sums:
    torch.set_num_threads(2)
    return native.square_sums(x, False)

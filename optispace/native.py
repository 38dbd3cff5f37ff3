"""Row and column sums of ``x^2`` in one read of ``x``: a small C kernel for the factored second moment.

``row[i] = sum_j x[i, j]^2`` and ``col[j] = sum_i x[i, j]^2`` for a CPU float32 matrix, made in
one pass: each row is squared once, its sum kept in 16 running lanes and its squares added to
column partial sums that stay in L1 (a block of 256 rows at a time, then added to ``col``). It
replaces the block-wise torch operations of :func:`primitives.second_moment.square_sums` (a
multiply, two reductions and an add per block, each a pass over the block: about 3x the time of
one read of the gradient on one core; this kernel takes about 1.2x). The sums are the
same numbers in another order (each square rounded once, no fused multiply-add), so they agree
with the torch operations to float32 summation error, not bit for bit; the eager and the fused
step both use this kernel, and so stay identical to each other.

The source is compiled by the C compiler on the PATH on first use and cached in the temp folder
(keyed by the source and flags); with no compiler, or on any other device or dtype, the torch
operations run. Rows are split over ``torch.get_num_threads()`` threads (ctypes releases the
GIL), each with its own column sums, added in a fixed order: the same bits for a thread count.
"""

from __future__ import annotations

import ctypes
import getpass
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

import primitives.second_moment as second_moment

_SOURCE = r"""
#include <stdint.h>
#include <string.h>
#define LANES 16
#define BLOCK 256
/* Rows lo..hi of a row-major float32 matrix: row[i] = sum of squares of row i, col[j] += the
   squares of column j, seen[i] = whether row i has an entry other than 0 (when seen is given). */
void square_sums(const float *restrict x, int64_t lo, int64_t hi, int64_t cols, float *restrict row,
                 float *restrict col, float *restrict part, uint8_t *restrict seen) {
    for (int64_t b = lo; b < hi; b += BLOCK) {
        int64_t end = b + BLOCK < hi ? b + BLOCK : hi;
        memset(part, 0, (size_t)cols * sizeof(float));
        for (int64_t i = b; i < end; ++i) {
            const float *restrict q = x + i * cols;
            float acc[LANES] = {0};
            int64_t j = 0;
            for (; j + LANES <= cols; j += LANES)
                for (int k = 0; k < LANES; ++k) {
                    float s = q[j + k] * q[j + k];
                    acc[k] += s;
                    part[j + k] += s;
                }
            float t = 0.0f;
            for (int k = 0; k < LANES; ++k) t += acc[k];
            for (; j < cols; ++j) {
                float s = q[j] * q[j];
                t += s;
                part[j] += s;
            }
            row[i] = t;
            if (seen) {  /* a zero sum may hide entries whose squares underflowed; NaN != 0 */
                uint8_t any = t != 0.0f;
                for (j = 0; !any && j < cols; ++j) any = q[j] != 0.0f;
                seen[i] = any;
            }
        }
        for (int64_t j = 0; j < cols; ++j) col[j] += part[j];
    }
}
"""
_FLAGS = ("-O3", "-ffp-contract=off", "-shared", "-fPIC")
_LIB: ctypes.CDLL | None = None
_POOLS: dict[int, ThreadPoolExecutor] = {}
if hasattr(os, "register_at_fork"):  # a forked child has none of the parent's threads: new pools
    os.register_at_fork(after_in_child=_POOLS.clear)


def install() -> None:
    """Make :func:`square_sums` the factored second moment's first pass where it can run."""
    second_moment.native_square_sums = square_sums


Sums = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


def square_sums(x2: torch.Tensor, touched: bool) -> Sums | None:
    """``(row sums, column sums, seen rows or None)`` of ``x2 ** 2``, or ``None`` where the kernel
    cannot run (not a contiguous CPU float32 matrix, or no C compiler)."""
    if x2.device.type != "cpu" or x2.dtype != torch.float32 or not x2.is_contiguous() or x2.ndim != 2:
        return None
    lib = _library()
    if lib is None:
        return None
    rows, cols = x2.shape
    row = torch.empty(rows)
    seen = torch.empty(rows, dtype=torch.uint8) if touched else None
    splits = _splits(rows, torch.get_num_threads())
    cols_each = torch.zeros(len(splits), cols)
    part = torch.empty(len(splits), cols)

    def run(k: int) -> None:
        lo, hi = splits[k]
        lib.square_sums(_ptr(x2), lo, hi, cols, _ptr(row), _ptr(cols_each[k]), _ptr(part[k]),
                        None if seen is None else _ptr(seen))

    if len(splits) == 1:
        run(0)
    else:
        list(_pool(len(splits)).map(run, range(len(splits))))
    col = cols_each[0]
    for k in range(1, len(splits)):  # a fixed order: the same bits for a thread count
        col.add_(cols_each[k])
    return row, col, None if seen is None else seen.bool()


def _splits(rows: int, threads: int) -> list[tuple[int, int]]:
    """``threads`` ranges of rows (fewer for small matrices), multiples of 256 rows but the last."""
    per = -(-rows // max(1, threads))
    per = -(-per // 256) * 256
    return [(lo, min(lo + per, rows)) for lo in range(0, rows, per)] or [(0, 0)]


def _ptr(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def _pool(threads: int) -> ThreadPoolExecutor:
    if threads not in _POOLS:
        _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="optispace-sums")
    return _POOLS[threads]


def _library() -> ctypes.CDLL | None:
    """The compiled kernel, built once per machine and source; ``None`` when nothing can build it."""
    global _LIB
    if _LIB is None:
        _LIB = _build() or False  # type: ignore[assignment]
    return _LIB or None


def _build() -> ctypes.CDLL | None:
    compiler = next((c for c in (os.environ.get("CC"), "cc", "gcc", "clang") if c and shutil.which(c)), None)
    if compiler is None:
        return None
    folder = Path(tempfile.gettempdir()) / f"optispace-native-{getpass.getuser()}"
    # -march=native where the compiler takes it: the cache is keyed by the machine's name too.
    for flags in ((*_FLAGS, "-march=native"), _FLAGS):
        key = hashlib.sha256(f"{_SOURCE}{compiler}{flags}{platform.node()}{sys.platform}".encode())
        path = folder / f"{key.hexdigest()[:16]}.so"
        lib = _load(path) if path.exists() else None
        if lib is None and _compile(compiler, flags, path):  # none yet, or a damaged file
            lib = _load(path)
        if lib is not None:
            return lib
    return None


def _load(path: Path) -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(str(path))
    except OSError:
        return None
    lib.square_sums.restype = None
    lib.square_sums.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    return lib


def _compile(compiler: str, flags: tuple[str, ...], path: Path) -> bool:
    """Compile the source to ``path`` (through a file of this process's own, renamed into place, so
    that processes building at once never load a half-written library)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    source = path.with_suffix(f".{os.getpid()}.c")
    source.write_text(_SOURCE)
    partial = path.with_suffix(f".{os.getpid()}.so")
    try:
        done = subprocess.run([compiler, *flags, str(source), "-o", str(partial)], capture_output=True,
                              timeout=120).returncode == 0
        if done:
            os.replace(partial, path)
        return done
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        source.unlink(missing_ok=True)
        partial.unlink(missing_ok=True)

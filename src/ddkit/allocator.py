"""Keep freed host memory in the process: no page-fault storm per training step on glibc.

A CPU training step allocates activations of tens to hundreds of MB (DM's 256 real images through
ConvNet-3: 134 MB per conv output). glibc serves every block above its mmap threshold (at most 32 MB)
with a fresh `mmap` and returns it with `munmap` when the tensor dies, so each step faults in every page
again: on a 2-core Xeon DM spent 0.25 s of system time per 0.35 s of user time per iteration
(bench/results/matching_speed_cpu.json). PyTorch's own CPU tuning guide recommends jemalloc/tcmalloc for
the same reason; a pip-installed ddkit cannot swap the allocator, but it can tell glibc, at run time, to
serve large blocks from the heap (`M_MMAP_MAX = 0`) and not to hand the heap's top back to the kernel
(`M_TRIM_THRESHOLD`), which does the same for this workload: the pages of step 1 are reused by step 2.

The cost: the process keeps its heap until it exits, and the heap holds some holes (PyTorch's 64-byte
aligned blocks do not always fit a freed block of the same size, so the heap grows for a few steps before
it settles): DM at 256 real images peaked at 1115 MB RSS against 984 MB with glibc's defaults. Set
`DDKIT_KEEP_FREED_MEMORY=0` to keep glibc's defaults. Not glibc (macOS, musl): nothing happens.
Numerics are untouched: only where the bytes live changes.

Where that cost is not small — a method that keeps a long unrolled graph alive (MTT/DATM: 30-80 student steps
of a batch of images, freed in another order than allocated) — the never-returned heap fragments: MTT at
batch_syn 100 peaked at 17.7 GiB against 11.4 GiB with glibc's defaults (bench/results/
mtt_allocator_memory_cpu.json) and was OOM-killed on a 24 GiB machine. Such a method runs inside
`return_freed_memory()`, which puts glibc back to the state its own dynamic thresholds settle in.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from contextlib import contextmanager
from typing import Iterator, Optional

_M_TRIM_THRESHOLD = -1  # glibc malloc.h
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_TRIM = 2 ** 31 - 1  # mallopt takes an int: "never trim" in practice
# glibc's own settled state (malloc/malloc.c): its dynamic mmap threshold rises with the blocks it frees up to
# DEFAULT_MMAP_THRESHOLD_MAX (32 MiB on 64-bit) and keeps the trim threshold at twice that; 65536 = DEFAULT_MMAP_MAX.
_SETTLED_MMAP_THRESHOLD = 32 * 2 ** 20
_SETTLED_TRIM = 2 * _SETTLED_MMAP_THRESHOLD
_SETTLED_MMAP_MAX = 65536

_state: Optional[bool] = None


def _libc() -> Optional[ctypes.CDLL]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return None  # musl has no mallopt tuning of this kind
    return libc


def keep_freed_memory() -> bool:
    """Switch glibc to heap-only, never-trimmed allocation once per process; True where it took effect.

    Idempotent and cheap; call it at the start of CPU-heavy work (the CLI does, so do the matching methods).
    """
    global _state
    if _state is not None:
        return _state
    _state = False
    if os.environ.get("DDKIT_KEEP_FREED_MEMORY", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    libc = _libc()
    if libc is None:
        return False
    # mallopt returns 1 on success; both settings or none (a half setting buys nothing)
    if _mallopt(libc, _M_TRIM_THRESHOLD, _TRIM) and _mallopt(libc, _M_MMAP_MAX, 0):
        _state = True
    return _state


def _mallopt(libc: ctypes.CDLL, param: int, value: int) -> bool:
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc.mallopt(param, value) == 1


@contextmanager
def return_freed_memory() -> Iterator[bool]:
    """Inside: blocks of 32 MiB and more that the heap's free chunks cannot serve are mapped and handed back
    when freed (glibc serves a request from a fitting free chunk first, as in its own settled state), and the
    heap is trimmed at entry; True if so.

    For work whose live set is large and freed out of order (an unrolled MTT graph), where a heap that is never
    returned fragments into a peak far above the live size. Only undoes `keep_freed_memory` where it took
    effect (otherwise glibc's defaults already hold and nothing is touched), and restores it on the way out.
    """
    libc = _libc() if active() else None
    if libc is None:
        yield False
        return
    _mallopt(libc, _M_MMAP_THRESHOLD, _SETTLED_MMAP_THRESHOLD)
    _mallopt(libc, _M_MMAP_MAX, _SETTLED_MMAP_MAX)
    _mallopt(libc, _M_TRIM_THRESHOLD, _SETTLED_TRIM)
    libc.malloc_trim(0)  # hand back what the kept heap already holds (e.g. the data load's temporaries)
    try:
        yield True
    finally:
        _mallopt(libc, _M_TRIM_THRESHOLD, _TRIM)
        _mallopt(libc, _M_MMAP_MAX, 0)


def active() -> bool:
    """Whether `keep_freed_memory` took effect in this process (for run summaries and benches)."""
    return bool(_state)

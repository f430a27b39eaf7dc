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
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from typing import Optional

_M_TRIM_THRESHOLD = -1  # glibc malloc.h
_M_MMAP_MAX = -4
_TRIM = 2 ** 31 - 1  # mallopt takes an int: "never trim" in practice

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
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; both settings or none (a half setting buys nothing)
    if libc.mallopt(_M_TRIM_THRESHOLD, _TRIM) == 1 and libc.mallopt(_M_MMAP_MAX, 0) == 1:
        _state = True
    return _state


def active() -> bool:
    """Whether `keep_freed_memory` took effect in this process (for run summaries and benches)."""
    return bool(_state)

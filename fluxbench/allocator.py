"""Keep freed CPU memory in the process, so that large batch tensors do not page-fault on every allocation.

glibc serves an allocation above its mmap threshold (32 MiB at most under its dynamic rule) with a fresh
``mmap`` and unmaps it on free, so each such tensor pays a page fault per 4 KiB page on first touch. A float
batch of 64 ImageNet-size images is 38 MiB: converting a cached uint8 batch to floats takes 16 ms that way
and 5 ms from memory the process keeps (2 cores, measured by ``perf/data_cache.py``'s conversion). Raising the
mmap and trim thresholds keeps freed blocks for reuse, as jemalloc or tcmalloc would (PyTorch's CPU
performance guide recommends either); the price is that the process holds its peak heap until it ends.
A no-op where the C library is not glibc, or with ``FLUXBENCH_KEEP_FREED_MEMORY=0``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_THRESHOLD = 1 << 30  # allocations up to 1 GiB come from the heap and go back to it


def keep_freed_memory() -> bool:
    """Set glibc's thresholds for this process (children started after inherit them); whether it took effect."""
    if os.environ.get("FLUXBENCH_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt): the default allocator stays
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 * _THRESHOLD))

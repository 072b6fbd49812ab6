"""The process keeps freed memory (glibc's thresholds), and the opt-out leaves the allocator alone."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys

import pytest

from fluxbench.allocator import keep_freed_memory

# a 64 MiB block written, freed, allocated and written again: from memory the process kept, the second write
# touches pages that are already mapped (a few page faults, not one per 4 KiB page: 16,384)
SECOND_TOUCH_FAULTS = """
import ctypes, ctypes.util, resource
from fluxbench.allocator import keep_freed_memory
kept = keep_freed_memory()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 64 << 20
block = libc.malloc(size); ctypes.memset(block, 1, size); libc.free(block)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = libc.malloc(size); ctypes.memset(block, 1, size)
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(sys.platform != "linux" or not ctypes.util.find_library("c"), reason="glibc's mallopt")
def test_freed_large_blocks_are_reused_and_the_opt_out_is_honoured(monkeypatch):
    def run(**env: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", SECOND_TOUCH_FAULTS], capture_output=True, text=True,
                             check=True, env={**os.environ, **env}).stdout.split()
        return out[0], int(out[1])

    kept, faults = run()
    assert kept == "True" and faults < 1000
    kept, faults = run(FLUXBENCH_KEEP_FREED_MEMORY="0")
    assert kept == "False" and faults > 8000  # glibc's default: a fresh mapping, faulted in page by page
    monkeypatch.setenv("FLUXBENCH_KEEP_FREED_MEMORY", "0")
    assert keep_freed_memory() is False

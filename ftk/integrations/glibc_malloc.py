"""glibc's allocator settings for CPU training with large temporary tensors.

Each training step on CPU allocates and frees several logits-sized tensors (tokens x vocabulary
floats: hundreds of MB with a 151k vocabulary).  glibc serves each one with a fresh ``mmap`` and
unmaps it on free, so every step page-faults that memory in again; measured on the quickstart,
system time was most of the run.  Raising the mmap and trim thresholds keeps those blocks on the
heap for reuse.  The settings are restored afterwards and the freed memory handed back with
``malloc_trim``.  On other C libraries and platforms this does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
from collections.abc import Iterator

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
GLIBC_DEFAULT_THRESHOLD = 128 * 1024
HEAP_LIMIT = 1 << 30


@contextlib.contextmanager
def large_allocations_from_the_heap() -> Iterator[None]:
    """Within the block, serve allocations up to 1 GiB from the heap and keep freed memory for reuse."""
    mallopt = malloc_trim = None
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
        except (OSError, AttributeError):
            mallopt = None
    if mallopt is None or malloc_trim is None:
        yield
        return
    mallopt(M_MMAP_THRESHOLD, HEAP_LIMIT)
    mallopt(M_TRIM_THRESHOLD, HEAP_LIMIT)
    try:
        yield
    finally:
        mallopt(M_MMAP_THRESHOLD, GLIBC_DEFAULT_THRESHOLD)
        mallopt(M_TRIM_THRESHOLD, GLIBC_DEFAULT_THRESHOLD)
        malloc_trim(0)

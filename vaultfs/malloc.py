"""Memory-management settings for a snapshot: glibc's allocator for its large, short-lived
buffers, and Python's cyclic garbage collector for its many small objects.

A snapshot moves every byte through buffers of megabytes (file contents, frames
before and after compression). By default glibc serves each of them with a
fresh ``mmap`` and gives it back on ``free``, so every page is faulted in and
zeroed again: on the benchmark that was 3 s of system time out of 16 s.
Raising the mmap threshold makes those buffers come from the heap and be
reused; one arena keeps what is retained bounded. Measured side by side
(docs/benchmarks.md): 16.3 s → 11.1 s wall for the first snapshot.

Only glibc has ``mallopt``; elsewhere this does nothing.

The cyclic collector (`relax_cycle_collector`) runs every 700 container allocations by
default and re-traverses the objects a scan keeps (entries, listings) each time: on the
warm benchmark's 41,000 source files that was 13 % of the snapshot's user CPU (3.51 s vs
4.03 s, medians of three side by side; the same peak RSS). A snapshot makes next to no
reference cycles, so it collects a hundred times less often.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def tune_for_large_buffers(buffer_size: int = 32 * 1024 * 1024) -> bool:
    """Serve allocations below ``buffer_size`` from one reused heap (freed memory above 8 MiB
    goes back to the system, which keeps peak RSS low). Call before threads start."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    ok = mallopt(M_ARENA_MAX, 1) == 1
    ok &= mallopt(M_MMAP_THRESHOLD, buffer_size) == 1
    ok &= mallopt(M_TRIM_THRESHOLD, 8 * 1024 * 1024) == 1
    return bool(ok)


_libc: ctypes.CDLL | None = None


def release_free_memory() -> None:
    """Give free heap pages back to the system (``malloc_trim``); cheap, a few hundred µs.

    The snapshot's heap holds its large buffers between uses (see
    `tune_for_large_buffers`); trimming now and then keeps the pages that are free
    at that moment out of the peak RSS.
    """
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        if not name:
            return
        _libc = ctypes.CDLL(name)
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


def relax_cycle_collector() -> None:
    """Collect reference cycles rarely: young objects every 100,000 allocations instead of
    700, and never again what exists now (the imported modules). For the long runs that make
    many long-lived objects and next to no cycles — a snapshot (its entries and listings),
    the mount (its node table and prepared directories: 8-15 % of a first listing's handler
    time went to rescanning them). Cyclic garbage is still freed, later: at most that many
    young objects wait, a few MiB."""
    gc.freeze()
    gc.set_threshold(100_000, 20, 20)

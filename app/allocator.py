"""Giving memory the process has freed back to the system.

A snapshot's payload is hundreds of MB, held while it is written and then freed. Both glibc's malloc and
tcmalloc keep freed pages for later use rather than return them, so without asking, a learner's resident
memory settles at its highest point and creeps up from one write to the next.
"""

from __future__ import annotations

import ctypes
import functools


@functools.cache
def _process() -> ctypes.CDLL:
    return ctypes.CDLL(None)


def release_free_memory() -> None:
    """Ask the allocator in use (tcmalloc where preloaded, else glibc's) to return its free pages."""
    process = _process()
    if hasattr(process, "MallocExtension_ReleaseFreeMemory"):
        process.MallocExtension_ReleaseFreeMemory()
    elif hasattr(process, "malloc_trim"):
        process.malloc_trim(0)

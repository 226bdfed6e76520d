"""The C allocator told to give large buffers back to the system as soon as they are freed.

The server's peak memory is mostly buffers of one update's size (10 MB and more): receive
buffers, decoded arrays, the running sum's temporaries, gRPC's messages. glibc serves a freed
block of that size again from the heap it was freed into, and raises its threshold for mapping
blocks of their own to the largest block freed, so after the first round every update's buffer
comes from one of the heaps (one per thread that allocates, up to eight per core), which keep
what is freed. Fixing the threshold above one wire chunk maps each larger buffer on its own
and unmaps it when freed; capping the heaps at one per core stops nine uploading threads from
each keeping freed chunks in a heap of its own. `make bench-fold` measures what it saves.
"""

from __future__ import annotations

import ctypes
import logging
import os

from common.tensors import CHUNK_BYTES

log = logging.getLogger("fedstock")

# mallopt's parameters, from glibc's malloc.h.
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

# Blocks above this are mapped on their own and given back when freed: a wire chunk (1 MiB and
# its message's few bytes) is reused from the heap, anything of an update's size is not.
MAP_ABOVE = 2 * CHUNK_BYTES


def give_back_large_buffers(map_above: int = MAP_ABOVE, heaps: int | None = None) -> bool:
    """Set glibc's allocator so large freed buffers leave the process, with `heaps` heaps (one
    per core by default); False where the C library is not glibc (musl, macOS), which is left
    as it is. Call before threads start."""
    heaps = heaps if heaps is not None else os.cpu_count() or 1
    if map_above < 1 or heaps < 1:
        raise ValueError(f"map_above and heaps must be positive, not {map_above} and {heaps}")
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError, TypeError):
        log.debug("no mallopt in the C library: its allocator is left as it is")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, map_above)) and bool(mallopt(M_ARENA_MAX, heaps))

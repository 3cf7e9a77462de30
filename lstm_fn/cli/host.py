"""Process-wide settings of the host that make CPU training faster."""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# mallopt parameters, from glibc's <malloc.h>
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def reuse_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the OS.

    XLA's CPU runtime allocates a step's scratch buffers on every call and frees them after;
    glibc serves blocks that big with ``mmap`` and ``munmap`` (and trims per-thread arenas),
    so each step would fault in its pages afresh. With one arena, no ``mmap`` and no
    trimming, the blocks are reused (the figures: ``benchmarks/README.md``). The cost: the
    process keeps its peak heap until it exits.

    Call it before the first JAX computation (XLA's threads pick their arena when they
    start). Affects the whole process. Returns whether it applied (glibc only).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
    return all(mallopt(option, value) == 1 for option, value in settings)

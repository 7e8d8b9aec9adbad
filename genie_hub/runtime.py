"""Process-wide settings the command line applies before any work: how freed CPU memory is reused.

glibc's malloc serves large allocations (above a threshold that rises to at most 32 MB) with a fresh mmap,
unmaps them when freed and trims the heap's freed top, so a large tensor (a 224 px activation of a batch of
16 is 20-80 MB) often costs a page fault per 4 KiB page when first written: on this project's CPU machine an
elementwise op over 20M floats took 29 ms into a fresh tensor and 3.4 ms into a reused one, and a reconstruction
step of EfficientNet-Lite0 ran 1.5x slower. Serving large blocks from the heap and keeping freed ones there (the
effect of jemalloc or tcmalloc, which PyTorch's CPU performance guides recommend) removes that cost; peak memory
stayed the same (2.07 vs 2.09 GB, Lite0).

Only the command line calls `reuse_freed_memory`: a library should not change its host process's allocator.
Python users can call it themselves. It does nothing when the user already chose: any MALLOC_* variable or
an LD_PRELOAD'ed allocator in the environment, or GENIE_HUB_SYSTEM_MALLOC=1.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

logger = logging.getLogger("genie_hub.runtime")

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters (glibc's malloc.h)
TRIM_THRESHOLD = 2**31 - 1  # (mallopt takes a C int) hand the heap's top back only when 2 GB of it are free


def _user_chose_allocator() -> bool:
    env = os.environ
    return (env.get("GENIE_HUB_SYSTEM_MALLOC", "") not in ("", "0") or bool(env.get("LD_PRELOAD"))
            or any(key.startswith("MALLOC_") for key in env))


def reuse_freed_memory() -> bool:
    """Make glibc keep freed large blocks for reuse instead of unmapping them; True when it was applied.

    Changes no result (the CPU allocator still aligns every tensor to 64 bytes), only how often the kernel
    zero-fills fresh pages. A no-op outside glibc (macOS, Windows, musl) and where the user chose (see above).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or _user_chose_allocator():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        applied = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    except (OSError, AttributeError):
        return False
    logger.debug("glibc malloc: large blocks from the heap, kept for reuse (%s)", applied)
    return applied

"""How the training process takes memory from the operating system.

glibc's malloc serves a block over its mmap threshold (128 KB at first, rising to the largest
block freed, at most 32 MB) with a fresh mapping that it hands back at ``free``, and it gives the
top of its heap back once 256 KB (twice that threshold) lie free there. Either way, the next
block of that size costs a page fault for every 4 KB page it touches again. A stacked group's
activations are such blocks (``[64 jobs, 32 rows, 64 units]``: 0.5 MB a step, 3.3 MB for a
validation pass), and page faults are dear in a virtual machine. Measured here, the 64-job,
1,000-step stacked sweep of ``scripts/benchmark_stacked.py``: 216-231 k page faults and 2.65-2.69 s
of training by default, 141-146 k and 2.14-2.44 s with the settings below; a validation pass
of the 64 jobs took 4-5 ms instead of ~1 ms.

(Those figures with a 128 MB trim threshold; 32 MB gave the same, 150-164 k and 2.16-2.23 s.)

PyTorch's CPU tuning guide suggests a different allocator (jemalloc, tcmalloc) for the same
reason; this is glibc's own documented setting (``mallopt``), with no library to install. It
costs memory: up to 64 MB freed (per malloc arena) stays with the process rather than going
back to the system; the 1,024-job sweep's peak stayed 1.15 GB.
"""

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
MMAP_THRESHOLD = 64 << 20  # blocks under 64 MB come from the heap, and go back to it
TRIM_THRESHOLD = 64 << 20  # the heap keeps up to 64 MB free at its top: a freed block under MMAP_THRESHOLD stays


def keep_freed_memory() -> bool:
    """Set glibc malloc to reuse freed memory rather than return it (above); whether it took.
    Elsewhere (macOS, musl, Windows) nothing changes."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's malloc: glibc's, unless another was preloaded
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; glibc's fixed thresholds also end its dynamic adjustment
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1

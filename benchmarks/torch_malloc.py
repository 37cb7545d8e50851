"""torch_malloc.py: the PyTorch anchors run with freed memory kept for reuse, as PyTorch's own CPU
performance tuning guide recommends (it suggests TCMalloc or jemalloc in place of glibc's malloc).

With glibc's defaults every block above the mmap threshold (at most 32 MiB) is a fresh mmap that
free() unmaps, so a training step page-faults its large activations in again every step (and a
benchmark that allocates an output per call does so per call). Our CPU backend keeps its arenas, so
a default-malloc PyTorch is a weaker anchor than the one a tuned user runs. Measured on the 2-core
Xeon VM, 2026-12-02 (resnet50 224 batch 16 training step, channels_last, `train_step_torch.py`):
glibc defaults 5.4-6.7 img/s (its speed also depended on what other processes did between its
steps), LD_PRELOAD libtcmalloc_minimal 8.05, jemalloc 5.5 (its freed pages decay back to the
system), glibc with these two settings 7.8-8.3. Used by train_step_torch.py, loss_torch.py and
kernels/run.py; MVEB_TORCH_MALLOC=default leaves glibc as it is (to reproduce older figures).
A kept heap is the wrong choice for a computation whose temporaries approach the machine's RAM: the
official vMF composition at N = 1024 (8.6 GB tensors, ~19 GB at its peak on this 23 GB VM) took 60 s
with the kept settings (TCMalloc 56 s) against 12-15 s with glibc's defaults (standalone runs), so
loss_torch.py runs it under `handing_memory_back()` (then 12-44 s in four runs: that computation's time
swings with the machine's memory state either way; inside loss.js 25-49 s, and 42 s with
MVEB_TORCH_MALLOC=default in the same hour).
"""
import contextlib
import ctypes
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # glibc's <malloc.h>


def _glibc_defaults_asked():
    return os.environ.get("MVEB_TORCH_MALLOC") == "default"


def keep_freed_memory():
    """Makes glibc serve every block from its heap (no mmap) and never hand free memory back (up to
    2 GiB of free top of heap); returns the mode for the anchor's report: 'kept' or 'default'."""
    if _glibc_defaults_asked():
        return "default"
    libc = ctypes.CDLL("libc.so.6")
    if libc.mallopt(M_MMAP_MAX, 0) != 1 or libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) != 1:
        raise RuntimeError("mallopt refused the settings (not glibc?); set MVEB_TORCH_MALLOC=default")
    return "kept"


@contextlib.contextmanager
def handing_memory_back():
    """glibc's own settings inside the block (large blocks mmapped and unmapped when freed), the free
    memory the kept heap holds handed back first; the kept settings again after it (when they were on)."""
    if _glibc_defaults_asked():
        yield
        return
    libc = ctypes.CDLL("libc.so.6")
    # glibc's state once its dynamic threshold has grown (any mallopt switches the growth off, and the
    # static 128 KiB threshold would mmap every medium temporary: 44 s for that composition): blocks
    # from 32 MiB mmapped, free top of heap over 64 MiB handed back
    libc.mallopt(M_MMAP_MAX, 65536)
    libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
    libc.mallopt(M_TRIM_THRESHOLD, 64 << 20)
    libc.malloc_trim(0)
    try:
        yield
    finally:
        keep_freed_memory()

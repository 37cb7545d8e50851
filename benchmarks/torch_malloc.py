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
"""
import ctypes
import os

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's <malloc.h>


def keep_freed_memory():
    """Makes glibc serve every block from its heap (no mmap) and never hand free memory back (up to
    2 GiB of free top of heap); returns the mode for the anchor's report: 'kept' or 'default'."""
    if os.environ.get("MVEB_TORCH_MALLOC") == "default":
        return "default"
    libc = ctypes.CDLL("libc.so.6")
    if libc.mallopt(M_MMAP_MAX, 0) != 1 or libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) != 1:
        raise RuntimeError("mallopt refused the settings (not glibc?); set MVEB_TORCH_MALLOC=default")
    return "kept"

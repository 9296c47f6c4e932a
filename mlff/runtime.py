"""Where a run executes: the device, the floating-point dtype and torch's CPU threads.

The one place the CLI, the calculator and training turn "auto"/"cuda"/"float32"/thread counts into
torch settings, so every command resolves them the same way.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from mlff.errors import MLFFError

DTYPES = {"float64": torch.float64, "float32": torch.float32}

# below this many atoms torch's intra-op threads cost more than they give on a CPU
SMALL_SYSTEM_ATOMS = 1000
# per call, on a CPU: up to this many edges one thread evaluates a model faster than several
# (eager: measured crossover between 164 and 528 edges; compiled per-edge sums: inductor's
# parallel kernels were slower than one thread up to Cu-256's 10,752 edges and faster at
# Cu-2048's 86,016; see docs/measurements.md, 2026-12-04. Compiled graphs in neighbour blocks
# run on all threads, see mlff.compiled)
SINGLE_THREAD_EDGES_EAGER = 256
SINGLE_THREAD_EDGES_COMPILED = 16384


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a GPU is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise MLFFError(f"device {device!r} is not one of 'auto', 'cpu', 'cuda'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MLFFError("device 'cuda' asked for, but torch sees no CUDA GPU on this machine")
    return device


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float64"``/``"float32"`` (or the torch dtype) -> torch dtype."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if dtype not in DTYPES:
        raise MLFFError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def set_threads(
    threads: int | None, device: str | torch.device = "cpu", n_atoms: int | None = None
) -> None:
    """Set torch's CPU threads: ``threads`` when given (> 0); otherwise, on a CPU, one thread
    for work on small graphs (``n_atoms`` below SMALL_SYSTEM_ATOMS, or None for training and
    evaluation batches), whose many small tensor operations only pay for a thread pool; torch's
    own choice for large structures and on a GPU. On a CPU it also flushes subnormal floats
    (:func:`flush_denormals`), before the thread pool that inherits the setting starts."""
    if torch.device(device).type == "cpu":
        flush_denormals()
    if threads:
        torch.set_num_threads(int(threads))
        return
    if torch.device(device).type == "cpu" and (n_atoms is None or n_atoms < SMALL_SYSTEM_ATOMS):
        torch.set_num_threads(1)


@contextmanager
def single_thread_below(n_edges: int, limit: int, device: torch.device) -> Iterator[None]:
    """Evaluate with one CPU thread when the call has at most ``limit`` edges, then restore
    torch's thread count: a small call's many tiny kernels only pay for the thread pool's
    start-up. No effect on a GPU, with one thread already, or above the limit."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1 or n_edges > limit:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_allocator_tuned = False


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the system.

    By default glibc serves every allocation above 32 MB with a fresh ``mmap`` and unmaps it on
    free, so each force call on a large structure touches its activations' pages anew: at
    16,384 Cu atoms the kernel's page faults took longer than the model (``docs/measurements.md``).
    Serving all allocations from the heap and never trimming it makes repeated calls reuse the
    same pages. A trim threshold of -1 turns trimming off; the largest positive one (2 GB) did
    not, since one call at 16,384 atoms frees more than that at the top of the heap.
    Process-wide and idempotent; returns whether it took effect (glibc only). Set
    ``MLFF_KEEP_FREED_MEMORY=0`` to leave the allocator alone.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    if os.environ.get("MLFF_KEEP_FREED_MEMORY", "1") == "0" or sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _allocator_tuned = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, -1))
    return _allocator_tuned


def flush_denormals() -> bool:
    """Treat subnormal floats as zero on this CPU thread and the threads it starts from now on.

    A trained model's saturated SiLUs and gates produce subnormal floats (below 1.2e-38 in
    float32), and x86 cores take a slow microcode path for each: a paracetamol model trained
    with Muon ran its training step 2.1x slower for it (``docs/measurements.md``). Flushing
    them changes results by less than the smallest normal float. Call it before torch starts
    its thread pool (the pool's threads inherit the setting when they are created); returns
    whether the CPU supports it. Set ``MLFF_FLUSH_DENORMALS=0`` to leave the FPU alone.
    """
    if os.environ.get("MLFF_FLUSH_DENORMALS", "1") == "0":
        return False
    return bool(torch.set_flush_denormal(True))

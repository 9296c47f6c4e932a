"""Fused CPU kernels (the ``*.cpp`` files here), built on first use and loaded through ctypes.

The kernels are plain C++ (no Python or torch headers). They are compiled with the C++ compiler
that ``torch.compile`` also needs (``$CXX``, else ``g++``), for this CPU (``-march=native``), into
one library kept in ``$MLFF_KERNEL_CACHE`` (default ``~/.cache/mlff/kernels``) under a name
that hashes the sources, the flags, the compiler and the CPU: a few seconds once per machine.
Without a compiler (or off Linux), or with ``MLFF_FUSED_KERNELS=0``, :func:`library` is None and
callers use their reference path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

SOURCES = tuple(sorted(Path(__file__).parent.glob("*.cpp")))
# -ffast-math: reassociation and fast reciprocals (the kernel has no NaN or infinity checks to
# lose); linked without it, so loading the library does not switch the process to flush-to-zero
COMPILE_FLAGS = ("-O3", "-march=native", "-mprefer-vector-width=512", "-ffast-math", "-fopenmp",
                 "-fPIC", "-std=c++17")  # fmt: skip
# libgomp.so.1: in a process that imported torch, the dynamic linker binds it to the copy torch
# loaded, so kernel and torch share one OpenMP thread pool (two pools would spin against each
# other on the same cores)
LINK_FLAGS = ("-shared", "-fopenmp")
# what the kernels are instantiated for: function name suffix per dtype
SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def enabled() -> bool:
    """Whether fused kernels may be used (``MLFF_FUSED_KERNELS=0`` turns them off)."""
    return os.environ.get("MLFF_FUSED_KERNELS", "1") != "0"


def available(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether kernels serve this dtype and device, are enabled and built (builds them once)."""
    return enabled() and device.type == "cpu" and dtype in SUFFIX and library() is not None


def _cache_dir() -> Path:
    configured = os.environ.get("MLFF_KERNEL_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mlff" / "kernels"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next((line for line in cpuinfo if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


@functools.lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The compiled kernel library, built on first use; None where it cannot be built."""
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None or platform.system() != "Linux":
        return None
    try:
        version = subprocess.run(
            [compiler, "--version"], capture_output=True, text=True, timeout=30
        ).stdout
        sources = [path.read_bytes() for path in SOURCES]
        key = hashlib.sha256(
            b"\0".join(
                [
                    *sources,
                    " ".join(COMPILE_FLAGS + LINK_FLAGS).encode(),
                    version.encode(),
                    platform.machine().encode(),
                    _cpu_flags().encode(),
                ]  # fmt: skip
            )
        ).hexdigest()[:16]
        target = _cache_dir() / f"mlff_kernels-{key}.so"
        if not target.exists():
            _build(compiler, target)
        return _bind(ctypes.CDLL(str(target)))
    except (OSError, subprocess.SubprocessError) as error:
        warnings.warn(
            f"mlff: the fused CPU kernels could not be built ({error}); using the reference path",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


def _build(compiler: str, target: Path) -> None:
    """Compile and link into ``target``, atomically (a temporary file, then a rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        objects = [Path(work) / f"{source.stem}.o" for source in SOURCES]
        lib = Path(work) / "kernels.so"
        commands = [
            [compiler, *COMPILE_FLAGS, "-c", str(source), "-o", str(obj)]
            for source, obj in zip(SOURCES, objects, strict=True)
        ]
        commands.append([compiler, *map(str, objects), "-o", str(lib), *LINK_FLAGS])
        for command in commands:
            done = subprocess.run(command, capture_output=True, text=True, timeout=300)
            if done.returncode:
                raise OSError(done.stderr.strip().splitlines()[-1] if done.stderr else "failed")
        os.replace(lib, target)


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declare the entry points' argument types (ctypes passes ints and pointers unchecked)."""
    pointer, index, integer, real = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
    for suffix in SUFFIX.values():
        forward = getattr(lib, f"mlff_messages_forward_{suffix}")
        forward.argtypes = [pointer, integer, pointer, pointer, integer, integer, integer]
        forward.argtypes += [pointer] * 13
        backward = getattr(lib, f"mlff_messages_backward_{suffix}")
        backward.argtypes = [pointer, integer, pointer, pointer, integer, integer, integer]
        backward.argtypes += [pointer] * 14
        backward.argtypes += [index] + [pointer] * 4
        forward.restype = backward.restype = integer
        geometry = getattr(lib, f"mlff_geometry_forward_{suffix}")
        geometry.argtypes = [index, integer, pointer, pointer, integer, pointer, real, real]
        geometry.argtypes += [integer, integer, integer, integer, pointer, pointer]
        geometry.argtypes += [pointer, pointer, pointer]
        geometry_backward = getattr(lib, f"mlff_geometry_backward_{suffix}")
        geometry_backward.argtypes = geometry.argtypes[:14] + [pointer] * 5
        geometry.restype = geometry_backward.restype = integer
    return lib

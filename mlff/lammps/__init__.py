"""mlff models inside LAMMPS: the ML-IAP ``unified`` adapter, its safe file, and how to load it.

``mlff export-lammps`` writes the file (:func:`export_lammps`); :func:`register` (inside LAMMPS's
Python) or :func:`mlff.lammps.driver.configure` (from a Python driver) hands LAMMPS the
:class:`MLIAPAdapter` built from it. None of this imports LAMMPS until it is called.
"""

from mlff.lammps.adapter import MLIAPAdapter
from mlff.lammps.files import export_lammps, read_lammps_file
from mlff.lammps.settings import LAMMPSSettings, message_passing_depth

__all__ = [
    "LAMMPSSettings",
    "MLIAPAdapter",
    "configure",
    "export_lammps",
    "message_passing_depth",
    "read_lammps_file",
    "register",
]


def __getattr__(name: str):
    """``configure`` and ``register`` on first use: importing the driver here would make
    ``python -m mlff.lammps.driver`` warn that the module was imported before it ran."""
    if name in ("configure", "register"):
        from mlff.lammps import driver

        return getattr(driver, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Relaxation of structures: positions (fixed cell) or positions and cell (FrechetCellFilter).

Units: energies eV, forces eV/Å, volumes Å³. Convergence is ASE's: the largest force norm (with
``cell=True`` including the filter's cell components, eV/Å per atom) below ``fmax``. A structure
that does not get there within ``max_steps`` is returned with ``converged=False``; callers must not
present it as relaxed.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import ase
import numpy as np

from mlff.errors import StructureError
from mlff.graph import check_structure

OPTIMIZERS = ("fire", "bfgs", "lbfgs")


def optimizer_class(name: str):
    """The ASE optimizer class for ``name`` ("fire", "bfgs" or "lbfgs")."""
    from ase.optimize import BFGS, FIRE, LBFGS

    classes = {"fire": FIRE, "bfgs": BFGS, "lbfgs": LBFGS}
    key = str(name).lower()
    if key not in classes:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {list(OPTIMIZERS)}")
    return classes[key]


def space_group(atoms: ase.Atoms, symprec: float = 0.01) -> str | None:
    """International symbol and number, e.g. ``"Fm-3m (225)"``, of a periodic structure (spglib
    through pymatgen, tolerance ``symprec`` Å); None without a full periodic cell or on failure."""
    if not np.all(atoms.pbc):
        return None
    from pymatgen.io.ase import AseAtomsAdaptor
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # spglib's error-handling notice
            analyzer = SpacegroupAnalyzer(AseAtomsAdaptor.get_structure(atoms), symprec=symprec)
            return f"{analyzer.get_space_group_symbol()} ({analyzer.get_space_group_number()})"
    except Exception:  # spglib gives up on some cells; the space group is then unknown
        return None


@dataclass
class RelaxResult:
    """One relaxed (or not) structure and the figures of the per-structure table."""

    label: str
    n_atoms: int
    initial_energy: float  # eV
    energy: float  # eV
    fmax: float  # eV/Å, the quantity compared with the target
    steps: int
    converged: bool
    cell_relaxed: bool
    initial_volume: float | None = None  # Å³, periodic cells only
    volume: float | None = None
    initial_spacegroup: str | None = None
    spacegroup: str | None = None
    atoms: ase.Atoms | None = field(default=None, repr=False)

    @property
    def volume_change_percent(self) -> float | None:
        if self.initial_volume is None or self.volume is None:
            return None
        return 100.0 * (self.volume - self.initial_volume) / self.initial_volume

    def as_dict(self) -> dict:
        return {
            "label": self.label,
            "n_atoms": self.n_atoms,
            "initial_energy": self.initial_energy,
            "energy": self.energy,
            "fmax": self.fmax,
            "steps": self.steps,
            "converged": self.converged,
            "cell_relaxed": self.cell_relaxed,
            "initial_volume": self.initial_volume,
            "volume": self.volume,
            "volume_change_percent": self.volume_change_percent,
            "initial_spacegroup": self.initial_spacegroup,
            "spacegroup": self.spacegroup,
        }


def _max_force(forces: np.ndarray) -> float:
    if forces.size == 0:
        return 0.0
    return float(np.sqrt((np.asarray(forces) ** 2).sum(axis=1).max()))


def relax(
    atoms: ase.Atoms,
    calculator,
    fmax: float = 0.01,
    optimizer: str = "fire",
    cell: bool = False,
    max_steps: int = 500,
    label: str = "structure",
    symprec: float = 0.01,
) -> RelaxResult:
    """Relax a copy of ``atoms`` with ``calculator`` until the largest force is below ``fmax``.

    ``cell=True`` relaxes the cell too (FrechetCellFilter, which needs the calculator's stress and a
    cell periodic in all three directions). ``label`` names the structure in errors. The returned
    result holds the final atoms (with a single-point calculator carrying their energy and forces).
    """
    if not (math.isfinite(fmax) and fmax > 0):
        raise ValueError(f"fmax must be a positive force in eV/Å, got {fmax!r}")
    if int(max_steps) < 0:
        raise ValueError(f"max_steps must be >= 0, got {max_steps!r}")
    optimizer_cls = optimizer_class(optimizer)
    check_structure(atoms, label)
    periodic = bool(np.all(atoms.pbc))
    if cell and not periodic:
        raise StructureError(
            f"{label}: cell relaxation needs a cell periodic in all three directions "
            f"(pbc={atoms.pbc.tolist()})"
        )
    work = atoms.copy()
    work.calc = calculator
    initial_energy = float(work.get_potential_energy())
    initial_volume = float(work.get_volume()) if periodic else None
    initial_spacegroup = space_group(work, symprec)

    if cell:
        from ase.filters import FrechetCellFilter

        target = FrechetCellFilter(work)
    else:
        target = work
    with warnings.catch_warnings():
        # scipy's logm (inside FrechetCellFilter) warns at round-off level on near-identity cells
        warnings.filterwarnings("ignore", message="logm result may be inaccurate")
        dynamics = optimizer_cls(target, logfile=None)
        converged = bool(dynamics.run(fmax=fmax, steps=int(max_steps)))
        final_fmax = _max_force(target.get_forces())
    energy = float(work.get_potential_energy())
    if not (math.isfinite(energy) and math.isfinite(final_fmax)):
        converged = False
    converged = converged and final_fmax < fmax

    relaxed = work.copy()
    from ase.calculators.singlepoint import SinglePointCalculator

    results = {"energy": energy, "forces": work.get_forces()}
    if periodic:
        results["stress"] = work.get_stress()
    relaxed.calc = SinglePointCalculator(relaxed, **results)
    relaxed.info.update({"relaxed": converged, "fmax": final_fmax})
    return RelaxResult(
        label=label,
        n_atoms=len(work),
        initial_energy=initial_energy,
        energy=energy,
        fmax=final_fmax,
        steps=int(dynamics.nsteps),
        converged=converged,
        cell_relaxed=bool(cell),
        initial_volume=initial_volume,
        volume=float(work.get_volume()) if periodic else None,
        initial_spacegroup=initial_spacegroup,
        spacegroup=space_group(work, symprec),
        atoms=relaxed,
    )

"""Runtime rotational covariance check: is ``F(R x) == R F(x)`` and ``E(R x) == E(x)``?

Rotate the structure (positions and cell) by a random orthogonal matrix R (a proper rotation, or a
rotation times an inversion), evaluate the model again and report

    force_error  = max |F(R x) - R F(x)| / max(max |F(x)|, 0.01 eV/Å)   (relative)
    energy_error = |E(R x) - E(x)| / n_atoms            (eV/atom)

against a tolerance that depends on the dtype the model runs in. The errors are measured by
:func:`mlff.testing.symmetry_errors`; :func:`relative_force_error` and
:func:`relative_stress_error` are the one convention ``mlff check`` shares.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import ase
import numpy as np
import torch

from mlff.testing import Prediction, predict, symmetry_errors

# near a minimum or in a perfect crystal |F| ~ 0 and a ratio would be round-off over round-off;
# below these scales an error is measured against the floor instead
FORCE_SCALE_FLOOR = 0.01  # eV/Å
STRESS_SCALE_FLOOR = 1e-4  # eV/Å³ (16 MPa)

# (relative force error, energy error in eV/atom) allowed per dtype
DEFAULT_TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-8, 1e-9),
    torch.float32: (2e-3, 1e-4),
}


@dataclass
class CovarianceResult:
    """One check: errors, the tolerances they were held to, and whether they passed."""

    force_error: float
    energy_error_per_atom: float
    force_tolerance: float
    energy_tolerance: float
    reflection: bool
    dtype: str

    @property
    def passed(self) -> bool:
        return (
            self.force_error <= self.force_tolerance
            and self.energy_error_per_atom <= self.energy_tolerance
        )

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def describe(self) -> str:
        kind = "rotation+reflection" if self.reflection else "rotation"
        verdict = "ok" if self.passed else "FAILED"
        return (
            f"covariance check ({kind}, {self.dtype}) {verdict}: force error "
            f"{self.force_error:.2e} (tol {self.force_tolerance:.0e}), energy error "
            f"{self.energy_error_per_atom:.2e} eV/atom (tol {self.energy_tolerance:.0e})"
        )


def random_rotation(rng: np.random.Generator, reflection: bool = False) -> np.ndarray:
    """A uniformly random 3x3 rotation matrix (QR of a Gaussian matrix), optionally inverted."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return -q if reflection else q


def default_tolerances(dtype: torch.dtype) -> tuple[float, float]:
    """(relative force tolerance, energy tolerance in eV/atom) for a model running in ``dtype``."""
    return DEFAULT_TOLERANCES.get(dtype, DEFAULT_TOLERANCES[torch.float32])


def _relative(error: float, reference: np.ndarray, floor: float) -> float:
    largest = float(np.abs(reference).max()) if reference.size else 0.0
    return float(error) / max(largest, floor)


def relative_force_error(error: float, forces: np.ndarray) -> float:
    """``error`` (eV/Å, max |ΔF| component) over ``max(max |F|, FORCE_SCALE_FLOOR)``.

    ``forces``: the reference forces (n_atoms, 3) eV/Å.
    """
    return _relative(error, forces, FORCE_SCALE_FLOOR)


def relative_stress_error(error: float, stress: np.ndarray) -> float:
    """``error`` (eV/Å³, max |Δσ| component) over ``max(max |σ|, STRESS_SCALE_FLOOR)``.

    ``stress``: the reference stress (3, 3) eV/Å³.
    """
    return _relative(error, stress, STRESS_SCALE_FLOOR)


def check_covariance(
    model,
    atoms: ase.Atoms,
    rng: np.random.Generator | None = None,
    reflection: bool = False,
    force_tolerance: float | None = None,
    energy_tolerance: float | None = None,
    reference: tuple[float, np.ndarray] | None = None,
    rotation: np.ndarray | None = None,
) -> CovarianceResult:
    """Compare the model at ``atoms`` and at a randomly rotated copy.

    ``reference`` = (energy eV, forces (n, 3) eV/Å) at ``atoms`` when already computed.
    ``rotation`` fixes R instead of drawing it from ``rng``.
    """
    rng = rng if rng is not None else np.random.default_rng()
    default_force, default_energy = default_tolerances(model.dtype)
    force_tolerance = default_force if force_tolerance is None else float(force_tolerance)
    energy_tolerance = default_energy if energy_tolerance is None else float(energy_tolerance)
    if rotation is None:
        rotation = random_rotation(rng, reflection)
    if reference is not None:
        known = Prediction(energy=reference[0], forces=np.asarray(reference[1]), stress=None)
    else:
        known = predict(model, atoms, stress=False)
    # the runtime check holds energy and forces to the tolerances (stress is not compared)
    errors = symmetry_errors(model, atoms, rotation=rotation, reference=known)
    return CovarianceResult(
        force_error=relative_force_error(errors.forces, known.forces),
        energy_error_per_atom=errors.energy,
        force_tolerance=force_tolerance,
        energy_tolerance=energy_tolerance,
        reflection=bool(np.linalg.det(rotation) < 0),
        dtype=str(model.dtype).replace("torch.", ""),
    )

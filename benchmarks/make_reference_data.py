"""Make reference data for the accuracy benchmarks: GFN2-xTB molecules and an EMT alloy.

    pip install tblite rdkit        # the molecules' reference method and starting geometries
    python benchmarks/make_reference_data.py molecules --out data/ [--names paracetamol,...]
        [--trajectories 3] [--frames 700] [--workers 2] [--seed 0]
    python benchmarks/make_reference_data.py alloy --out data/ [--trajectories 8] [--frames 100]

**Molecules** (``molecules``), in the style of ``shared/data/ethanol_gfn2_500K.extxyz``: each
molecule's SMILES gets a starting geometry from RDKit (ETKDG, then MMFF), is relaxed with
GFN2-xTB (tblite's ASE calculator), and runs ``--trajectories`` independent Langevin
trajectories at 500 K (0.5 fs steps, friction 0.01/fs, velocities and noise from their own
seeds), each with 2 ps of equilibration and then a frame every 10 steps. Frames carry
``trajectory`` (0, 1, ...) in their info, so a benchmark can hold out whole trajectories as test
data rather than frames of the run it trained on.

**Alloy** (``alloy``): a Cu–Au fcc solid solution (EMT, ASE's calculator) in 32- and 108-atom
cells at random compositions (10–50 % Au), under a random symmetric strain up to ±3 %, Langevin at
300–1200 K, with energies, forces and stress; a quarter of the trajectories have one vacancy.
Frames carry ``trajectory`` too.

Files are ASE extxyz with the labels as calculator results (``energy``, ``forces``, ``stress``),
in eV, Å, eV/Å and eV/Å³. Record what was made (command, date, machine, time taken) in
docs/measurements.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixCom
from ase.io import write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, ZeroRotation

try:  # ASE >= 3.29
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:  # older ASE
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta
from ase.optimize import BFGS

# drug-like and aromatic molecules of 15-30 atoms (the accuracy issue's examples)
MOLECULES = {
    "paracetamol": "CC(=O)Nc1ccc(O)cc1",  # 20 atoms
    "aspirin": "CC(=O)Oc1ccccc1C(=O)O",  # 21 atoms
    "naphthalene": "c1ccc2ccccc2c1",  # 18 atoms
}
TIMESTEP_FS = 0.5
FRICTION_PER_FS = 0.01
STEPS_PER_FRAME = 10


def labelled(atoms: Atoms, trajectory: int, with_stress: bool = False) -> Atoms:
    """A copy of ``atoms`` with its calculator's energy, forces (and stress) as stored labels."""
    frame = atoms.copy()
    frame.set_constraint()  # the labels are the reference method's, not a constrained MD's
    forces = atoms.get_forces(apply_constraint=False)
    results = {"energy": atoms.get_potential_energy(), "forces": forces}
    if with_stress:
        results["stress"] = atoms.get_stress()
    frame.calc = SinglePointCalculator(frame, **results)
    frame.info["trajectory"] = trajectory
    return frame


def langevin_frames(
    atoms: Atoms,
    rng: np.random.Generator,
    trajectory: int,
    *,
    temperature_k: float,
    timestep_fs: float,
    friction_per_fs: float,
    equilibration_steps: int,
    steps_per_frame: int,
    frames: int,
    molecule: bool,
) -> list[Atoms]:
    """``frames`` labelled frames of Langevin MD of ``atoms`` (its calculator set): momenta
    drawn at ``temperature_k`` with no drift (and, for a ``molecule``, no rotation), the centre
    of mass fixed, ``equilibration_steps`` first, then a frame every ``steps_per_frame`` steps;
    periodic frames (not a ``molecule``) carry the stress too."""
    thermalize_momenta(atoms, temperature_K=temperature_k, rng=rng)
    Stationary(atoms)
    if molecule:
        ZeroRotation(atoms)
    atoms.set_constraint(FixCom())
    dynamics = Langevin(
        atoms,
        timestep_fs * units.fs,
        temperature_K=temperature_k,
        friction=friction_per_fs / units.fs,
        fixcm=False,
        rng=rng,
    )
    dynamics.run(equilibration_steps)
    out = []
    for _ in range(frames):
        dynamics.run(steps_per_frame)
        out.append(labelled(atoms, trajectory, with_stress=not molecule))
    return out


def starting_geometry(smiles: str, seed: int) -> Atoms:
    """3D coordinates of ``smiles`` with hydrogens: RDKit's ETKDG embedding, MMFF-relaxed."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    molecule = Chem.AddHs(Chem.MolFromSmiles(smiles))
    if AllChem.EmbedMolecule(molecule, randomSeed=seed) != 0:
        raise RuntimeError(f"RDKit could not embed {smiles!r}")
    AllChem.MMFFOptimizeMolecule(molecule)
    symbols = [atom.GetSymbol() for atom in molecule.GetAtoms()]
    return Atoms(symbols, positions=molecule.GetConformer().GetPositions())


def molecule_trajectory(
    name: str, trajectory: int, frames: int, seed: int, equilibration_ps: float = 2.0
) -> list[Atoms]:
    """``frames`` GFN2-xTB frames of one 500 K Langevin trajectory of molecule ``name``, after
    ``equilibration_ps`` of equilibration."""
    from tblite.ase import TBLite

    atoms = starting_geometry(MOLECULES[name], seed)
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    BFGS(atoms, logfile=None).run(fmax=0.05, steps=200)
    rng = np.random.default_rng([seed, trajectory])
    return langevin_frames(
        atoms,
        rng,
        trajectory,
        temperature_k=500.0,
        timestep_fs=TIMESTEP_FS,
        friction_per_fs=FRICTION_PER_FS,
        equilibration_steps=round(equilibration_ps * 1000.0 / TIMESTEP_FS),
        steps_per_frame=STEPS_PER_FRAME,
        frames=frames,
        molecule=True,
    )


def alloy_trajectory(trajectory: int, frames: int, seed: int) -> list[Atoms]:
    """``frames`` EMT frames (with stress) of one strained Cu-Au cell under Langevin MD."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    rng = np.random.default_rng([seed, trajectory])
    repeat = (2, 2, 2) if trajectory % 2 == 0 else (3, 3, 3)
    gold = rng.uniform(0.1, 0.5)
    lattice = 3.61 + gold * (4.08 - 3.61)  # Vegard's law between Cu and Au
    atoms = bulk("Cu", "fcc", a=lattice, cubic=True) * repeat
    symbols = np.where(rng.random(len(atoms)) < gold, "Au", "Cu")
    atoms.set_chemical_symbols(symbols.tolist())
    if trajectory % 4 == 3:
        del atoms[int(rng.integers(len(atoms)))]
    strain = rng.uniform(-0.03, 0.03, (3, 3))
    strain = 0.5 * (strain + strain.T)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + strain), scale_atoms=True)
    atoms.calc = EMT()
    return langevin_frames(
        atoms,
        rng,
        trajectory,
        temperature_k=rng.uniform(300.0, 1200.0),
        timestep_fs=2.0,
        friction_per_fs=0.02,
        equilibration_steps=500,
        steps_per_frame=20,
        frames=frames,
        molecule=False,
    )


def _molecule_job(job: tuple) -> tuple[str, int, list[Atoms], float]:
    name, trajectory, frames, seed, equilibration_ps = job
    os.environ["OMP_NUM_THREADS"] = "1"  # one core per trajectory (read when tblite loads)
    started = time.perf_counter()
    return (
        name,
        trajectory,
        molecule_trajectory(name, trajectory, frames, seed, equilibration_ps),
        (time.perf_counter() - started),
    )


def make_molecules(args) -> None:
    names = args.names.split(",")
    unknown = [n for n in names if n not in MOLECULES]
    if unknown:
        sys.exit(
            f"--names: unknown molecule(s) {', '.join(unknown)}; known: {', '.join(MOLECULES)}"
        )
    jobs = [
        (n, k, args.frames, args.seed, args.equilibration_ps)
        for n in names
        for k in range(args.trajectories)
    ]
    results: dict[str, dict[int, list[Atoms]]] = {n: {} for n in names}
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for name, trajectory, frames, seconds in pool.map(_molecule_job, jobs):
            results[name][trajectory] = frames
            print(f"{name} trajectory {trajectory}: {len(frames)} frames in {seconds:.0f} s",
                  flush=True)  # fmt: skip
    for name, trajectories in results.items():
        path = args.out / f"{name}_gfn2_500K.extxyz"
        write(path, [f for k in sorted(trajectories) for f in trajectories[k]], format="extxyz")
        print(f"wrote {path}")


def make_alloy(args) -> None:
    frames = []
    for trajectory in range(args.trajectories):
        frames += alloy_trajectory(trajectory, args.frames, args.seed)
    path = args.out / "cuau_emt.extxyz"
    write(path, frames, format="extxyz")
    print(f"wrote {path} ({len(frames)} frames)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    molecules = commands.add_parser("molecules", help="GFN2-xTB 500 K MD of drug-like molecules")
    molecules.add_argument("--names", default=",".join(MOLECULES))
    molecules.add_argument("--trajectories", type=int, default=3)
    molecules.add_argument("--frames", type=int, default=700, help="frames per trajectory")
    molecules.add_argument("--workers", type=int, default=2, help="trajectories run at once")
    molecules.add_argument("--equilibration-ps", type=float, default=2.0)
    alloy = commands.add_parser("alloy", help="EMT Cu-Au cells with stress")
    alloy.add_argument("--trajectories", type=int, default=8)
    alloy.add_argument("--frames", type=int, default=100, help="frames per trajectory")
    for sub in (molecules, alloy):
        sub.add_argument("--out", type=Path, default=Path("data"))
        sub.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.command == "molecules":
        make_molecules(args)
    else:
        make_alloy(args)


if __name__ == "__main__":
    main()

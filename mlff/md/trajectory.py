"""Trajectory files: extended XYZ and ASE .traj through ASE, DCD/XTC/HDF5 through mdtraj
(with a topology PDB beside them). Writers flush every frame, so a file stays readable
when a run stops or fails.
"""

from __future__ import annotations

import os
from pathlib import Path

import ase
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator

from mlff.errors import MLFFError
from mlff.md.settings import FS_PER_PS

EXTXYZ_SUFFIXES = {".xyz", ".extxyz"}
ASE_TRAJ_SUFFIXES = {".traj"}
MDTRAJ_SUFFIXES = {".dcd", ".xtc", ".h5"}
TRAJECTORY_SUFFIXES = EXTXYZ_SUFFIXES | ASE_TRAJ_SUFFIXES | MDTRAJ_SUFFIXES


def is_periodic(atoms: ase.Atoms) -> bool:
    return bool(np.all(atoms.pbc))


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


def check_output_paths(*paths: str | os.PathLike | None) -> None:
    """Refuse, before any file is opened (and so truncated), an output path that cannot be
    written: a folder, a path under a file, a read-only folder, or two outputs on one path."""
    seen = set()
    for path in paths:
        if path is None:
            continue
        path = Path(path)
        resolved = path.resolve()
        if resolved in seen:
            raise MLFFError(f"{path}: two outputs would be written to the same file")
        seen.add(resolved)
        if path.is_dir():
            raise MLFFError(f"{path}: is a folder, not a file to write")
        parent = next((p for p in resolved.parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise MLFFError(f"{path}: {parent} is a file, not a folder")
        if parent is not None and not os.access(parent, os.W_OK):
            raise MLFFError(f"{path}: folder {parent} is not writable")


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

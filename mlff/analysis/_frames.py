"""Trajectories as arrays: :class:`Frames` from ASE structures or mdtraj files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ase
import numpy as np

FS_PER_PS = 1000.0
NM_TO_A = 10.0


@dataclass(frozen=True)
class Frames:
    """A trajectory as arrays.

    ``symbols`` (n_atoms,) element symbols; ``positions`` (n_frames, n_atoms, 3) Å; ``cells``
    (n_frames, 3, 3) Å, rows are lattice vectors, or None unless every frame is periodic in all
    three directions; ``time_ps`` (n_frames,) ps, or None when the file keeps no time.
    """

    symbols: tuple[str, ...]
    positions: np.ndarray
    cells: np.ndarray | None = None
    time_ps: np.ndarray | None = None

    def __post_init__(self) -> None:
        shape = np.shape(self.positions)
        if len(shape) != 3 or shape[2] != 3 or shape[1] != len(self.symbols):
            raise ValueError(f"positions must be (n_frames, {len(self.symbols)}, 3), got {shape}")
        if shape[0] == 0:
            raise ValueError("no frames")
        if self.cells is not None and np.shape(self.cells) != (shape[0], 3, 3):
            raise ValueError(f"cells must be ({shape[0]}, 3, 3), got {np.shape(self.cells)}")
        if self.time_ps is not None and np.shape(self.time_ps) != (shape[0],):
            raise ValueError(f"time_ps must be ({shape[0]},), got {np.shape(self.time_ps)}")

    @property
    def n_frames(self) -> int:
        return int(self.positions.shape[0])

    @property
    def n_atoms(self) -> int:
        return int(self.positions.shape[1])

    @property
    def periodic(self) -> bool:
        return self.cells is not None

    @property
    def volumes(self) -> np.ndarray | None:
        """(n_frames,) Å^3, or None without cells."""
        return None if self.cells is None else np.abs(np.linalg.det(self.cells))

    @classmethod
    def from_atoms(cls, frames: Sequence[ase.Atoms], where: str = "frames") -> Frames:
        """Frames of ASE structures; ``where`` names them in errors (a file name)."""
        if len(frames) == 0:
            raise ValueError(f"{where}: no frames")
        symbols = tuple(frames[0].get_chemical_symbols())
        for k, atoms in enumerate(frames):
            if tuple(atoms.get_chemical_symbols()) != symbols:
                raise ValueError(f"{where}, frame {k}: other atoms than in frame 0")
        positions = np.stack([atoms.get_positions() for atoms in frames])
        cells = None
        if all(atoms.pbc.all() and atoms.cell.volume > 0 for atoms in frames):
            cells = np.stack([atoms.cell.array for atoms in frames])
        time_ps = None
        if all("time_fs" in atoms.info for atoms in frames):
            time_ps = np.array([float(atoms.info["time_fs"]) / FS_PER_PS for atoms in frames])
        return cls(symbols, positions, cells, time_ps)

    @classmethod
    def from_mdtraj(cls, trajectory, with_time: bool = True) -> Frames:
        """Frames of an ``mdtraj.Trajectory`` (nm -> Å); ``with_time=False`` for DCD (no time)."""
        symbols = tuple(atom.element.symbol for atom in trajectory.topology.atoms)
        volumes = trajectory.unitcell_volumes
        cells = None
        if volumes is not None and np.all(volumes > 0):
            cells = np.asarray(trajectory.unitcell_vectors, dtype=float) * NM_TO_A
        time_ps = np.asarray(trajectory.time, dtype=float) if with_time else None
        return cls(symbols, np.asarray(trajectory.xyz, dtype=float) * NM_TO_A, cells, time_ps)


def read_mdtraj(path: str | os.PathLike, top: str | None = None, stride: int = 1) -> Frames:
    """Every ``stride``-th frame of a DCD/XTC/HDF5 file, read through mdtraj.

    The topology is ``top``, else the PDB that ``mlff md run`` writes beside the file (HDF5
    carries its own). Raises ``ValueError`` naming the file on anything unreadable.
    """
    import mdtraj

    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    topology = top or (None if suffix == ".h5" else path.with_suffix(".pdb"))
    if topology is not None and not Path(topology).is_file():
        raise ValueError(f"{path}: topology {topology} not found")
    kwargs = {"stride": stride} if topology is None else {"top": str(topology), "stride": stride}
    try:
        trajectory = mdtraj.load(str(path), **kwargs)
    except Exception as error:  # mdtraj raises many types on garbage input
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else repr(error)
        raise ValueError(f"{path}: cannot read trajectory ({first})") from None
    if trajectory.n_frames == 0:
        raise ValueError(f"{path}: trajectory has no frames")
    return Frames.from_mdtraj(trajectory, with_time=suffix != ".dcd")

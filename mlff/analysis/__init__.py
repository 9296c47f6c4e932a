"""Trajectory analysis: pair distances, radial distribution functions, RMSD, thermodynamics.

Functions on arrays, no plotting and no CLI (``mlff md analyze`` adds options, files and plots).
Units: positions and distances in Å, cells with the lattice vectors as rows in Å, volumes in Å^3,
time in ps, energies in eV, temperatures in K.

- Periodic frames (all three directions periodic, non-zero volume): pair distances use the
  minimum image, so ``r_max`` may be at most half the narrowest cell width
  (:func:`max_rdf_range`); g(r) is normalised by the ideal-gas pair count at the density n/V.
- Other frames (a molecule, a cluster, a slab): every pair i < j counts at its plain distance and
  there is no volume, hence no g(r): :func:`pair_histogram` gives h(r), pair counts per bin, not
  normalised. :func:`radial_distribution` takes a ``volume`` to normalise them as if the atoms
  filled it.

Example::

    from ase.build import bulk
    from mlff.analysis import radial_distribution

    r, g = radial_distribution([bulk("Cu", "fcc", a=3.61, cubic=True).repeat(3)], 5.0, 100)
"""

from mlff.analysis._frames import Frames, read_mdtraj
from mlff.analysis._rdf import (
    PairHistogram,
    coordination_number,
    first_minimum,
    first_peak,
    histogram_summary,
    max_rdf_range,
    pair_histogram,
    partial_rdfs,
    radial_distribution,
    rdf_peaks,
)
from mlff.analysis._thermo import read_thermo_log, thermo_from_frames, thermo_summary
from mlff.analysis._trajectory import TrajectoryAnalysis, analyse, rmsd, series_summary

__all__ = [
    "Frames",
    "PairHistogram",
    "TrajectoryAnalysis",
    "analyse",
    "coordination_number",
    "first_minimum",
    "first_peak",
    "histogram_summary",
    "max_rdf_range",
    "pair_histogram",
    "partial_rdfs",
    "radial_distribution",
    "rdf_peaks",
    "read_mdtraj",
    "read_thermo_log",
    "rmsd",
    "series_summary",
    "thermo_from_frames",
    "thermo_summary",
]

"""MD settings and the run summary, shared by the ASE engine and the batched engine.

Units: time fs (ps in logs), temperature K, pressure bar, friction 1/ps.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

ENSEMBLES = ("nve", "nvt", "npt")
THERMOSTATS = ("langevin", "nose-hoover", "bussi")
BAROSTATS = ("isotropic", "full")
EXTXYZ_SUFFIXES = {".xyz", ".extxyz"}
ASE_TRAJ_SUFFIXES = {".traj"}
MDTRAJ_SUFFIXES = {".dcd", ".xtc", ".h5"}
TRAJECTORY_SUFFIXES = EXTXYZ_SUFFIXES | ASE_TRAJ_SUFFIXES | MDTRAJ_SUFFIXES

FS_PER_PS = 1000.0
SECONDS_PER_DAY = 86400.0

# no atom moves this far in one time step of a stable simulation: an H atom at 10,000 K moves
# about 0.16 Å per fs, so this allows time steps of several fs and flags only real blow-ups
MAX_STEP_DISPLACEMENT_A = 1.0


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

"""Step functions for many systems at once: velocity Verlet, Langevin, Nosé–Hoover chain, Bussi.

Each integrator is a function ``step(state, force_fn, dt, ...) -> state`` over an :class:`MDState`
(a :class:`~mlff.md.state.SystemBatch`, the forces of its last evaluation and any thermostat
variables). Steps read nothing back to the host: per-system parameters are (n_systems,) tensors,
random numbers come from a ``torch.Generator`` on the batch's device, and the step returns a new
state without touching the old one.

Units are ASE's: positions Å, momenta amu·Å/t, masses amu, energies eV, forces eV/Å, time t in ASE
units (``dt = dt_fs * ase.units.fs``), temperatures K, frictions 1/ps. As in
:class:`~mlff.md.settings.MDSettings`, Nosé–Hoover and Bussi take ``1 / friction`` as their
coupling time.

Every system runs with zero total momentum, so a system of N > 1 atoms has ``3N - 3`` degrees of
freedom (a single atom keeps 3), counted as the ASE engine counts them
(:func:`degrees_of_freedom`).

Symbols used in the docstrings, per atom i of system k:
    r_i   positions (n_atoms, 3)        p_i   momenta (n_atoms, 3)      m_i  masses (n_atoms,)
    F_i   forces (n_atoms, 3)           K_k   kinetic energy (n_systems,)
    N_f   degrees of freedom (n_systems,)  kT  k_B × temperature (n_systems,) eV
    γ     friction (n_systems,) 1/t     τ     coupling time 1/γ (n_systems,) t
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import ase.units
import torch

from mlff.md.forces import ForceResult
from mlff.md.state import SystemBatch, sum_per_system

KB = ase.units.kB  # eV/K
PER_PS = 1.0 / (1000.0 * ase.units.fs)  # 1/ps expressed in 1/(ASE time unit)

# Suzuki–Yoshida fourth-order weights for the chain propagators (as in ase.md.nose_hoover_chain)
SUZUKI_YOSHIDA = (
    1.0 / (2.0 - 2.0 ** (1.0 / 3.0)),
    -(2.0 ** (1.0 / 3.0)) / (2.0 - 2.0 ** (1.0 / 3.0)),
    1.0 / (2.0 - 2.0 ** (1.0 / 3.0)),
)

Parameter = float | torch.Tensor  # a number for every system, or one per system (n_systems,)


class ForceFn(Protocol):
    """``force_fn(batch, compute_stress=False) -> ForceResult``, e.g.
    :class:`~mlff.md.forces.ForceFunction`."""

    def __call__(self, batch: SystemBatch, compute_stress: bool = False) -> ForceResult: ...


@dataclass
class NoseHooverChain:
    """One Nosé–Hoover chain of M links per system (ASE's ``NoseHooverChainThermostat``).

    The first link drives ``2K`` towards ``target``; link j > 0 drives ``p_{j-1}² / Q_{j-1}``
    towards ``kT``.
    """

    positions: torch.Tensor  # (n_systems, M) η, dimensionless
    momenta: torch.Tensor  # (n_systems, M) p_η, eV·t
    masses: torch.Tensor  # (n_systems, M) Q, eV·t²
    kT: torch.Tensor  # (n_systems,) eV, target of links j > 0
    target: torch.Tensor  # (n_systems,) eV, target of 2K (link 0)

    def energy(self) -> torch.Tensor:
        """(n_systems,) eV: the chain's share of the conserved quantity."""
        kinetic = (0.5 * self.momenta**2 / self.masses).sum(-1)
        return (
            kinetic + self.target * self.positions[:, 0] + self.kT * self.positions[:, 1:].sum(-1)
        )


@dataclass
class MDState:
    """A batch with the results of its last force evaluation (and thermostat variables)."""

    batch: SystemBatch
    energy: torch.Tensor  # (n_systems,) eV, potential energy
    forces: torch.Tensor  # (n_atoms, 3) eV/Å
    stress: torch.Tensor | None = None  # (n_systems, 3, 3) eV/Å³; kept up to date when not None
    thermostat: NoseHooverChain | None = None

    def conserved_energy(self) -> torch.Tensor:
        """(n_systems,) eV: potential + kinetic (+ chain) energy, constant under NVE and NHC."""
        total = self.energy + self.batch.kinetic_energy()
        return total if self.thermostat is None else total + self.thermostat.energy()


# --------------------------------------------------------------------------- helpers


def per_system(value: Parameter, batch: SystemBatch) -> torch.Tensor:
    """``value`` as a (n_systems,) float64 tensor on the batch's device."""
    value = torch.as_tensor(value, dtype=torch.float64, device=batch.device)
    return value.expand(batch.n_systems)


def _sum_per_system(values: torch.Tensor, batch: SystemBatch) -> torch.Tensor:
    """(n_systems, ...) sums of per-atom ``values`` (n_atoms, ...)."""
    return sum_per_system(values, batch.system, batch.n_systems)


def degrees_of_freedom(batch: SystemBatch) -> torch.Tensor:
    """(n_systems,) float64: ``3N - 3`` (total momentum held at zero), 3 for a single atom."""
    n = batch.n_atoms_per_system.to(torch.float64)
    return torch.where(n > 1, 3.0 * n - 3.0, 3.0 * n)


def temperature(batch: SystemBatch) -> torch.Tensor:
    """(n_systems,) K: ``2K / (N_f k_B)``."""
    return 2.0 * batch.kinetic_energy() / (degrees_of_freedom(batch) * KB)


def remove_drift(momenta: torch.Tensor, batch: SystemBatch) -> torch.Tensor:
    """(n_atoms, 3) ``momenta`` less each system's total momentum, shared in proportion to the
    masses (systems of one atom are left alone)."""
    total = _sum_per_system(momenta, batch)  # (n_systems, 3)
    mass = _sum_per_system(batch.masses, batch)  # (n_systems,)
    many = (batch.n_atoms_per_system > 1).to(momenta.dtype)
    drift = (total * (many / mass)[:, None])[batch.system]  # (n_atoms, 3) velocity of the centre
    return momenta - batch.masses[:, None] * drift


def initial_momenta(
    batch: SystemBatch, temperature_k: Parameter, generator: torch.Generator
) -> SystemBatch:
    """``batch`` with Maxwell–Boltzmann momenta at ``temperature_k`` (K, per system) and zero total
    momentum per system, drawn as the ASE engine draws them."""
    kT = KB * per_system(temperature_k, batch)[batch.system]  # (n_atoms,)
    noise = torch.randn(
        batch.positions.shape, generator=generator, dtype=torch.float64, device=batch.device
    )
    momenta = noise * torch.sqrt(batch.masses * kT)[:, None]
    return replace(batch, momenta=remove_drift(momenta, batch))


def init_state(batch: SystemBatch, force_fn: ForceFn, compute_stress: bool = False) -> MDState:
    """Evaluate ``force_fn`` on ``batch``; with ``compute_stress`` every step keeps the stress."""
    result = force_fn(batch, compute_stress=compute_stress)
    return MDState(batch, result.energy, result.forces, result.stress if compute_stress else None)


def _evaluate(state: MDState, batch: SystemBatch, force_fn: ForceFn) -> MDState:
    """``state`` moved to ``batch`` with its forces (and stress, when the state keeps one)."""
    keep_stress = state.stress is not None
    result = force_fn(batch, compute_stress=keep_stress)
    return replace(
        state,
        batch=batch,
        energy=result.energy,
        forces=result.forces,
        stress=result.stress if keep_stress else None,
    )


def _kick(momenta: torch.Tensor, forces: torch.Tensor, h: float) -> torch.Tensor:
    """B: p ← p + h F."""
    return momenta + h * forces


def _drift(batch: SystemBatch, momenta: torch.Tensor, h: float) -> SystemBatch:
    """A: r ← r + h p / m."""
    positions = batch.positions + h * momenta / batch.masses[:, None]
    return replace(batch, positions=positions, momenta=momenta)


def _scale_momenta(momenta: torch.Tensor, scale: torch.Tensor, batch: SystemBatch) -> torch.Tensor:
    """p_i ← s_k p_i with ``scale`` s (n_systems,)."""
    return momenta * scale[batch.system][:, None]


# --------------------------------------------------------------------------- NVE


def velocity_verlet_step(state: MDState, force_fn: ForceFn, dt: float) -> MDState:
    """One velocity Verlet step (NVE), as ``ase.md.verlet.VelocityVerlet``.

    p ← p + dt/2 F(r);  r ← r + dt p/m;  p ← p + dt/2 F(r).
    """
    momenta = _kick(state.batch.momenta, state.forces, 0.5 * dt)
    state = _evaluate(state, _drift(state.batch, momenta, dt), force_fn)
    momenta = _kick(state.batch.momenta, state.forces, 0.5 * dt)
    return replace(state, batch=replace(state.batch, momenta=momenta))


# --------------------------------------------------------------------------- Langevin


def langevin_step(
    state: MDState,
    force_fn: ForceFn,
    dt: float,
    temperature_k: Parameter,
    friction_per_ps: Parameter,
    generator: torch.Generator,
) -> MDState:
    """One Langevin BAOAB step (Leimkuhler & Matthews 2013) at zero total momentum.

    B: p ← p + dt/2 F;  A: r ← r + dt/2 p/m;
    O: p ← c₁ p + √((1 - c₁²) m kT) ξ, c₁ = exp(-γ dt), ξ ~ N(0, 1) with its drift removed;
    A: r ← r + dt/2 p/m;  B: p ← p + dt/2 F(r).

    ``temperature_k`` (K) and ``friction_per_ps`` γ (1/ps) are per system; the noise has the
    total momentum of each system removed, so N_f = 3N - 3 degrees of freedom reach kT.
    """
    batch = state.batch
    kT = KB * per_system(temperature_k, batch)
    c1 = torch.exp(-per_system(friction_per_ps, batch) * PER_PS * dt)  # (n_systems,)
    momenta = _kick(batch.momenta, state.forces, 0.5 * dt)
    batch = _drift(batch, momenta, 0.5 * dt)
    xi = torch.randn(momenta.shape, generator=generator, dtype=momenta.dtype, device=batch.device)
    width = torch.sqrt((1.0 - c1**2) * kT)[batch.system] * torch.sqrt(batch.masses)
    momenta = _scale_momenta(momenta, c1, batch) + remove_drift(width[:, None] * xi, batch)
    state = _evaluate(state, _drift(batch, momenta, 0.5 * dt), force_fn)
    momenta = _kick(state.batch.momenta, state.forces, 0.5 * dt)
    return replace(state, batch=replace(state.batch, momenta=momenta))


# --------------------------------------------------------------------------- Nosé–Hoover chain


def nose_hoover_chain_init(
    state: MDState,
    temperature_k: Parameter,
    friction_per_ps: Parameter,
    chain_length: int = 3,
    dof: Parameter | None = None,
) -> MDState:
    """``state`` with a resting Nosé–Hoover chain per system (ASE's ``NoseHooverChainThermostat``).

    Q₀ = N_f kT τ², Q_j = kT τ² (j > 0), τ = 1/γ; link 0 drives 2K towards N_f kT and link j > 0
    drives p_{j-1}²/Q_{j-1} towards kT. ``dof`` N_f defaults to :func:`degrees_of_freedom`
    (3N - 3). ASE's ``NoseHooverChainNVT(temperature_K=T, tdamp=τ)`` is ``dof=3N`` at T; the ASE
    engine's set-up (``temperature_K = T (3N - 3)/3N``) is ``dof=3N`` at that scaled T, which has
    the right ⟨K⟩ but puts links j > 0 at the scaled temperature, so Var(K) comes out too small by
    about (3N - 3)/3N; the default keeps every link at T.
    """
    if chain_length < 1:
        raise ValueError(f"chain_length must be >= 1, got {chain_length!r}")
    batch = state.batch
    kT = KB * per_system(temperature_k, batch)
    dof = degrees_of_freedom(batch) if dof is None else per_system(dof, batch)
    tau = 1.0 / (per_system(friction_per_ps, batch) * PER_PS)
    masses = (kT * tau**2)[:, None].repeat(1, chain_length)
    masses[:, 0] = dof * kT * tau**2
    zeros = torch.zeros_like(masses)
    chain = NoseHooverChain(zeros, zeros.clone(), masses, kT, dof * kT)
    return replace(state, thermostat=chain)


def _chain_half_step(
    chain: NoseHooverChain, twice_kinetic: torch.Tensor, delta: float
) -> tuple[NoseHooverChain, torch.Tensor]:
    """Propagate the chain by ``delta`` (Suzuki–Yoshida, order 4) against a thermostatted variable
    with ``twice_kinetic`` 2K (n_systems,). Returns the new chain and the factor s (n_systems,)
    that scales the variable's momenta (2K scales by s²). Each link j is advanced as
    p_j ← (p_j e_j + h/2 G_j) e_j with e_j = exp(-h/4 p_{j+1}/Q_{j+1}) (e_{M-1} = 1) and G_j its
    force (2K - N_f kT for j = 0, p_{j-1}²/Q_{j-1} - kT otherwise)."""
    momenta, masses = list(chain.momenta.unbind(1)), list(chain.masses.unbind(1))
    n_links = len(momenta)
    positions = chain.positions
    scale = torch.ones_like(twice_kinetic)

    def advance(j: int, h: float) -> None:
        if j == 0:
            force = twice_kinetic * scale**2 - chain.target
        else:
            force = momenta[j - 1] ** 2 / masses[j - 1] - chain.kT
        if j == n_links - 1:
            momenta[j] = momenta[j] + (h / 2) * force
        else:
            damping = torch.exp((-h / 4) * momenta[j + 1] / masses[j + 1])
            momenta[j] = (momenta[j] * damping + (h / 2) * force) * damping

    for weight in SUZUKI_YOSHIDA:
        h = weight * delta
        for j in reversed(range(n_links)):
            advance(j, h)
        positions = positions + h * torch.stack(momenta, 1) / chain.masses
        scale = scale * torch.exp(-h * momenta[0] / masses[0])
        for j in range(n_links):
            advance(j, h)
    return replace(chain, positions=positions, momenta=torch.stack(momenta, 1)), scale


def nose_hoover_chain_step(state: MDState, force_fn: ForceFn, dt: float) -> MDState:
    """One Nosé–Hoover chain step, as ``ase.md.nose_hoover_chain.NoseHooverChainNVT.step``.

    C: chain and p by dt/2;  B: p ← p + dt/2 F;  A: r ← r + dt p/m;  B: p ← p + dt/2 F(r);
    C: chain and p by dt/2. Set the chain up with :func:`nose_hoover_chain_init`.
    """
    if state.thermostat is None:
        raise ValueError("nose_hoover_chain_step needs a state from nose_hoover_chain_init")
    batch = state.batch
    chain, scale = _chain_half_step(state.thermostat, 2.0 * batch.kinetic_energy(), 0.5 * dt)
    momenta = _kick(_scale_momenta(batch.momenta, scale, batch), state.forces, 0.5 * dt)
    state = _evaluate(replace(state, thermostat=chain), _drift(batch, momenta, dt), force_fn)
    batch = state.batch
    momenta = _kick(batch.momenta, state.forces, 0.5 * dt)
    batch = replace(batch, momenta=momenta)
    chain, scale = _chain_half_step(chain, 2.0 * batch.kinetic_energy(), 0.5 * dt)
    batch = replace(batch, momenta=_scale_momenta(momenta, scale, batch))
    return replace(state, batch=batch, thermostat=chain)


# --------------------------------------------------------------------------- Bussi


def _chi_squared(dof: torch.Tensor, batch: SystemBatch, generator: torch.Generator) -> torch.Tensor:
    """(n_systems,) χ² draws with ``dof`` (n_systems, integer-valued, <= 3N) degrees of freedom:
    sums of squares of the first ``dof`` of 3N normal draws per system (no host sync)."""
    shape = batch.positions.shape
    xi = torch.randn(shape, generator=generator, dtype=torch.float64, device=batch.device)
    first = batch.offsets()[:-1][batch.system]  # (n_atoms,)
    atom = torch.arange(batch.n_atoms, device=batch.device) - first
    component = 3 * atom[:, None] + torch.arange(3, device=batch.device)  # (n_atoms, 3)
    used = component.to(torch.float64) < dof[batch.system][:, None]
    return _sum_per_system((xi**2 * used).sum(-1), batch)


def bussi_step(
    state: MDState,
    force_fn: ForceFn,
    dt: float,
    temperature_k: Parameter,
    friction_per_ps: Parameter,
    generator: torch.Generator,
) -> MDState:
    """One Bussi stochastic velocity rescaling step (Bussi, Donadio & Parrinello 2007), ordered as
    ``ase.md.bussi.Bussi``: rescale p by α over dt, then a velocity Verlet step.

    α² = c + (1 - c) K̄/(N_f K) (R₁² + Σ_{i=2}^{N_f} R_i²) + 2 R₁ √(c (1 - c) K̄/(N_f K)),
    c = exp(-dt/τ), K̄ = N_f kT / 2, R_i ~ N(0, 1). Systems with K = 0 are not rescaled.
    """
    batch = state.batch
    dof = degrees_of_freedom(batch)
    target = 0.5 * dof * KB * per_system(temperature_k, batch)  # K̄
    c = torch.exp(-per_system(friction_per_ps, batch) * PER_PS * dt)
    kinetic = batch.kinetic_energy()
    moving = kinetic > 0
    ratio = (1.0 - c) * target / (torch.where(moving, kinetic, torch.ones_like(kinetic)) * dof)
    r1 = torch.randn(batch.n_systems, generator=generator, dtype=torch.float64, device=batch.device)
    rest = _chi_squared(dof - 1.0, batch, generator)
    alpha2 = c + ratio * (rest + r1**2) + 2.0 * r1 * torch.sqrt(c * ratio)
    alpha = torch.where(moving, torch.sqrt(alpha2), torch.ones_like(alpha2))
    batch = replace(batch, momenta=_scale_momenta(batch.momenta, alpha, batch))
    return velocity_verlet_step(replace(state, batch=batch), force_fn, dt)

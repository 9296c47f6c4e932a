"""Isothermal–isobaric step functions: Martyna–Tobias–Klein (MTK) barostats with Nosé–Hoover
chains, isotropic as ``ase.md.nose_hoover_chain.IsotropicMTKNPT`` and full-cell as
``ase.md.nose_hoover_chain.MTKNPT``.

Units and conventions as in :mod:`mlff.md.integrators`; pressures in eV/Å³ (bar × ase.units.bar).
Extra symbols, per system: ε log volume strain (cell = cell₀ e^ε), p_ε its momentum (eV·t),
W its mass (eV·t²), P the instantaneous pressure including the ideal-gas term (eV/Å³), P_ext the
external pressure, V the volume (Å³), N the number of atoms; for the full cell, h the cell
(rows are lattice vectors, Å) and p_g its (3, 3) momentum (eV·t).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from mlff.md.cell_filter import expm
from mlff.md.integrators import (
    KB,
    ForceFn,
    MDState,
    NoseHooverChain,
    Parameter,
    _chain_half_step,
    _evaluate,
    _scale_momenta,
    _sum_per_system,
    init_state,
    nose_hoover_chain_init,
    per_system,
)
from mlff.md.state import SystemBatch


@dataclass
class IsotropicBarostat:
    """Per-system volume variable, its momentum and its own Nosé–Hoover chain."""

    strain: torch.Tensor  # (n_systems,) ε, cell = reference_cell · e^ε
    momentum: torch.Tensor  # (n_systems,) p_ε, eV·t
    mass: torch.Tensor  # (n_systems,) W = (3N + 3) kT τ_P², eV·t²
    pressure: torch.Tensor  # (n_systems,) P_ext, eV/Å³
    reference_cell: torch.Tensor  # (n_systems, 3, 3) cell₀, Å
    chain: NoseHooverChain  # thermostat of p_ε: Q₀ = 9 kT τ_P², Q_j = kT τ_P², targets kT


@dataclass
class FullCellBarostat:
    """Per-system cell momentum and its own Nosé–Hoover chain (ASE's ``MTKBarostat``)."""

    momentum: torch.Tensor  # (n_systems, 3, 3) p_g, eV·t (symmetric)
    mass: torch.Tensor  # (n_systems,) W = (N + 1) kT τ_P², eV·t²
    pressure: torch.Tensor  # (n_systems,) P_ext, eV/Å³
    chain: NoseHooverChain  # thermostat of p_g: Q₀ = 9 kT τ_P², Q_j = kT τ_P², targets 9 kT, kT


@dataclass
class NPTState(MDState):
    """An :class:`MDState` (with stress and particle chain) and its barostat."""

    barostat: IsotropicBarostat | FullCellBarostat | None = None


def is_npt(state: MDState) -> bool:
    """Whether ``state`` carries a barostat."""
    return getattr(state, "barostat", None) is not None


def _exprel(x: torch.Tensor) -> torch.Tensor:
    """(e^x - 1)/x, 1 at x = 0."""
    safe = torch.where(x == 0, torch.ones_like(x), x)
    return torch.where(x == 0, torch.ones_like(x), torch.expm1(safe) / safe)


def _start(batch, force_fn, temperature_k, friction_per_ps, barostat_time, chain_length, dof):
    """What both barostats start from: the state with stress and the particles' chain, and per
    system kT (eV), τ_P (ASE time) and N (float64)."""
    state = nose_hoover_chain_init(
        init_state(batch, force_fn, compute_stress=True),
        temperature_k,
        friction_per_ps,
        chain_length,
        dof,
    )
    kT = KB * per_system(temperature_k, batch)
    tau = per_system(barostat_time, batch)
    return state, kT, tau, batch.n_atoms_per_system.to(torch.float64)


def isotropic_mtk_init(
    batch: SystemBatch,
    force_fn: ForceFn,
    temperature_k: Parameter,
    pressure: Parameter,
    friction_per_ps: Parameter,
    barostat_time: Parameter,
    chain_length: int = 3,
    dof: Parameter | None = None,
) -> NPTState:
    """An NPT state at rest on its barostat: ``pressure`` P_ext (eV/Å³), thermostat coupling time
    1/``friction_per_ps`` and ``barostat_time`` τ_P (ASE time), all per system. ``dof`` as in
    :func:`~mlff.md.integrators.nose_hoover_chain_init`; ASE's ``IsotropicMTKNPT`` is
    ``dof=3N``."""
    state, kT, tau, n = _start(
        batch, force_fn, temperature_k, friction_per_ps, barostat_time, chain_length, dof
    )
    barostat = IsotropicBarostat(
        strain=torch.zeros_like(kT),
        momentum=torch.zeros_like(kT),
        mass=(3.0 * n + 3.0) * kT * tau**2,
        pressure=per_system(pressure, batch),
        reference_cell=batch.cell.clone(),
        chain=_barostat_chain(kT, tau, chain_length, kT),
    )
    return _with_barostat(state, barostat)


def _barostat_chain(
    kT: torch.Tensor, tau: torch.Tensor, chain_length: int, target: torch.Tensor
) -> NoseHooverChain:
    """A resting chain on the cell momentum: Q₀ = 9 kT τ², Q_j = kT τ² (j > 0), link 0 driving
    the cell's 2K towards ``target`` (n_systems,) eV."""
    masses = (kT * tau**2)[:, None].repeat(1, chain_length)
    masses[:, 0] = 9.0 * kT * tau**2
    zeros = torch.zeros_like(masses)
    return NoseHooverChain(zeros, zeros.clone(), masses, kT, target)


def _with_barostat(state: MDState, barostat: IsotropicBarostat | FullCellBarostat) -> NPTState:
    fields = {name: getattr(state, name) for name in MDState.__dataclass_fields__}
    return NPTState(**fields, barostat=barostat)


def _cell_kick(state: NPTState, momentum: torch.Tensor, h: float) -> torch.Tensor:
    """p_ε ← p_ε + h G, G = 3V (P - P_ext) + Σ p²/m / N, P = -tr(σ)/3 + 2K/(3V)."""
    batch, barostat = state.batch, state.barostat
    volume = batch.volumes()
    twice_kinetic = 2.0 * batch.kinetic_energy()
    pressure = -torch.diagonal(state.stress, dim1=1, dim2=2).sum(-1) / 3.0
    pressure = pressure + twice_kinetic / (3.0 * volume)
    n = batch.n_atoms_per_system.to(torch.float64)
    force = 3.0 * volume * (pressure - barostat.pressure) + twice_kinetic / n
    return momentum + h * force


def _particle_kick(state: NPTState, h: float) -> torch.Tensor:
    """p ← p e^{-x} + h F exprel(-x), x = (1 + 1/N) h p_ε / W."""
    batch, barostat = state.batch, state.barostat
    n = batch.n_atoms_per_system.to(torch.float64)
    x = ((1.0 + 1.0 / n) * h * barostat.momentum / barostat.mass)[batch.system][:, None]
    return batch.momenta * torch.exp(-x) + h * state.forces * _exprel(-x)


def isotropic_mtk_step(state: NPTState, force_fn: ForceFn, dt: float) -> NPTState:
    """One step of ``IsotropicMTKNPT.step`` (MTK 1994 factorisation):

    C_P, C_T by dt/2;  p_ε kick dt/2;  p kick dt/2;  r ← r e^x + dt p/m exprel(x), x = dt p_ε/W;
    ε ← ε + dt p_ε/W, cell ← cell₀ e^ε;  forces and stress;  p kick dt/2;  p_ε kick dt/2;
    C_T, C_P by dt/2 — C_T the particles' chain, C_P the chain on p_ε (one evaluation per step).
    """
    if not isinstance(state.barostat, IsotropicBarostat) or state.thermostat is None:
        raise ValueError("isotropic_mtk_step needs a state from isotropic_mtk_init")
    half = 0.5 * dt
    barostat = state.barostat
    chain, scale = _chain_half_step(barostat.chain, barostat.momentum**2 / barostat.mass, half)
    barostat = replace(barostat, momentum=barostat.momentum * scale, chain=chain)
    thermostat, scale = _chain_half_step(state.thermostat, 2 * state.batch.kinetic_energy(), half)
    batch = replace(state.batch, momenta=_scale_momenta(state.batch.momenta, scale, state.batch))
    state = replace(state, batch=batch, thermostat=thermostat, barostat=barostat)
    barostat = replace(barostat, momentum=_cell_kick(state, barostat.momentum, half))
    state = replace(state, barostat=barostat)
    momenta = _particle_kick(state, half)
    x = (dt * barostat.momentum / barostat.mass)[batch.system][:, None]
    positions = batch.positions * torch.exp(x) + dt * momenta / batch.masses[:, None] * _exprel(x)
    strain = barostat.strain + dt * barostat.momentum / barostat.mass
    cell = barostat.reference_cell * torch.exp(strain)[:, None, None]
    barostat = replace(barostat, strain=strain)
    batch = replace(batch, positions=positions, momenta=momenta, cell=cell)
    state = _evaluate(replace(state, barostat=barostat), batch, force_fn)
    batch = replace(state.batch, momenta=_particle_kick(state, half))
    state = replace(state, batch=batch)
    barostat = replace(barostat, momentum=_cell_kick(state, barostat.momentum, half))
    thermostat, scale = _chain_half_step(state.thermostat, 2 * batch.kinetic_energy(), half)
    batch = replace(batch, momenta=_scale_momenta(batch.momenta, scale, batch))
    chain, scale = _chain_half_step(barostat.chain, barostat.momentum**2 / barostat.mass, half)
    barostat = replace(barostat, momentum=barostat.momentum * scale, chain=chain)
    return replace(state, batch=batch, thermostat=thermostat, barostat=barostat)


def conserved_energy(state: NPTState) -> torch.Tensor:
    """(n_systems,) eV: potential + kinetic + chains + p_ε²/2W (Σ p_g²/2W for the full cell)
    + P_ext V."""
    barostat = state.barostat
    cell_kinetic = (barostat.momentum**2).reshape(state.batch.n_systems, -1).sum(-1)
    return (
        state.conserved_energy()
        + barostat.chain.energy()
        + 0.5 * cell_kinetic / barostat.mass
        + barostat.pressure * state.batch.volumes()
    )


# --------------------------------------------------------------------------- full cell


def full_mtk_init(
    batch: SystemBatch,
    force_fn: ForceFn,
    temperature_k: Parameter,
    pressure: Parameter,
    friction_per_ps: Parameter,
    barostat_time: Parameter,
    chain_length: int = 3,
    dof: Parameter | None = None,
) -> NPTState:
    """A full-cell NPT state at rest on its barostat (ASE's ``MTKNPT``): ``pressure`` P_ext
    (eV/Å³), thermostat coupling time 1/``friction_per_ps`` and ``barostat_time`` τ_P (ASE time),
    all per system. W = (N + 1) kT τ_P²; the cell's chain has Q₀ = 9 kT τ_P², Q_j = kT τ_P² and
    drives Σ p_g²/W towards 9 kT. ``dof`` as in
    :func:`~mlff.md.integrators.nose_hoover_chain_init`; ASE's ``MTKNPT`` is ``dof=3N``."""
    state, kT, tau, n = _start(
        batch, force_fn, temperature_k, friction_per_ps, barostat_time, chain_length, dof
    )
    barostat = FullCellBarostat(
        momentum=batch.cell.new_zeros((batch.n_systems, 3, 3)),
        mass=(n + 1.0) * kT * tau**2,
        pressure=per_system(pressure, batch),
        chain=_barostat_chain(kT, tau, chain_length, 9.0 * kT),
    )
    return _with_barostat(state, barostat)


def _exp_and_phi(a: torch.Tensor, h: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(e^a, h φ(a)) for ``a`` (n, 3, 3), φ(a) = (e^a - I)/a = Σ_k a^k/(k + 1)!, the blocks of
    exp([[a, h I], [0, 0]]): one 6×6 exponential per system, no host sync."""
    block = a.new_zeros((a.shape[0], 6, 6))
    block[:, :3, :3] = a
    block[:, :3, 3:] = h * torch.eye(3, dtype=a.dtype, device=a.device)
    result = expm(block)
    return result[:, :3, :3], result[:, :3, 3:]


def _rows_times(vectors: torch.Tensor, matrices: torch.Tensor, system: torch.Tensor):
    """(n_atoms, 3): each atom's row vector times its system's (3, 3) matrix."""
    return torch.einsum("ni,nij->nj", vectors, matrices[system])


def _full_cell_kick(state: NPTState, momentum: torch.Tensor, h: float) -> torch.Tensor:
    """p_g ← p_g + h G, G = -V (σ + P_ext I) + Σ p⊗p/m + (Σ p²/m / 3N) I (σ the stress, ASE's
    sign, without the ideal-gas term)."""
    batch, barostat = state.batch, state.barostat
    outer = batch.momenta[:, :, None] * batch.momenta[:, None, :] / batch.masses[:, None, None]
    ideal = _sum_per_system(outer, batch)  # (n_systems, 3, 3) Σ p⊗p/m
    twice_kinetic = torch.diagonal(ideal, dim1=1, dim2=2).sum(-1)
    n = batch.n_atoms_per_system.to(torch.float64)
    eye = torch.eye(3, dtype=ideal.dtype, device=ideal.device)
    external = barostat.pressure[:, None, None] * eye
    force = -batch.volumes()[:, None, None] * (state.stress + external) + ideal
    return momentum + h * (force + (twice_kinetic / (3.0 * n))[:, None, None] * eye)


def _full_particle_kick(state: NPTState, h: float) -> torch.Tensor:
    """p ← p e^{-hκ} + h F φ(-hκ), κ = (p_g + tr(p_g)/(3N) I) / W."""
    batch, barostat = state.batch, state.barostat
    n = batch.n_atoms_per_system.to(torch.float64)
    trace = torch.diagonal(barostat.momentum, dim1=1, dim2=2).sum(-1) / (3.0 * n)
    eye = torch.eye(3, dtype=trace.dtype, device=trace.device)
    kappa = (barostat.momentum + trace[:, None, None] * eye) / barostat.mass[:, None, None]
    decay, phi = _exp_and_phi(-h * kappa, h)
    return _rows_times(batch.momenta, decay, batch.system) + _rows_times(
        state.forces, phi, batch.system
    )


def _full_cell_chain(barostat: FullCellBarostat, h: float) -> FullCellBarostat:
    """The cell's chain and p_g by ``h``."""
    twice_kinetic = (barostat.momentum**2).sum((1, 2)) / barostat.mass
    chain, scale = _chain_half_step(barostat.chain, twice_kinetic, h)
    return replace(barostat, momentum=barostat.momentum * scale[:, None, None], chain=chain)


def full_mtk_step(state: NPTState, force_fn: ForceFn, dt: float) -> NPTState:
    """One step of ``MTKNPT.step`` (MTK 1994 factorisation, full cell):

    C_P, C_T by dt/2;  p_g kick dt/2;  p kick dt/2;  r ← r e^X + dt p/m φ(X), X = dt p_g/W;
    h ← h e^X;  forces and stress;  p kick dt/2;  p_g kick dt/2;  C_T, C_P by dt/2 — C_T the
    particles' chain, C_P the chain on p_g. The matrix functions of the symmetric p_g come from
    :func:`mlff.md.cell_filter.expm` (ASE diagonalises p_g; the results agree to round-off).
    """
    if not isinstance(state.barostat, FullCellBarostat) or state.thermostat is None:
        raise ValueError("full_mtk_step needs a state from full_mtk_init")
    half = 0.5 * dt
    barostat = _full_cell_chain(state.barostat, half)
    thermostat, scale = _chain_half_step(state.thermostat, 2 * state.batch.kinetic_energy(), half)
    batch = replace(state.batch, momenta=_scale_momenta(state.batch.momenta, scale, state.batch))
    state = replace(state, batch=batch, thermostat=thermostat, barostat=barostat)
    barostat = replace(barostat, momentum=_full_cell_kick(state, barostat.momentum, half))
    state = replace(state, barostat=barostat)
    momenta = _full_particle_kick(state, half)
    growth, phi = _exp_and_phi(dt * barostat.momentum / barostat.mass[:, None, None], dt)
    positions = _rows_times(batch.positions, growth, batch.system) + _rows_times(
        momenta / batch.masses[:, None], phi, batch.system
    )
    cell = torch.bmm(batch.cell, growth)
    batch = replace(batch, positions=positions, momenta=momenta, cell=cell)
    state = _evaluate(state, batch, force_fn)
    batch = replace(state.batch, momenta=_full_particle_kick(state, half))
    state = replace(state, batch=batch)
    barostat = replace(barostat, momentum=_full_cell_kick(state, barostat.momentum, half))
    thermostat, scale = _chain_half_step(state.thermostat, 2 * batch.kinetic_energy(), half)
    batch = replace(batch, momenta=_scale_momenta(batch.momenta, scale, batch))
    barostat = _full_cell_chain(barostat, half)
    return replace(state, batch=batch, thermostat=thermostat, barostat=barostat)

"""The exponential (Fréchet) cell parametrisation of ASE's ``FrechetCellFilter``, for a batch.

Each system k keeps its reference cell ``C0_k`` (its cell when it entered the filter) and the log of
its deformation gradient, ``L_k = log F_k``, so that

    cell_k = C0_k F_kᵀ,          r_i = F_k s_i        (F_k = exp L_k)

with ``s_i`` the atom positions in the undeformed frame. The optimiser's degrees of freedom are
``s_i`` (Å) and ``c_k L_k`` (dimensionless × c_k), ``c_k`` the ``exp_cell_factor`` (by default the
number of atoms in system k). Their generalised forces are

    f_s,i = f_i F_k                                  (eV/Å)
    f_L,k = D exp_{L_kᵀ}[W_k F_k⁻ᵀ] / c_k            (eV, per unit of c_k L_k)

with ``W_k = -V_k (σ_k + p_k I)`` the virial (eV; σ the stress in ASE's sign, eV/Å³; p the scalar
pressure, eV/Å³). ``D exp_A[E]`` is the Fréchet derivative of the matrix exponential at A in
direction E; ASE sums ``D exp_L[e_μν] · G`` over the nine unit directions, which equals the adjoint
form above, computed here from one 6×6 block exponential per system. Convergence is tested on the
same rows as ASE: the N atom rows ``f_s,i`` and the 3 rows of ``f_L,k``.

Not covered (ASE options): ``mask``, ``hydrostatic_strain``, ``constant_volume``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from mlff.md.state import SystemBatch


@dataclass
class CellFilterState:
    """Per-system cell variables of the filter."""

    reference_cell: torch.Tensor  # (n_systems, 3, 3) Å, C0 (rows are lattice vectors)
    log_deformation: torch.Tensor  # (n_systems, 3, 3) dimensionless, L = log F
    deformation: torch.Tensor  # (n_systems, 3, 3) dimensionless, F = exp L
    reference_positions: torch.Tensor  # (n_atoms, 3) Å, s = F⁻¹ r
    exp_cell_factor: torch.Tensor  # (n_systems,) c, float64
    scalar_pressure: torch.Tensor  # (n_systems,) eV/Å³, float64

    PER_ATOM = ("reference_positions",)

    def select(self, keep: torch.Tensor, atoms: torch.Tensor) -> CellFilterState:
        """The systems where ``keep`` (n_systems,) bool is True; ``atoms``: their atoms."""
        return _map_fields(self, lambda name, x: x[atoms if name in self.PER_ATOM else keep])

    @staticmethod
    def where(
        keep_new: torch.Tensor, new: CellFilterState, old: CellFilterState, system: torch.Tensor
    ) -> CellFilterState:
        """``new`` for systems where ``keep_new`` (n_systems,) bool is True, else ``old``."""

        def pick(name, x):
            mask = keep_new[system] if name in new.PER_ATOM else keep_new
            return torch.where(mask.view(-1, *([1] * (x.dim() - 1))), x, getattr(old, name))

        return _map_fields(new, pick)

    @staticmethod
    def cat(first: CellFilterState, second: CellFilterState) -> CellFilterState:
        """The systems of ``first`` followed by those of ``second``."""
        return _map_fields(first, lambda name, x: torch.cat([x, getattr(second, name)]))


def _map_fields(state: CellFilterState, fn) -> CellFilterState:
    names = (
        "reference_cell",
        "log_deformation",
        "deformation",
        "reference_positions",
        "exp_cell_factor",
        "scalar_pressure",
    )
    return replace(state, **{name: fn(name, getattr(state, name)) for name in names})


def cell_filter_init(
    batch: SystemBatch,
    exp_cell_factor: float | torch.Tensor | None = None,
    scalar_pressure: float | torch.Tensor = 0.0,
) -> CellFilterState:
    """The filter at zero deformation (F = I) around ``batch``'s current cells.

    Args:
        batch: systems periodic in all three directions.
        exp_cell_factor: c, a number or (n_systems,); None is each system's number of atoms
            (ASE's default).
        scalar_pressure: p in eV/Å³, a number or (n_systems,) (ASE's default 0).
    """
    n, device = batch.n_systems, batch.device
    if exp_cell_factor is None:
        exp_cell_factor = batch.n_atoms_per_system
    factor = torch.as_tensor(exp_cell_factor, dtype=torch.float64, device=device).expand(n)
    pressure = torch.as_tensor(scalar_pressure, dtype=torch.float64, device=device).expand(n)
    eye = torch.eye(3, dtype=torch.float64, device=device).expand(n, 3, 3)
    return CellFilterState(
        reference_cell=batch.cell.clone(),
        log_deformation=torch.zeros_like(batch.cell),
        deformation=eye.clone(),
        reference_positions=batch.positions.clone(),
        exp_cell_factor=factor.clone(),
        scalar_pressure=pressure.clone(),
    )


EXPM_THETA = 0.25  # the Taylor series is summed for matrices of 1-norm at most this
EXPM_ORDER = 13  # terms of the series: remainder < 0.25**14 / 14! ~ 4e-20
EXPM_MAX_SQUARINGS = 10  # scaling and squaring covers 1-norms up to 0.25 * 2**10 = 256


def expm(a: torch.Tensor) -> torch.Tensor:
    """(n, m, m) matrix exponentials of ``a`` (n, m, m) by scaling and squaring a Taylor series.

    Unlike ``torch.linalg.matrix_exp``, which on CUDA reads each matrix's scaling to the host and
    squares matrix by matrix (and picks its method by batch size), every matrix takes the same
    operations here, with masked squarings: no host sync, and a system's result does not depend
    on the rest of the batch.
    """
    norm = a.abs().sum(-2).amax(-1)  # (n,) 1-norm
    squarings = torch.ceil(torch.log2(norm / EXPM_THETA)).clamp(0, EXPM_MAX_SQUARINGS)
    scaled = a / torch.exp2(squarings).view(-1, 1, 1)
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device).expand_as(a)
    result = eye
    for k in range(EXPM_ORDER, 0, -1):  # Horner: I + A/1 (I + A/2 (I + ...))
        result = eye + torch.bmm(scaled, result) / k
    for step in range(EXPM_MAX_SQUARINGS):
        squared = torch.bmm(result, result)
        result = torch.where((step < squarings).view(-1, 1, 1), squared, result)
    return result


def expm_frechet_adjoint(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """(n, 3, 3): ``M[μ, ν] = Σ_ij (D exp_a[e_μν])_ij g_ij``, i.e. ``D exp_{aᵀ}[g]``.

    ``a``, ``g``: (n, 3, 3). The Fréchet derivative, linear in ``g``, is the upper-right block of
    ``exp([[aᵀ, ĝ], [0, aᵀ]])`` times ``|g|`` with ``ĝ = g / |g|`` (Higham, Functions of
    Matrices, eq. 10.43; normalising keeps the block's norm, and its squarings, those of ``a``).
    """
    n = a.shape[0]
    scale = torch.linalg.matrix_norm(g).clamp_min(torch.finfo(g.dtype).tiny).view(-1, 1, 1)
    block = a.new_zeros((n, 6, 6))
    a_t = a.transpose(1, 2)
    block[:, :3, :3] = a_t
    block[:, 3:, 3:] = a_t
    block[:, :3, 3:] = g / scale
    return expm(block)[:, :3, 3:] * scale


def generalised_forces(
    cell_filter: CellFilterState, batch: SystemBatch, forces: torch.Tensor, stress: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The forces on the filter's degrees of freedom.

    Args:
        cell_filter: the filter of ``batch``.
        batch: its systems, at r = F s and cell = C0 Fᵀ.
        forces: (n_atoms, 3) eV/Å, Cartesian.
        stress: (n_systems, 3, 3) eV/Å³, ASE's sign.

    Returns:
        ``(atom_forces, cell_forces)``: (n_atoms, 3) ``f F`` in eV/Å and (n_systems, 3, 3)
        ``D exp_{Lᵀ}[W F⁻ᵀ] / c``, rows comparable with atom forces (as ASE's three extra rows).
    """
    deformation = cell_filter.deformation
    atom_forces = torch.einsum("ni,nij->nj", forces, deformation[batch.system])
    volume = batch.volumes()
    eye = torch.eye(3, dtype=stress.dtype, device=stress.device)
    virial = -volume.view(-1, 1, 1) * (stress + cell_filter.scalar_pressure.view(-1, 1, 1) * eye)
    # W F⁻ᵀ = (F⁻¹ Wᵀ)ᵀ
    gradient = torch.linalg.solve_ex(deformation, virial.transpose(1, 2)).result.transpose(1, 2)
    cell_forces = expm_frechet_adjoint(cell_filter.log_deformation, gradient)
    return atom_forces, cell_forces / cell_filter.exp_cell_factor.view(-1, 1, 1)


def apply_step(
    cell_filter: CellFilterState,
    batch: SystemBatch,
    atom_step: torch.Tensor,
    cell_step: torch.Tensor,
) -> tuple[CellFilterState, SystemBatch]:
    """Move the filter's coordinates: ``s += atom_step`` (n_atoms, 3) Å and
    ``c L += cell_step`` (n_systems, 3, 3); returns the new filter and the batch at
    ``r = F s``, ``cell = C0 Fᵀ`` (F = exp L)."""
    reference_positions = cell_filter.reference_positions + atom_step
    log_deformation = cell_filter.log_deformation + cell_step / cell_filter.exp_cell_factor.view(
        -1, 1, 1
    )
    deformation = expm(log_deformation)
    cell = torch.bmm(cell_filter.reference_cell, deformation.transpose(1, 2))
    positions = torch.einsum("nj,nij->ni", reference_positions, deformation[batch.system])
    new_filter = replace(
        cell_filter,
        reference_positions=reference_positions,
        log_deformation=log_deformation,
        deformation=deformation,
    )
    return new_filter, replace(batch, positions=positions, cell=cell)

"""Where energy becomes forces and stress: one autograd pass through positions and a strain.

Positions and cell are deformed by a symmetric strain ``eps`` (zero-valued, differentiable):
``x' = x (1 + eps)``, ``cell' = cell (1 + eps)``. Then

    forces = -dE/dx            (n_atoms, 3) eV/Å
    stress = (1/V) dE/d(eps)   (n_graphs, 3, 3) eV/Å³, ASE's sign (positive = tensile)

both from a single ``torch.autograd.grad`` call. ``create_graph=True`` keeps the graph for
training on forces; evaluation leaves it off.
"""

from __future__ import annotations

import contextlib

import torch

from mlff.compiled import CompiledForces, compiled_forces
from mlff.graph import AtomicGraph
from mlff.potentials.fused import reference_path
from mlff.potentials.layers import gather
from mlff.runtime import SINGLE_THREAD_EDGES_EAGER, single_thread_below


def edge_vectors(positions: torch.Tensor, cell: torch.Tensor, graph: AtomicGraph) -> torch.Tensor:
    """(n_edges, 3) Å: ``x_j - x_i + S @ cell`` for each edge of ``graph``."""
    if graph.n_graphs == 1:
        centre, neighbour = graph.edge_index[0], graph.edge_index[1]
        images = graph.edge_shifts @ cell[0]
        return gather(positions, neighbour) - gather(positions, centre) + images
    return pair_vectors(positions, cell, graph.batch, graph.edge_index, graph.edge_shifts)


def pair_vectors(
    positions: torch.Tensor,
    cell: torch.Tensor,
    system: torch.Tensor,
    edge_index: torch.Tensor,
    shifts: torch.Tensor,
) -> torch.Tensor:
    """(n_pairs, 3) Å: ``x_j - x_i + S @ cell`` of each pair, ``cell`` (n_systems, 3, 3) and
    ``system`` (n_atoms,) the system of each atom."""
    centre, neighbour = edge_index[0], edge_index[1]
    images = torch.einsum("ek,ekl->el", shifts, gather(cell, gather(system, centre)))
    return gather(positions, neighbour) - gather(positions, centre) + images


def strained(
    positions: torch.Tensor, cell: torch.Tensor, strain: torch.Tensor, system: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x (1 + eps)`` (n_atoms, 3) and ``cell (1 + eps)`` (n_systems, 3, 3), ``eps`` the
    symmetric part of ``strain`` (n_systems, 3, 3)."""
    symmetric = 0.5 * (strain + strain.transpose(1, 2))
    positions = positions + torch.einsum("ni,nij->nj", positions, gather(symmetric, system))
    return positions, cell + torch.bmm(cell, symmetric)


def evaluate(
    model,
    graph: AtomicGraph,
    compute_forces: bool = True,
    compute_stress: bool = False,
    create_graph: bool = False,
) -> dict[str, torch.Tensor]:
    """Run ``model`` (a :class:`~mlff.model.ForceField`) on ``graph``.

    Returns ``energy`` (n_graphs,) eV float64, ``energies`` (n_atoms,) eV float64, and when asked
    ``forces`` (n_atoms, 3) eV/Å and ``stress`` (n_graphs, 3, 3) eV/Å³ in the model's dtype
    (stress is zero for structures without a periodic cell volume).
    """
    dtype = model.dtype
    species = model.species_index(graph.numbers).to(model.device)  # checked on the host
    graph = graph.to(model.device, dtype)
    compiled = compiled_forces(model)
    if (
        compiled is not None
        and compute_forces
        and not create_graph
        and compiled.applies(graph.n_atoms, graph.n_edges, graph.edge_index)
    ):
        return _evaluate_compiled(compiled, species, graph, compute_stress)
    with single_thread_below(graph.n_edges, SINGLE_THREAD_EDGES_EAGER, graph.positions.device):
        return _evaluate_eager(model, species, graph, compute_forces, compute_stress, create_graph)


def _evaluate_eager(
    model,
    species: torch.Tensor,
    graph: AtomicGraph,
    compute_forces: bool,
    compute_stress: bool,
    create_graph: bool,
) -> dict[str, torch.Tensor]:
    """:func:`evaluate` by one autograd pass (training's ``create_graph`` included)."""
    dtype = model.dtype
    positions = graph.positions
    cell = graph.cell
    inputs: list[torch.Tensor] = []
    if compute_forces:
        positions = positions.detach().requires_grad_(True)
        inputs.append(positions)
    if compute_stress:
        strain = torch.zeros_like(cell, requires_grad=True)
        inputs.append(strain)
        positions, cell = strained(positions, cell, strain, graph.batch)
    vectors = edge_vectors(positions, cell, graph)
    # the fused kernels give first derivatives only
    with reference_path() if create_graph else contextlib.nullcontext():
        energies = model.atomic_energies(species, graph.edge_index, vectors)
    energy = torch.zeros(graph.n_graphs, dtype=torch.float64, device=energies.device)
    energy = energy.index_add(0, graph.batch, energies)
    results = {"energy": energy, "energies": energies}
    if not inputs:
        return results
    gradients = torch.autograd.grad(
        energy.sum(), inputs, create_graph=create_graph, allow_unused=True
    )
    gradients = [
        torch.zeros_like(x) if g is None else g for g, x in zip(gradients, inputs, strict=True)
    ]
    if compute_forces:
        results["forces"] = -gradients[0]
    if compute_stress:
        results["stress"] = stress_from_strain(gradients[-1], graph.volumes().to(dtype))
    return results


def _evaluate_compiled(
    compiled: CompiledForces, species: torch.Tensor, graph: AtomicGraph, compute_stress: bool
) -> dict[str, torch.Tensor]:
    """:func:`evaluate` through the model's compiled graph (inference only)."""
    return compiled_evaluation(compiled, species, graph, compute_stress)


def compiled_evaluation(
    function, species: torch.Tensor, graph: AtomicGraph, compute_stress: bool
) -> dict[str, torch.Tensor]:
    """:func:`evaluate`'s results from a compiled force ``function`` (the signature of
    :class:`~mlff.compiled.CompiledForces`; compiled inference and compiled training steps)."""
    energies, forces, strain_derivative = function(
        species,
        graph.edge_index,
        graph.edge_shifts,
        graph.batch,
        graph.positions,
        graph.cell,
        compute_stress,
    )
    energy = torch.zeros(graph.n_graphs, dtype=torch.float64, device=energies.device)
    results = {"energy": energy.index_add(0, graph.batch, energies), "energies": energies}
    results["forces"] = forces
    if compute_stress:
        results["stress"] = stress_from_strain(strain_derivative, graph.volumes().to(forces.dtype))
    return results


def stress_from_strain(strain_derivative: torch.Tensor, volume: torch.Tensor) -> torch.Tensor:
    """(n_graphs, 3, 3) eV/Å³: dE/d(strain) / V, zero where a structure has no cell volume."""
    safe_volume = torch.where(volume > 0, volume, torch.ones_like(volume))
    stress = strain_derivative / safe_volume.view(-1, 1, 1)
    return torch.where(volume.view(-1, 1, 1) > 0, stress, torch.zeros_like(stress))


def pair_forces(
    model,
    species: torch.Tensor,
    edge_index: torch.Tensor,
    edge_vectors: torch.Tensor,
    counted: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Energies and their gradients with respect to the edge vectors (no positions, no cell).

    For engines that hand over pair vectors instead of positions (LAMMPS's ML-IAP). Only the
    atoms where ``counted`` (n_atoms,) bool is True add to the energy; the others (ghost atoms)
    only pass messages. ``edge_vectors`` (n_edges, 3) Å, ``x_j - x_i`` of ``edge_index``
    (2, n_edges) as in :class:`~mlff.graph.AtomicGraph`; ``species`` (n_atoms,) model indices.

    Returns ``energies`` (n_atoms,) eV float64 (zero where not counted), ``energy`` () eV, and
    ``pair_gradients`` (n_edges, 3) eV/Å, ``dE/d(edge vector)``: the force on ``i`` from the
    edge is ``+g``, on ``j`` it is ``-g``, and the virial is ``-sum_e r_e ⊗ g_e``.
    """
    vectors = edge_vectors.detach().to(model.dtype).requires_grad_(True)
    with single_thread_below(vectors.shape[0], SINGLE_THREAD_EDGES_EAGER, vectors.device):
        energies = model.atomic_energies(species, edge_index, vectors)
        energies = torch.where(counted, energies, torch.zeros_like(energies))
        energy = energies.sum()
        gradient = None
        if energy.requires_grad:  # not without edges (and frozen weights)
            (gradient,) = torch.autograd.grad(energy, [vectors], allow_unused=True)
    if gradient is None:  # no edge reaches a counted atom
        gradient = torch.zeros_like(vectors)
    return {"energy": energy.detach(), "energies": energies.detach(), "pair_gradients": gradient}

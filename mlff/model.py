"""The force field: encoder + potential + per-element reference energies -> total energy (eV).

``ForceField`` maps species and edge vectors to per-atom energies
``E_i = scale * potential_i + shift + E0[species_i]`` in float64 and sums them per structure.
Forces and stress are taken from it by :mod:`mlff.forces`.
"""

from __future__ import annotations

from typing import Any

import torch
from ase.data import atomic_numbers, chemical_symbols
from torch import nn

from mlff.errors import UnknownElementError

MAX_ATOMIC_NUMBER = 118


class ForceField(nn.Module):
    """Energy model over an :class:`~mlff.graph.AtomicGraph`.

    Args:
        encoder: invariant features from species and geometry (``mlff.potentials.interface``).
        potential: per-atom energies from those features and the edge vectors.
        elements: chemical symbols the model knows, in the order of its species index.
        cutoff: neighbour cutoff in Å.
        config: the builder arguments that rebuild this model (plain JSON values).
        reference_energies: (n_elements,) eV, added per atom (isolated-atom or fitted E0).
        energy_scale, energy_shift: per-atom energy = scale * potential + shift (eV).
    """

    def __init__(
        self,
        encoder: nn.Module,
        potential: nn.Module,
        elements: list[str],
        cutoff: float,
        config: dict[str, Any],
        reference_energies: list[float] | None = None,
        energy_scale: float = 1.0,
        energy_shift: float = 0.0,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.potential = potential
        self.elements = list(elements)
        self.cutoff = float(cutoff)
        self.config = dict(config)
        z_to_index = torch.full((MAX_ATOMIC_NUMBER + 1,), -1, dtype=torch.long)
        for index, symbol in enumerate(self.elements):
            z_to_index[atomic_numbers[symbol]] = index
        # on the host: species are looked up and checked before tensors go to the GPU
        self._z_to_index_host = z_to_index
        self.register_buffer("z_to_index", z_to_index.clone(), persistent=False)
        if reference_energies is None:
            reference_energies = [0.0] * len(self.elements)
        if len(reference_energies) != len(self.elements):
            raise ValueError(
                f"reference_energies has {len(reference_energies)} values "
                f"for {len(self.elements)} elements {self.elements}"
            )
        self.register_buffer(
            "reference_energies", torch.tensor(reference_energies, dtype=torch.float64)
        )
        self.register_buffer("energy_scale", torch.tensor(float(energy_scale), dtype=torch.float64))
        self.register_buffer("energy_shift", torch.tensor(float(energy_shift), dtype=torch.float64))

    # buffers that must stay float64 whatever dtype the network runs in
    _FLOAT64_BUFFERS = ("reference_energies", "energy_scale", "energy_shift")

    def _apply(self, fn, recurse=True):
        """Follow ``.to(device)`` but keep the energy bookkeeping buffers in float64 exactly."""
        saved = {name: self._buffers[name] for name in self._FLOAT64_BUFFERS}
        super()._apply(fn, recurse)
        for name, original in saved.items():
            self._buffers[name] = original.to(device=self._buffers[name].device)
        return self

    @property
    def dtype(self) -> torch.dtype:
        return next(self.potential.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return self.z_to_index.device

    def species_index(self, numbers: torch.Tensor) -> torch.Tensor:
        """Map atomic numbers (n_atoms,) to the model's species indices; unknown -> error."""
        if numbers.numel() and (numbers.min() < 1 or numbers.max() > MAX_ATOMIC_NUMBER):
            raise UnknownElementError(f"atomic numbers out of range: {numbers.unique().tolist()}")
        table = self._z_to_index_host if numbers.device.type == "cpu" else self.z_to_index
        species = table[numbers]
        if numbers.numel() and bool((species < 0).any()):
            unknown = sorted({chemical_symbols[int(z)] for z in numbers[species < 0].tolist()})
            raise UnknownElementError(
                f"element(s) {', '.join(unknown)} not known to this model, "
                f"which was built for {', '.join(self.elements)}"
            )
        return species

    def atomic_energies(
        self,
        species: torch.Tensor,
        edge_index: torch.Tensor,
        edge_vectors: torch.Tensor,
        layout=None,
    ) -> torch.Tensor:
        """Per-atom energies (n_atoms,) in eV, float64.

        ``species`` (n_atoms,) model species indices; ``edge_vectors`` (n_edges, 3) Å in the
        network's dtype; ``edge_index`` (2, n_edges) as in :class:`~mlff.graph.AtomicGraph`.
        ``layout``: the potential's edge layout made outside a traced graph (its
        ``traced_layout``, edges sorted accordingly), or None.
        """
        edge_lengths = torch.linalg.vector_norm(edge_vectors, dim=-1)
        node_features, edge_features = self.encoder(species, edge_index, edge_vectors, edge_lengths)
        edges = (node_features, edge_features, edge_index, edge_vectors, edge_lengths)
        raw = self.potential(*edges) if layout is None else self.potential(*edges, layout)
        return (
            raw.to(torch.float64) * self.energy_scale
            + self.energy_shift
            + self.reference_energies[species]
        )

    def forward(self, graph, compute_forces: bool = True, compute_stress: bool = False):
        """Energies, and forces/stress when asked; see :func:`mlff.forces.evaluate`."""
        from mlff.forces import evaluate

        return evaluate(self, graph, compute_forces=compute_forces, compute_stress=compute_stress)

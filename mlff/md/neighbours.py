"""Verlet neighbour lists with a skin for a :class:`~mlff.md.state.SystemBatch`, kept on the device.

A list holds every pair within ``cutoff + skin`` (Å) as of its last build, in the convention of
:func:`mlff.md.forces.exact_pairs`: a full list (both directions), edge vector
``x_j - x_i + S @ cell[system]``, integer-valued float64 shifts ``S``, self-pairs ``i == j`` only
for periodic images (``S != 0``). The model masks the candidates to ``r < cutoff``, so results
equal those of the exact list as long as no pair came in from beyond ``cutoff + skin``.

**When a system is rebuilt.** Let ``x0``, ``C0`` be positions and cell at the system's last build
and ``P0`` the map from Cartesian to fractional coordinates along the periodic cell vectors
(a pseudo-inverse, so slabs and molecules need no completed cell). For a pair built with shift
``S``, the vector changes by ``u_j - u_i + r0 @ P0 @ dC`` where ``dC = C - C0`` (periodic rows) and
``u_i = x_i - x0_i - (x0_i @ P0) @ dC`` is the atom's motion beyond the affine motion of the cell.
A pair beyond ``cutoff + skin`` at the build therefore stays beyond ``cutoff`` while

    displacement = max_i |u_i| + (cutoff + skin) / 2 * ||P0 @ dC||_F  <=  skin / 2.

This bound is exact for fixed cells (it is the largest raw displacement) and conservative under
any cell change, whether the integrator scales positions with the cell or not. Positions are
compared raw (they need not be wrapped). Only the systems above the threshold are rebuilt; their
new pairs replace theirs and the list stays sorted by centre atom (so grouped by system), so many
replicas rebuild cheaply.

**No host sync between rebuilds.** With ``lazy_flag`` (the default on CUDA) each call computes
the per-system flag on the device, copies it without blocking into a pinned host buffer and
records an event; the next call waits on that event (the copy, not the queue behind it) and
rebuilds the flagged systems. The decision is one call late, so the lazy threshold is lowered to
``skin / 2 - margin * skin``: this is safe while atoms move less than ``margin * skin`` per call.
``max_displacement`` (per system, on the device) is the displacement against the list in use; a
runner stops a system whose value exceeds ``skin / 2`` (an atom outran the skin). Without
``lazy_flag`` (the default on CPU, where reading a flag costs nothing) the threshold is exactly
``skin / 2`` and the decision uses the current positions.

Backends: ``"vesin"`` calls :func:`mlff.neighbours.neighbour_list` on the host per system (the
fastest on a CPU); ``"torch"`` is a batched pure-torch cell list on any device: atoms are binned
along the periodic axes into slices at least ``cutoff + skin`` thick, and each atom meets the
atoms of the bins within reach, as many images as a cell thinner than the radius needs (linear
in the atoms of periodic systems; a molecule is one bin, so O(n^2) over its atoms, in chunks).
``"auto"`` picks vesin on CPU and torch elsewhere.
"""

from __future__ import annotations

import numpy as np
import torch

from mlff.md.state import SystemBatch

BACKENDS = ("auto", "vesin", "torch")
PAIR_CHUNK = 1 << 20  # candidate pairs per chunk of the torch search (~150 MB in float64)


def fractional_map(cell: torch.Tensor, pbc: torch.Tensor) -> torch.Tensor:
    """(n_systems, 3, 3) ``P`` with ``x @ P`` the coordinates along the periodic cell vectors.

    ``cell`` (n_systems, 3, 3) Å, rows lattice vectors; ``pbc`` (n_systems, 3) bool. Coordinates
    along non-periodic axes are 0; a system without periodic axes has ``P = 0``.
    """
    return torch.linalg.pinv(cell * pbc[:, :, None])


def _vesin_pairs(
    positions: torch.Tensor,
    cell: torch.Tensor,
    pbc: torch.Tensor,
    counts: np.ndarray,
    radius: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairs within ``radius`` of each system, on the host (see :func:`torch_pairs`)."""
    from mlff.neighbours import neighbour_list

    x = positions.detach().cpu().numpy()
    cells, pbcs = cell.detach().cpu().numpy(), pbc.cpu().numpy()
    starts = np.concatenate([[0], np.cumsum(counts)])
    centres, neighbours, shifts = [], [], []
    for k in range(len(counts)):
        i, j, s = neighbour_list(x[starts[k] : starts[k + 1]], cells[k], pbcs[k], radius)
        centres.append(i + starts[k])
        neighbours.append(j + starts[k])
        shifts.append(s.astype(np.float64))
    device = positions.device
    return (
        torch.from_numpy(np.concatenate(centres)).to(device),
        torch.from_numpy(np.concatenate(neighbours)).to(device),
        torch.from_numpy(np.concatenate(shifts).reshape(-1, 3)).to(device),
    )


def _bins(cell: torch.Tensor, pbc: torch.Tensor, counts: np.ndarray, radius: float):
    """Per system: bins per axis (n_systems, 3) and bin offsets searched per axis (n_systems, 3).

    Bins are slices of the periodic cell at least ``radius`` thick (one bin along non-periodic
    axes, and no more bins than atoms); a pair within ``radius`` lies ``ceil(radius * n / w)``
    bins apart at most, ``w`` the distance between the cell's planes (Å).
    """
    widths = 1.0 / fractional_map(cell, pbc).norm(dim=1).clamp_min(1e-300).cpu().numpy()
    periodic = pbc.cpu().numpy()
    n_bins = np.where(periodic, np.maximum(np.floor(widths / radius), 1), 1).astype(np.int64)
    for k in range(len(counts)):
        while n_bins[k].prod() > max(int(counts[k]), 1):
            n_bins[k, np.argmax(n_bins[k])] //= 2
    reach = np.where(periodic, np.ceil(radius * n_bins / widths), 0).astype(np.int64)
    return n_bins, reach


def torch_pairs(
    positions: torch.Tensor,
    cell: torch.Tensor,
    pbc: torch.Tensor,
    counts: np.ndarray,
    radius: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All pairs within ``radius`` (Å) of each system by a batched cell list, on any device.

    ``positions`` (n_atoms, 3) Å of systems stored one after another, ``counts`` (n_systems,)
    their atom numbers (host), ``cell`` (n_systems, 3, 3), ``pbc`` (n_systems, 3). Atoms are
    wrapped into the cell and binned along the periodic axes (a molecule is one bin: all its
    pairs are tried); each atom meets the atoms of the bins within reach, each bin offset being
    one periodic image. Returns centres and neighbours (n_pairs,) long (indices into
    ``positions``) and shifts (n_pairs, 3) float64.
    """
    device, dtype = positions.device, positions.dtype
    n_systems = len(counts)
    counts_t = torch.as_tensor(counts, dtype=torch.long, device=device)
    system = torch.repeat_interleave(torch.arange(n_systems, device=device), counts_t)
    frac = torch.einsum("na,nab->nb", positions, fractional_map(cell, pbc)[system])
    wraps = torch.floor(frac) * pbc[system]  # integer cells the atoms sit in
    frac = frac - wraps
    n_bins, reach = _bins(cell, pbc, counts, radius)
    # offsets of searched bins per system, zero-padded to the largest table
    tables = [
        np.stack(np.meshgrid(*[np.arange(-m, m + 1) for m in r], indexing="ij"), -1).reshape(-1, 3)
        for r in reach
    ]
    n_offsets = max(len(t) for t in tables)
    table = np.zeros((n_systems, n_offsets, 3), dtype=np.int64)
    for k, t in enumerate(tables):
        table[k, : len(t)] = t
    sizes = torch.as_tensor([len(t) for t in tables], device=device)
    table_t = torch.as_tensor(table, device=device)
    bins_t = torch.as_tensor(n_bins, device=device)
    first_bin = torch.as_tensor(
        np.concatenate([[0], np.cumsum(n_bins.prod(1))[:-1]]), dtype=torch.long, device=device
    )

    def key(b: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return first_bin[k] + (b[..., 0] * bins_t[k, 1] + b[..., 1]) * bins_t[k, 2] + b[..., 2]

    own = torch.minimum((frac * bins_t[system]).floor().long(), bins_t[system] - 1).clamp_min(0)
    own_key = key(own, system)
    order = torch.argsort(own_key, stable=True)
    population = torch.bincount(own_key, minlength=int(n_bins.prod(1).sum()))
    bin_start = torch.cumsum(population, 0) - population
    # (n_atoms, n_offsets): the bin each atom searches under each offset, and its image shift
    k2 = system[:, None]
    virtual = own[:, None, :] + table_t[system]
    searched = key(torch.remainder(virtual, bins_t[k2]), k2)
    image = torch.div(virtual, bins_t[k2], rounding_mode="floor").to(dtype)
    valid = torch.arange(n_offsets, device=device) < sizes[k2]
    per_entry = (population[searched] * valid).reshape(-1)
    bounds = np.concatenate([[0], np.cumsum(per_entry.cpu().numpy())])
    empty = torch.zeros(0, dtype=torch.long, device=device)
    centres, neighbours, shifts = [empty], [empty], [torch.zeros(0, 3, dtype=dtype, device=device)]
    first = 0
    while first < len(per_entry):
        last = int(np.searchsorted(bounds, bounds[first] + PAIR_CHUNK, side="right")) - 1
        last = max(last, first + 1)
        entries = torch.arange(first, last, device=device)
        repeats = per_entry[first:last]
        entry = torch.repeat_interleave(entries, repeats)
        begin = torch.as_tensor(bounds[first:last] - bounds[first], device=device)
        local = torch.arange(int(bounds[last] - bounds[first]), device=device)
        local = local - torch.repeat_interleave(begin, repeats)
        i = torch.div(entry, n_offsets, rounding_mode="floor")
        j = order[bin_start[searched.reshape(-1)[entry]] + local]
        shift = image.reshape(-1, 3)[entry] + wraps[i] - wraps[j]
        k = system[i]
        vector = positions[j] - positions[i] + torch.einsum("ea,eab->eb", shift, cell[k])
        keep = (vector.square().sum(-1) < radius**2) & ((i != j) | (shift != 0).any(-1))
        centres.append(i[keep])
        neighbours.append(j[keep])
        shifts.append(shift[keep])
        first = last
    return torch.cat(centres), torch.cat(neighbours), torch.cat(shifts).to(torch.float64)


class VerletList:
    """Candidate pairs within ``cutoff + skin`` of a batch, rebuilt per system when needed.

    Args:
        cutoff: the model's cutoff (Å).
        skin: extra radius (Å) the list is built with; a system is rebuilt once an atom moved
            more than ``skin / 2`` since its last build (see the module docstring).
        backend: ``"auto"``, ``"vesin"`` (host) or ``"torch"`` (any device).
        lazy_flag: act on the previous call's device flag instead of reading the current one;
            None chooses True on CUDA (no host sync per step) and False elsewhere.
        margin: fraction of the skin the lazy threshold is lowered by: atoms must move less than
            ``margin * skin`` per call for the one-call-late decision to be exact.

    ``update(state)`` returns ``(edge_index (2, n_pairs) long, edge_shifts (n_pairs, 3) float64)``
    on the state's device, so ``ForceFunction(model, pairs=verlet.update)`` uses it. Call
    :meth:`reset` when the batch's systems change without changing its atom or system numbers.

    Attributes:
        n_builds: calls that rebuilt at least one system.
        builds_per_system: (n_systems,) long on the host, builds of each system.
        max_displacement: (n_systems,) Å, float64 on the device, the displacement bound of each
            system against the list returned by the last call; above ``skin / 2`` pairs may be
            missing.
    """

    def __init__(
        self,
        cutoff: float,
        skin: float = 1.0,
        backend: str = "auto",
        lazy_flag: bool | None = None,
        margin: float = 0.1,
    ) -> None:
        if not cutoff > 0:
            raise ValueError(f"cutoff must be positive, got {cutoff!r}")
        if not skin >= 0:
            raise ValueError(f"skin must be non-negative, got {skin!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if not 0 <= margin < 0.5:
            raise ValueError(f"margin must be in [0, 0.5), got {margin!r}")
        self.cutoff = float(cutoff)
        self.skin = float(skin)
        self.backend = backend
        self.lazy_flag = lazy_flag
        self.margin = float(margin)
        self.n_builds = 0
        self.builds_per_system = torch.zeros(0, dtype=torch.long)
        self.max_displacement: torch.Tensor | None = None
        self._key: tuple | None = None

    @property
    def radius(self) -> float:
        """``cutoff + skin`` (Å), the radius the list is built with."""
        return self.cutoff + self.skin

    def reset(self) -> None:
        """Forget the lists: the next call rebuilds every system."""
        self._key = None

    def update(self, state: SystemBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Rebuild the systems that need it, then return the candidate pairs (see the class)."""
        lazy = self.lazy_flag if self.lazy_flag is not None else state.device.type == "cuda"
        key = (state.n_atoms, state.n_systems, state.device)
        displacement = None
        if key != self._key:
            self._build(state, None)
        else:
            if lazy:
                if self._event is not None:
                    self._event.synchronize()  # the previous call's flag copy, not the queue
                rebuild = self._host_flag_view.copy()
            else:
                displacement = self._displacement(state)
                rebuild = (displacement > 0.5 * self.skin).cpu().numpy()
            if rebuild.any():
                self._build(state, rebuild)
                displacement = None
        if displacement is None:
            displacement = self._displacement(state)
        self.max_displacement = displacement
        if lazy:
            threshold = (0.5 - self.margin) * self.skin
            self._host_flag.copy_(displacement > threshold, non_blocking=True)
            if self._event is not None:
                self._event.record()
        return self._edge_index, self._edge_shifts

    def _displacement(self, state: SystemBatch) -> torch.Tensor:
        """(n_systems,) Å: the bound of the module docstring against each system's last build."""
        system = state.system
        change = (state.cell - self._ref_cell) * state.pbc[:, :, None]
        affine = torch.einsum("na,nab->nb", self._ref_frac, change[system])
        moved = torch.linalg.vector_norm(
            state.positions.detach() - self._ref_positions - affine, dim=-1
        )
        largest = torch.zeros(state.n_systems, dtype=moved.dtype, device=moved.device)
        largest = largest.scatter_reduce(0, system, moved, "amax", include_self=True)
        strain = torch.linalg.matrix_norm(torch.bmm(self._ref_map, change))  # Frobenius
        return largest + 0.5 * self.radius * strain

    def _build(self, state: SystemBatch, rebuild: np.ndarray | None) -> None:
        """Rebuild the systems flagged in ``rebuild`` (n_systems,) bool; None rebuilds all."""
        device = state.device
        if rebuild is None:
            self._allocate(state)
            rebuild = np.ones(state.n_systems, dtype=bool)
        systems = np.flatnonzero(rebuild)
        counts = self._counts[systems]
        atoms = np.concatenate([np.arange(self._starts[k], self._starts[k + 1]) for k in systems])
        atoms_t = torch.as_tensor(atoms, dtype=torch.long, device=device)
        systems_t = torch.as_tensor(systems, dtype=torch.long, device=device)
        positions = state.positions.detach()[atoms_t]
        cell, pbc = state.cell.detach()[systems_t], state.pbc[systems_t]
        backend = self.backend
        if backend == "auto":
            backend = "vesin" if device.type == "cpu" else "torch"
        search = _vesin_pairs if backend == "vesin" else torch_pairs
        centres, neighbours, shifts = search(positions, cell, pbc, counts, self.radius)
        local_system = torch.repeat_interleave(
            torch.arange(len(systems), device=device), torch.as_tensor(counts, device=device)
        )
        # sorted by centre atom (so by system): the model's neighbour blocks need no sort per
        # step, as masking to the cutoff keeps the order
        by_centre = torch.argsort(centres, stable=True)
        centres, neighbours, shifts = centres[by_centre], neighbours[by_centre], shifts[by_centre]
        edge_index = torch.stack([atoms_t[centres], atoms_t[neighbours]])
        edge_system = systems_t[local_system[centres]]
        if len(systems) < state.n_systems:
            keep = ~torch.as_tensor(rebuild, device=device)[self._edge_system]
            edge_index = torch.cat([self._edge_index[:, keep], edge_index], 1)
            shifts = torch.cat([self._edge_shifts[keep], shifts])
            edge_system = torch.cat([self._edge_system[keep], edge_system])
            edge_system, order = torch.sort(edge_system, stable=True)
            edge_index, shifts = edge_index[:, order], shifts[order]
        self._edge_index, self._edge_shifts, self._edge_system = edge_index, shifts, edge_system
        reference = fractional_map(cell, pbc)
        self._ref_positions[atoms_t] = positions
        self._ref_cell[systems_t] = cell
        self._ref_map[systems_t] = reference
        self._ref_frac[atoms_t] = torch.einsum("na,nab->nb", positions, reference[local_system])
        self.n_builds += 1
        self.builds_per_system += torch.from_numpy(rebuild.astype(np.int64))

    def _allocate(self, state: SystemBatch) -> None:
        """Reference buffers, counters and the host flag for a new batch."""
        lazy = self.lazy_flag if self.lazy_flag is not None else state.device.type == "cuda"
        n_systems, device = state.n_systems, state.device
        self._key = (state.n_atoms, n_systems, device)
        self._counts = state.n_atoms_per_system.cpu().numpy()
        self._starts = np.concatenate([[0], np.cumsum(self._counts)])
        self._ref_positions = torch.zeros_like(state.positions, dtype=torch.float64)
        self._ref_frac = torch.zeros_like(self._ref_positions)
        self._ref_cell = torch.zeros(n_systems, 3, 3, dtype=torch.float64, device=device)
        self._ref_map = torch.zeros_like(self._ref_cell)
        self.builds_per_system = torch.zeros(n_systems, dtype=torch.long)
        on_cuda = device.type == "cuda"
        self._host_flag = torch.zeros(n_systems, dtype=torch.bool, pin_memory=lazy and on_cuda)
        self._host_flag_view = self._host_flag.numpy()  # read without a torch call per step
        self._event = torch.cuda.Event() if lazy and on_cuda else None

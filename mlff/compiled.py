"""The compiled inference path: energies, forces and stress as one compiled graph (inductor).

Eager evaluation runs a few hundred small operators and an autograd pass per call; on a CPU and
for small systems that dispatch costs more than the arithmetic. Here the whole evaluation —
edge vectors, the model, and the gradient that gives forces and the strain derivative
(``torch.func.grad``) — is one ``torch.compile`` graph with dynamic shapes (any number of atoms,
edges and systems), which inductor turns into fused kernels. The backward pass is part of that
graph: no autograd engine runs at inference.

Edge layouts: an EGNN with fixed coordinates whose neighbour counts are even (bulk, liquids,
molecules alone or as replicas) gets its neighbour-block layout made eagerly before each call
(:meth:`~mlff.potentials.egnn.EGNN.traced_layout`: one host read, kept while the same edge
tensor comes back), its edges sorted by centre, and the block slots as graph inputs, the width
as a symbolic size: the traced graph sums over neighbours with batched matmuls. Otherwise the
model lays its edges out without reading them on the host (the per-edge layout,
:attr:`~mlff.potentials.egnn.EGNN.traceable`). Either way one graph is right for every edge
list of its kind. Calls from :data:`MIN_FUSED_EDGES` edges on where the EGNN's fused CPU
kernels apply (faster eagerly), large structures (above the EGNN's chunking threshold), empty
edge lists and training (``create_graph``) stay eager. Eager mode is the reference;
``tests/test_compiled.py`` checks both layouts agree with it to round-off.

Scatters: the backward pass of every gather of neighbour features is a scatter-add. Inductor
fuses it into its loops as atomic adds, which on a CPU cost more than the rest of those loops
together; for graphs in neighbour blocks on a CPU the scatters are instead lowered to aten's
``index_put_`` (the lowering PyTorch's deterministic mode chooses, switched on around each call:
:class:`_scatters_without_atomics`). Small per-edge graphs keep the atomic adds, which are faster
there (``benchmarks/compiled_crossover.py``; figures in docs/measurements.md).

Compiling costs about a minute on a CPU the first time, and again for each new kind of input
(one system or several, with or without stress); inductor caches its kernels on disk
(``TORCHINDUCTOR_CACHE_DIR``), so later runs start faster.
"""

from __future__ import annotations

import math
import warnings

import torch

from mlff.errors import MLFFError
from mlff.model import ForceField
from mlff.potentials.blocks import NeighbourBlocks
from mlff.potentials.egnn import MAX_CHUNK_EDGES
from mlff.potentials.egnn_fused import fused_applies
from mlff.runtime import SINGLE_THREAD_EDGES_COMPILED, single_thread_below

COMPILE_CHOICES = ("none", "inductor")
# what `mlff md run --compile auto` may resolve to, besides the choices above
AUTO = "auto"
# with per-edge sums in the traced graph, an EGNN evaluates faster eagerly (on all threads)
# above about this many edges; below, compiled on one thread is faster
# (benchmarks/compiled_crossover.py measures where: between 4,614 and 6,158 edges on the 2-core
# CPU, docs/measurements.md). Traced in neighbour blocks it was faster at every size measured,
# up to Cu-16384 (701,076 edges; docs/measurements.md, "2026-12-05 (sixth session)").
MAX_EGNN_COMPILED_EDGES = 4096
# from this many edges the traced graph takes an EGNN's neighbour-block layout, made eagerly
# before each call, where the model has one (fixed coordinates, even neighbour counts): the
# angular densities are then a batched matmul instead of an (edges, M, C) scatter
MIN_COMPILED_BLOCK_EDGES = 1024
# from this many edges an EGNN whose edge sums run in the fused CPU kernels
# (mlff.potentials.fused) evaluates faster eagerly than compiled: the graph then stays eager
# (benchmarks/compiled_crossover.py on the 2-core CPU, eager over compiled: 0.94 and 1.04 at
# Cu-108, 4,614 edges, in two runs; 0.87 and 0.78 at Cu-256, 10,964 edges; docs/measurements.md,
# "2026-12-06 (ninth session)")
MIN_FUSED_EDGES = 8192
# `--compile auto` compiles runs of at least this many steps. Compiling costs about 35 s on the
# 2-core CPU the first time (about 5 s once inductor's disk cache holds the kernels) and the
# compiled batched engine saves about 1.7 ms per step on one ethanol (772 against 350 steps/s,
# docs/measurements.md): even from a cold cache it has paid for itself after about 20,000
# steps. Twice that leaves room for smaller savings on larger cells below the edge limit.
AUTO_COMPILE_MIN_STEPS = 40_000
# Traced in neighbour blocks, larger calls save in proportion to their edges: at least this
# many seconds per edge and step (float32, 2 threads; the least measured was ethanol x 256
# replicas in the batched engine, 0.32 us; Cu-256 to Cu-16384 per call 0.5-1 us: docs/
# measurements.md, "2026-12-05 (sixth session)"). Such runs compile once they save twice a cold
# compile, AUTO_COMPILE_COST_S.
BLOCKS_SAVING_S_PER_EDGE = 0.3e-6
AUTO_COMPILE_COST_S = 35.0


def auto_compile_min_steps(n_edges: int, in_blocks: bool) -> int:
    """The fewest steps of ``n_edges`` edges per call for which ``--compile auto`` compiles:
    :data:`AUTO_COMPILE_MIN_STEPS`, or fewer for calls traced in neighbour blocks, where the
    saving grows with the edges (:data:`BLOCKS_SAVING_S_PER_EDGE`)."""
    if not in_blocks or n_edges <= 0:
        return AUTO_COMPILE_MIN_STEPS
    saving = BLOCKS_SAVING_S_PER_EDGE * n_edges
    return min(AUTO_COMPILE_MIN_STEPS, math.ceil(2.0 * AUTO_COMPILE_COST_S / saving))


# the fewest steps --compile auto compiles for any call (the largest one evaluated unchunked)
AUTO_COMPILE_FEWEST_STEPS = auto_compile_min_steps(MAX_CHUNK_EDGES, in_blocks=True)


def compile_model(
    model: ForceField, mode: str = "inductor", backend: str = "inductor"
) -> ForceField:
    """Give ``model`` a compiled force function, in place (``mode="none"``: leave it eager).

    The model must be in eval mode with its parameters frozen (inference only): the compiled
    graph holds the weights as they are now. ``backend``: torch.compile's backend ("aot_eager"
    traces the same graph without generating kernels: tests use it to check what is traced).
    """
    if mode not in COMPILE_CHOICES:
        raise MLFFError(f"compile must be one of {', '.join(COMPILE_CHOICES)}, got {mode!r}")
    if mode == "none" or is_compiled(model):
        return model
    if model.training or any(p.requires_grad for p in model.parameters()):
        raise MLFFError("only a model prepared for inference (eval, frozen weights) is compiled")
    # not an nn.Module attribute: the model's state dict and modules stay as they were
    object.__setattr__(model, "_compiled_forces", CompiledForces(model, backend))
    return model


def compiles_faster(model: ForceField) -> bool:
    """Whether the compiled graph is measured faster than eager evaluation for ``model`` (once
    compiled): an EGNN on a CPU (``benchmarks/compiled_crossover.py``, at every size it serves).
    The TFN and GPUs have no such measurement yet."""
    is_egnn = getattr(model.potential, "max_chunk_edges", None) is not None
    return is_egnn and model.device.type == "cpu"


def auto_compile_mode(model: ForceField, n_edges: int, steps: int, graph=None) -> str:
    """What ``--compile auto`` means for a run of ``steps`` force calls of ``n_edges`` edges each
    (all systems of a batch together; ``graph``: their first :class:`~mlff.graph.AtomicGraph`,
    batched, when known): "inductor" where the compiled graph is measured to win after its
    compile time, else "none".

    It wins for an EGNN on a CPU at or below :data:`MAX_EGNN_COMPILED_EDGES` edges per call,
    and above that where its edges lay out in neighbour blocks (fixed coordinates, even
    neighbour counts; :meth:`CompiledForces.layout`), in runs of at least
    :func:`auto_compile_min_steps` steps (:data:`AUTO_COMPILE_MIN_STEPS`, fewer for large calls
    in blocks). The TFN and GPUs have no such measurement yet, so they stay eager.
    """
    potential = model.potential
    if not compiles_faster(model) or n_edges <= 0:
        return "none"
    if n_edges > potential.max_chunk_edges or fused_eager_faster(model, n_edges):
        return "none"
    in_blocks = (
        graph is not None and block_layout(potential, graph.edge_index, graph.n_atoms) is not None
    )
    if not in_blocks and n_edges > MAX_EGNN_COMPILED_EDGES:
        return "none"
    return "inductor" if steps >= auto_compile_min_steps(n_edges, in_blocks) else "none"


def fused_eager_faster(model: ForceField, n_edges: int) -> bool:
    """Whether ``model`` evaluates calls of ``n_edges`` edges faster eagerly, through the fused
    CPU kernels, than compiled: from :data:`MIN_FUSED_EDGES` on, where the kernels apply."""
    return n_edges >= MIN_FUSED_EDGES and fused_applies(model.potential, model.dtype, model.device)


def block_layout(
    potential, edge_index: torch.Tensor, n_atoms: int, min_edges: int = MIN_COMPILED_BLOCK_EDGES
) -> NeighbourBlocks | None:
    """The neighbour-block layout a traced graph takes for ``edge_index`` (2, n_edges): the
    potential's ``traced_layout`` from ``min_edges`` edges on, or None (per-edge sums)."""
    make = getattr(potential, "traced_layout", None)
    if make is None or int(edge_index.shape[1]) < min_edges:
        return None
    return make(edge_index, n_atoms)


def is_compiled(model: ForceField) -> bool:
    """Whether :func:`compile_model` compiled ``model``."""
    return "_compiled_forces" in vars(model)


def compiled_forces(model: ForceField) -> CompiledForces | None:
    """The compiled force function of ``model``, or None when it runs eagerly."""
    return vars(model).get("_compiled_forces")


class CompiledForces:
    """``(species, edge_index, edge_shifts, system, positions, cell) -> (energies, forces,
    strain derivative)`` of one model, compiled on first use for each kind of input.

    Shapes: species, system (n_atoms,) long; edge_index (2, n_edges) long; edge_shifts
    (n_edges, 3), positions (n_atoms, 3) Å and cell (n_systems, 3, 3) Å in the model's dtype.
    Returns per-atom energies (n_atoms,) eV float64, forces (n_atoms, 3) eV/Å and, with
    ``compute_stress``, dE/d(strain) (n_systems, 3, 3) eV, both in the model's dtype.
    """

    def __init__(self, model: ForceField, backend: str = "inductor") -> None:
        self.model = model
        # every model's graphs are cached on the one code object of the traced function, and
        # each kind of input of each model is an entry: allow more than torch's default of 8
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
        # on a CPU, inductor's C++ wrapper launches the kernels of a call without the Python
        # wrapper's per-kernel cost (about 5 % of a small molecule's call; compiles no slower)
        cpu_inductor = backend == "inductor" and model.device.type == "cpu"
        options = {"cpp_wrapper": True} if cpu_inductor else None
        self._function = torch.compile(
            _force_function(model), backend=backend, dynamic=True, fullgraph=True, options=options
        )
        self._failed: str | None = None
        self.min_block_edges = MIN_COMPILED_BLOCK_EDGES

    @property
    def failed(self) -> str | None:
        """Why the model could not be compiled (it then runs eagerly), or None."""
        return self._failed

    def applies(self, n_atoms: int, n_edges: int, edge_index: torch.Tensor | None = None) -> bool:
        """Whether the compiled graph serves a structure of this size (else: evaluate eagerly).

        An EGNN: below :data:`MIN_FUSED_EDGES` edges where its fused CPU kernels apply (they
        are faster above); otherwise up to :data:`MAX_EGNN_COMPILED_EDGES` edges in any layout,
        and above that, up to its chunking threshold (where eager chunks bound the memory),
        only where its ``edge_index`` lays out in neighbour blocks (:meth:`layout`); per edge,
        its eager layers on every thread are faster there. The TFN has no such limit.
        """
        if self._failed is not None or n_atoms <= 0 or n_edges <= 0:
            return False
        if fused_eager_faster(self.model, n_edges):
            return False
        limit = getattr(self.model.potential, "max_chunk_edges", None)
        if limit is None or n_edges <= min(limit, MAX_EGNN_COMPILED_EDGES):
            return True
        return edge_index is not None and self.layout(edge_index, n_atoms) is not None

    def layout(self, edge_index: torch.Tensor, n_atoms: int) -> NeighbourBlocks | None:
        """The potential's neighbour-block layout of ``edge_index`` for the traced graph (made
        eagerly; one host read, kept while the same edge tensor comes back), or None: per-edge
        sums in the graph. Blocks from :data:`MIN_COMPILED_BLOCK_EDGES` edges on."""
        return block_layout(self.model.potential, edge_index, n_atoms, self.min_block_edges)

    def __call__(
        self,
        species: torch.Tensor,
        edge_index: torch.Tensor,
        edge_shifts: torch.Tensor,
        system: torch.Tensor,
        positions: torch.Tensor,
        cell: torch.Tensor,
        compute_stress: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        n_edges = int(edge_index.shape[1])
        blocks = self.layout(edge_index, len(positions))
        edge_index, edge_shifts, layout = laid_out(blocks, edge_index, edge_shifts)
        inputs = (species, edge_index, edge_shifts, system, positions.detach(), cell.detach())
        # per-edge sums (atomic scatters) run faster on one thread up to this size; blocks don't
        one_thread_below = SINGLE_THREAD_EDGES_COMPILED if blocks is None else 0
        with (
            _traceable(self.model.potential),
            single_thread_below(n_edges, one_thread_below, positions.device),
            _scatters_without_atomics(positions.device, in_blocks=blocks is not None),
        ):
            try:
                energies, forces, strain_derivative = self._function(
                    *inputs, compute_stress, *layout
                )
            except Exception as error:
                if self._failed is not None or not _is_compiler_error(error):
                    raise
                # a model the compiler cannot follow: evaluate it eagerly from now on
                self._failed = f"{type(error).__name__}: {error}".splitlines()[0]
                warnings.warn(
                    f"the model could not be compiled ({self._failed}); evaluating it eagerly",
                    stacklevel=3,
                )
                function = _force_function(self.model)
                energies, forces, strain_derivative = function(*inputs, compute_stress, *layout)
        return energies, forces, strain_derivative if compute_stress else None


def laid_out(
    blocks: NeighbourBlocks | None, edge_index: torch.Tensor, edge_shifts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor | None, torch.Tensor | None]]:
    """The traced force function's edge inputs for ``blocks`` (a potential's ``traced_layout``
    of ``edge_index``, or None: per-edge sums): the edges (2, n_edges) and their shifts
    (n_edges, 3) sorted by centre, and ``(slot, widths)``: the block slot of each sorted edge
    and a tensor as long as the block width (a symbolic size from the first trace on; an int
    argument would be specialised first and traced again when it changes), or ``(None, None)``.
    """
    if blocks is None:
        return edge_index, edge_shifts, (None, None)
    if blocks.order is not None:
        edge_index, edge_shifts = edge_index[:, blocks.order], edge_shifts[blocks.order]
    return edge_index, edge_shifts, (blocks.slot, blocks.slot.new_empty(blocks.width))


class _scatters_without_atomics:
    """Context: for a graph in neighbour blocks on a CPU, inductor lowers the scatter-adds of
    the backward pass to aten's ``index_put_`` instead of fused loops of atomic adds (see the
    module docstring). It is the lowering PyTorch's deterministic mode picks; the mode is set
    around every call, not only while compiling, so the graph's guards always see the same
    state, and restored after. Elsewhere (per-edge graphs, other devices): nothing."""

    def __init__(self, device: torch.device, in_blocks: bool) -> None:
        self.active = device.type == "cpu" and in_blocks
        self.previous = (False, False)

    def __enter__(self) -> None:
        if self.active:
            self.previous = (
                torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
            )
            torch.use_deterministic_algorithms(True, warn_only=True)

    def __exit__(self, *exc) -> None:
        if self.active:
            torch.use_deterministic_algorithms(self.previous[0], warn_only=self.previous[1])


class _traceable:
    """Context: the potential lays edges out without host reads (see EGNN.traceable)."""

    def __init__(self, potential) -> None:
        self.potential = potential
        self.previous = getattr(potential, "traceable", None)

    def __enter__(self) -> None:
        if self.previous is not None:
            self.potential.traceable = True

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            self.potential.traceable = self.previous


def _is_compiler_error(error: Exception) -> bool:
    module = type(error).__module__
    return module.startswith(("torch._dynamo", "torch._inductor", "torch.fx"))


def _force_function(model: ForceField):
    """The function that :class:`CompiledForces` compiles: energies and, by ``torch.func.grad``
    (traced into the same graph as the energies), forces and the strain derivative."""
    from mlff.forces import pair_vectors, strained  # mlff.forces calls into this module

    def energies_and_gradients(
        species,
        edge_index,
        edge_shifts,
        system,
        positions,
        cell,
        compute_stress: bool,
        slot: torch.Tensor | None = None,
        widths: torch.Tensor | None = None,
    ):
        blocks = None
        if slot is not None:  # edges sorted by centre, in neighbour blocks len(widths) wide
            n_atoms, n_edges, width = positions.shape[0], edge_index.shape[1], widths.shape[0]
            chunks = ((0, n_atoms, 0, n_edges),)
            blocks = NeighbourBlocks(None, slot, width, n_atoms, chunks)

        def total_energy(positions, strain):
            deformed = cell
            if compute_stress:
                positions, deformed = strained(positions, cell, strain, system)
            vectors = pair_vectors(positions, deformed, system, edge_index, edge_shifts)
            energies = model.atomic_energies(species, edge_index, vectors, blocks)
            return energies.sum(), energies

        gradient = torch.func.grad(total_energy, argnums=(0, 1), has_aux=True)
        (position_gradient, strain_gradient), energies = gradient(positions, torch.zeros_like(cell))
        return energies, -position_gradient, strain_gradient

    return energies_and_gradients

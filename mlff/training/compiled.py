"""Training steps through one compiled graph: energies, forces (and stress) and their backward.

Training on forces differentiates ``F = -dE/dx`` once more with respect to the weights (the
double backward). Eagerly that is several hundred small operators and two autograd passes per
step, which on a CPU costs far more than the arithmetic. Here the model, its position and
strain gradients (``torch.func.grad``, as in :mod:`mlff.compiled`) and the energies per
structure are one ``torch.compile`` graph with dynamic shapes; AOTAutograd derives the
backward of that whole graph, including the double backward, and inductor fuses both. The loss
stays eager (a handful of operators). Gradients equal eager ones to round-off
(``tests/training/test_compiled_training.py``).

The first step compiles (about a minute on a CPU; seconds once inductor's disk cache holds the
kernels of the same model shapes) and counts as training time. A model the compiler cannot
follow trains eagerly, with a warning. Batches without forces, and batches of one structure,
take the eager path.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from mlff.compiled import _force_function, _is_compiler_error, _traceable
from mlff.errors import MLFFError
from mlff.forces import compiled_evaluation, evaluate
from mlff.graph import AtomicGraph

TRAIN_COMPILE_CHOICES = ("auto", "none", "inductor")
# `--compile auto` compiles training runs with at least this time limit (minutes). On the 2-core
# CPU (paracetamol, medium EGNN, 2 processes, docs/measurements.md) compiling took 59 s from a
# cold inductor cache (about 5 s warm), after which epochs ran 1.47x faster: a 5-minute run
# made 83 epochs against 71 eager and reached the same test error; longer runs gain
AUTO_COMPILE_MIN_MINUTES = 5.0


def resolve_train_compile(mode: str, device: torch.device, time_limit_min: float) -> str:
    """``auto`` -> "inductor" on a CPU for runs with a time limit of at least
    :data:`AUTO_COMPILE_MIN_MINUTES` (GPUs are not measured yet: eager), else "none"."""
    if mode not in TRAIN_COMPILE_CHOICES:
        raise MLFFError(f"compile must be one of {', '.join(TRAIN_COMPILE_CHOICES)}, got {mode!r}")
    if mode != "auto":
        return mode
    long_enough = time_limit_min >= AUTO_COMPILE_MIN_MINUTES
    return "inductor" if torch.device(device).type == "cpu" and long_enough else "none"


class EnergyAndForces(nn.Module):
    """``model`` evaluated for training, as one module call (what DDP wraps).

    ``forward(graph)`` returns what :func:`mlff.forces.evaluate` returns with
    ``create_graph=True``: ``energy`` (n_graphs,) eV float64, ``energies`` (n_atoms,), and when
    asked ``forces`` (n_atoms, 3) eV/Å and ``stress`` (n_graphs, 3, 3) eV/Å³, all differentiable
    with respect to the weights. ``compile``: "none" (eager) or "inductor"; ``backend`` is
    torch.compile's (tests use "aot_eager": the same traced graph without kernel generation).
    """

    def __init__(
        self,
        model: nn.Module,
        compute_forces: bool,
        compute_stress: bool,
        compile: str = "none",
        backend: str = "inductor",
    ) -> None:
        super().__init__()
        if compile not in ("none", "inductor"):
            raise MLFFError(f"compile must be 'none' or 'inductor' here, got {compile!r}")
        self.model = model
        self.compute_forces = compute_forces
        self.compute_stress = compute_stress
        self.failed: str | None = None  # why compiling failed (then eager), or None
        self._compiled = None
        if compile != "none" and compute_forces:
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
            function = _force_function(model)
            self._compiled = torch.compile(function, backend=backend, dynamic=True, fullgraph=True)

    @property
    def compiled(self) -> bool:
        """Whether steps run through the compiled graph (False: eager, or compiling failed)."""
        return self._compiled is not None and self.failed is None

    def forward(self, graph: AtomicGraph) -> dict[str, torch.Tensor]:
        # sizes of 0 or 1 would make torch.compile specialise and compile again (a minute):
        # such batches (one structure, at the end of an epoch) run eagerly
        sizes = (graph.n_graphs, graph.n_atoms, graph.n_edges)
        if self.compiled and min(sizes) > 1:
            try:
                return self._compiled_forward(graph)
            except Exception as error:
                if not _is_compiler_error(error):
                    raise
                self.failed = f"{type(error).__name__}: {error}".splitlines()[0]
                warnings.warn(
                    f"the training step could not be compiled ({self.failed}); training eagerly",
                    stacklevel=2,
                )
        return evaluate(
            self.model,
            graph,
            compute_forces=self.compute_forces,
            compute_stress=self.compute_stress,
            create_graph=True,
        )

    def _compiled_forward(self, graph: AtomicGraph) -> dict[str, torch.Tensor]:
        model = self.model
        species = model.species_index(graph.numbers).to(model.device)  # checked on the host
        graph = graph.to(model.device, model.dtype)
        with _traceable(model.potential):
            return compiled_evaluation(self._compiled, species, graph, self.compute_stress)

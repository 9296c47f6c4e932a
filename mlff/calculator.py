"""MLFFCalculator: the ASE calculator. Converts atoms to a graph, calls the model, converts back."""

from __future__ import annotations

import copy
import logging
import os
import time
import warnings

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from mlff.compiled import (
    AUTO,
    AUTO_COMPILE_COST_S,
    COMPILE_CHOICES,
    compile_model,
    compiles_faster,
    is_compiled,
)
from mlff.covariance import CovarianceResult, check_covariance
from mlff.errors import CovarianceError, MLFFError
from mlff.files import load_model
from mlff.forces import evaluate
from mlff.graph import graph_from_atoms
from mlff.model import ForceField
from mlff.runtime import flush_denormals, keep_freed_memory, resolve_device, resolve_dtype

LOG = logging.getLogger(__name__)


def prepare_model(
    model: ForceField | str | os.PathLike, device: str | torch.device, dtype: str | torch.dtype
) -> ForceField:
    """A model (loaded from a path, or a copy of the object) on ``device`` in ``dtype``, eval."""
    device = resolve_device(device)
    dtype = resolve_dtype(dtype)
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model, device=device)
    elif not isinstance(model, ForceField):
        raise TypeError(f"model must be a ForceField or a path, got {type(model).__name__}")
    elif model.dtype != dtype or model.device != device:
        model = copy.deepcopy(model)
    model = model.to(device=device, dtype=dtype).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


class MLFFCalculator(Calculator):
    """ASE calculator for mlff models: energy, free_energy, energies, forces, stress.

    Args:
        model: a :class:`~mlff.model.ForceField` or the path of a saved model file.
        device: "auto" (CUDA when available), "cpu" or "cuda".
        dtype: "float64" (default; relaxations and checks) or "float32" (faster MD).
        check_covariance_every: run the rotational covariance check every N calculations
            (0 = never); results are kept in ``covariance_results``.
        covariance_tolerance: relative force tolerance (default by dtype).
        on_covariance_failure: "warn" or "raise" (:class:`~mlff.errors.CovarianceError`).
        seed: seed of the random rotations.
        include_stress: compute the stress in every calculation of a periodic cell, as when it
            is asked for (default: only when asked for; see :meth:`calculate`).
        compile: "auto" (default), "none" (eager, the reference) or "inductor"
            (``torch.compile`` the energy function, see :mod:`mlff.compiled`; the first calls
            compile, for half a minute or more). "auto" starts eager and, for an EGNN on a CPU
            (where the compiled graph is measured faster at every size it serves), compiles
            once the eager calls have taken as long as a cold compile,
            :data:`~mlff.compiled.AUTO_COMPILE_COST_S` in total: a few calls never compile, a
            long run pays at most that much extra before it runs compiled. Elsewhere "auto"
            stays eager.

    The stress costs a derivative with respect to a strain besides the positions; MD at fixed
    cell and fixed-cell relaxations never read it, so it is computed only when asked for. A
    caller that will read it for each structure anyway (an NPT integrator asks for the forces,
    then the stress of each state) sets ``include_stress`` and gets both from one evaluation.

    On a CPU the calculator also tells glibc's malloc to keep freed memory for reuse
    (:func:`mlff.runtime.keep_freed_memory`, process-wide; ``MLFF_KEEP_FREED_MEMORY=0`` opts out),
    so repeated calls on large cells do not page-fault their activations anew, and flushes
    subnormal floats to zero on the calling thread and the threads torch starts after it
    (:func:`mlff.runtime.flush_denormals`; ``MLFF_FLUSH_DENORMALS=0`` opts out): a trained
    model's saturated activations can otherwise halve its speed.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(
        self,
        model: ForceField | str | os.PathLike,
        device: str = "auto",
        dtype: str = "float64",
        check_covariance_every: int = 0,
        covariance_tolerance: float | None = None,
        on_covariance_failure: str = "warn",
        seed: int | None = None,
        include_stress: bool = False,
        compile: str = AUTO,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if int(check_covariance_every) < 0:
            raise ValueError(f"check_covariance_every must be >= 0, got {check_covariance_every}")
        if on_covariance_failure not in ("warn", "raise"):
            raise ValueError(
                f"on_covariance_failure must be 'warn' or 'raise', got {on_covariance_failure!r}"
            )
        if compile not in (AUTO, *COMPILE_CHOICES):
            choices = ", ".join((AUTO, *COMPILE_CHOICES))
            raise MLFFError(f"compile must be one of {choices}, got {compile!r}")
        prepared = prepare_model(model, device, dtype)
        self._owns_model = prepared is not model  # else compile a copy, not the caller's model
        # seconds of eager evaluation after which "auto" compiles (None: it never does)
        self._compile_after_s: float | None = None
        if compile == AUTO:
            compile = "none"
            if compiles_faster(prepared) and not is_compiled(prepared):
                self._compile_after_s = AUTO_COMPILE_COST_S
        self.model = prepared
        if compile != "none":
            self._compile(compile)
        if self.model.device.type == "cpu":
            keep_freed_memory()
            flush_denormals()
        self.check_covariance_every = int(check_covariance_every)
        self.covariance_tolerance = covariance_tolerance
        self.on_covariance_failure = on_covariance_failure
        self.covariance_results: list[CovarianceResult] = []
        self.include_stress = bool(include_stress)
        self.n_calculations = 0  # structures evaluated (adding the stress to one is not counted)
        self._rng = np.random.default_rng(seed)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def check_state(self, atoms, tol: float = 1e-15) -> list[str]:
        """What changed since the last calculation, by exact comparison of what the model reads.

        ASE's generic comparison costs ~1 ms and runs several times per MD step; the model reads
        only positions, numbers, cell and pbc, so only those are compared.
        """
        if self.atoms is None:
            return list(all_changes)
        previous = self.atoms
        changes = []
        if previous.positions.shape != atoms.positions.shape or not np.array_equal(
            previous.positions, atoms.positions
        ):
            changes.append("positions")
        if not np.array_equal(previous.numbers, atoms.numbers):
            changes.append("numbers")
        if not np.array_equal(previous.cell.array, atoms.cell.array):
            changes.append("cell")
        if not np.array_equal(previous.pbc, atoms.pbc):
            changes.append("pbc")
        return changes

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        """Energy, energies and forces, and the stress when ``properties`` holds "stress" (or
        ``include_stress`` is set and the cell is periodic).

        ASE asks again, with ``system_changes=[]``, for a property that the results of the same
        structure lack: the stress after the forces. That call evaluates the model once more
        with the strain derivative and adds the stress; the energy and forces already given stay.
        """
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        periodic = bool(np.any(atoms.pbc))
        if "stress" in properties and not periodic:
            raise PropertyNotImplementedError(
                "stress is defined only for periodic cells; this structure has pbc=False"
            )
        stress = "stress" in properties or (self.include_stress and periodic)
        graph = graph_from_atoms(atoms, self.model.cutoff)
        if "stress" in properties and not system_changes and "forces" in self.results:
            # the same structure, asked for the stress after the forces: add it to the results
            out = evaluate(self.model, graph, compute_forces=False, compute_stress=True)
            self.results["stress"] = self._voigt(out["stress"])
            return
        started = time.perf_counter()
        out = evaluate(self.model, graph, compute_forces=True, compute_stress=stress)
        if self._compile_after_s is not None:
            self._count_eager(time.perf_counter() - started)
        energy = float(out["energy"].item())
        forces = out["forces"].detach().cpu().double().numpy()
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "energies": out["energies"].detach().cpu().numpy(),
            "forces": forces,
        }
        if stress:
            self.results["stress"] = self._voigt(out["stress"])
        self.n_calculations += 1
        every = self.check_covariance_every
        if every and self.n_calculations % every == 0:
            self.run_covariance_check(reference=(energy, forces))

    def _count_eager(self, seconds: float) -> None:
        """Add an eager evaluation's time; compile (``compile="auto"``) once they reach the
        threshold. The next calls compile the graph for their kind of input."""
        self._compile_after_s -= seconds
        if self._compile_after_s > 0:
            return
        self._compile_after_s = None
        LOG.info(
            "compiling the model (compile='auto'): the eager calls took %.0f s", AUTO_COMPILE_COST_S
        )
        self._compile("inductor")

    def _compile(self, mode: str) -> None:
        """Compile ``self.model`` with ``mode``; a copy of it, not the caller's model."""
        if not self._owns_model:
            self.model, self._owns_model = copy.deepcopy(self.model), True
        self.model = compile_model(self.model, mode)

    @staticmethod
    def _voigt(stress: torch.Tensor) -> np.ndarray:
        """(6,) eV/Å³ of the (1, 3, 3) stress of one structure."""
        return full_3x3_to_voigt_6_stress(stress[0].detach().cpu().double().numpy())

    def run_covariance_check(
        self, reference: tuple[float, np.ndarray] | None = None, reflection: bool = False
    ) -> CovarianceResult:
        """Check the model at the current atoms now; warn or raise on failure as configured."""
        if self.atoms is None:
            raise ValueError("no structure has been calculated yet")
        result = check_covariance(
            self.model,
            self.atoms,
            rng=self._rng,
            reflection=reflection,
            force_tolerance=self.covariance_tolerance,
            reference=reference,
        )
        self.covariance_results.append(result)
        if not result.passed:
            if self.on_covariance_failure == "raise":
                raise CovarianceError(result.describe())
            warnings.warn(result.describe(), RuntimeWarning, stacklevel=2)
        return result

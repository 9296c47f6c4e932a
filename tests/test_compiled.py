"""The compiled inference path (``--compile inductor``) against eager, the reference.

What a compiler traces is checked with torch.compile's "aot_eager" backend (the same graph, no
kernel generation: seconds instead of minutes; ``MLFF_TEST_COMPILE_BACKEND=inductor`` switches)
on three tiny models that cover the traced code paths (EGNN angular sums per edge, TFN with
attention, the Uni-Mol encoder): compiled equals eager, and the physics suite's checks pass on
the compiled model. One test compiles with inductor itself through the calculator.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from mlff import MLFFCalculator, build_model
from mlff.compiled import MAX_EGNN_COMPILED_EDGES, compile_model, compiled_forces, is_compiled
from mlff.errors import MLFFError
from mlff.graph import graph_from_atoms
from mlff.md.forces import BatchedModel
from mlff.md.neighbours import VerletList
from mlff.md.state import SystemBatch
from mlff.testing import predict, predict_many
from tests import test_physics
from tests.conftest import ethanol, randomise, tiny_model, triclinic_cell

# "egnn-blocks": the training preset's layout (fixed coordinates), traced in neighbour blocks
COMPILED_CONFIGS = ["egnn-angular", "egnn-blocks", "tfn-l2-attention", "tfn+unimol"]
# MLFF_TEST_COMPILE_BACKEND=inductor runs the same checks on generated kernels (many minutes)
BACKEND = os.environ.get("MLFF_TEST_COMPILE_BACKEND", "aot_eager")


def tiny_preset():
    torch.manual_seed(0)
    return build_model(
        potential="egnn",
        elements=["H", "C", "O", "Cu"],
        cutoff=4.0,
        features=8,
        num_layers=2,
        angular_channels=2,
        angular_order=3,
        layer_readouts=True,
        coordinate_updates=False,
    )


def blocks_model():
    """The tiny angular EGNN with fixed coordinates: its edges lay out in neighbour blocks."""
    torch.manual_seed(0)
    hyper = {"features": 16, "num_layers": 2, "angular_channels": 4, "angular_order": 3}
    model = build_model(
        "egnn", elements=["H", "C", "O"], cutoff=3.5, layer_readouts=True,
        coordinate_updates=False, **hyper,
    )  # fmt: skip
    return randomise(model.double()).eval()


@pytest.fixture(scope="module", params=COMPILED_CONFIGS)
def models(request):
    """(eager, compiled) copies of one tiny model; module-wide, so each is traced once."""
    make = blocks_model if request.param == "egnn-blocks" else lambda: tiny_model(request.param)
    eager = make()
    compiled = compile_model(make().requires_grad_(False), backend=BACKEND)
    if request.param == "egnn-blocks":
        compiled_forces(compiled).min_block_edges = 0  # blocks however few the edges
        compiled.potential.max_padding = 10.0  # and however uneven (the eager copy: per edge)
        for atoms in (ethanol(), triclinic_cell()):  # the traced graph takes the blocks layout
            graph = graph_from_atoms(atoms, compiled.cutoff)
            assert compiled_forces(compiled).layout(graph.edge_index, graph.n_atoms) is not None
    yield eager, compiled
    assert compiled_forces(compiled).failed is None  # no silent fallback to eager


def test_compile_refuses_bad_modes_and_training_models():
    model = tiny_preset()
    with pytest.raises(MLFFError, match="compile must be one of"):
        compile_model(model, "fast")
    with pytest.raises(MLFFError, match="prepared for inference"):
        compile_model(model.train(), "inductor")
    assert compile_model(model, "none") is model and not is_compiled(model)


def test_large_and_empty_structures_stay_eager():
    model = compile_model(tiny_preset().eval().requires_grad_(False), backend="aot_eager")
    compiled = compiled_forces(model)
    assert compiled.applies(9, 72)
    assert not compiled.applies(9, 0) and not compiled.applies(0, 0)
    assert compiled.applies(100, MAX_EGNN_COMPILED_EDGES)
    assert not compiled.applies(100, MAX_EGNN_COMPILED_EDGES + 1)  # eagerly, on every thread
    copper = graph_from_atoms(bulk("Cu", "fcc", a=3.61, cubic=True) * (4, 4, 4), model.cutoff)
    assert copper.n_edges > MAX_EGNN_COMPILED_EDGES
    assert compiled.applies(256, copper.n_edges, copper.edge_index)  # in neighbour blocks
    slab = bulk("Cu", "fcc", a=3.61, cubic=True) * (6, 6, 2)
    slab.center(vacuum=5.0, axis=2)  # uneven neighbour counts: per edge, eagerly
    surface = graph_from_atoms(slab, model.cutoff)
    assert surface.n_edges > MAX_EGNN_COMPILED_EDGES
    assert not compiled.applies(len(slab), surface.n_edges, surface.edge_index)
    model.potential.max_chunk_edges = 50
    assert not compiled.applies(9, 72)  # chunked eagerly
    assert not compiled.applies(256, copper.n_edges, copper.edge_index)


@pytest.mark.slow
def test_compiled_equals_eager_alone_and_in_a_batch(models):
    eager, compiled = models
    structures = [ethanol(), triclinic_cell()]
    for group in ([structures[0]], [structures[1]], structures):
        for reference, result in zip(
            predict_many(eager, group), predict_many(compiled, group), strict=True
        ):
            assert abs(result.energy - reference.energy) < 1e-10
            np.testing.assert_allclose(result.forces, reference.forces, rtol=0, atol=1e-10)
            if reference.stress is not None:
                np.testing.assert_allclose(result.stress, reference.stress, rtol=0, atol=1e-10)
    assert compiled_forces(compiled).failed is None  # compiled, not a fallback to eager


@pytest.mark.slow
def test_batched_md_model_compiled_equals_eager(models):
    eager, compiled = models
    structures = [ethanol(), triclinic_cell()]
    batch = SystemBatch.from_atoms(structures, torch.device("cpu"))
    edge_index, edge_shifts = VerletList(eager.cutoff, 1.0).update(batch)
    reference = BatchedModel(eager, batch.numbers)(batch, edge_index, edge_shifts, True)
    result = BatchedModel(compiled, batch.numbers)(batch, edge_index, edge_shifts, True)
    for name in ("energy", "forces", "stress"):
        torch.testing.assert_close(
            getattr(result, name), getattr(reference, name), rtol=0, atol=1e-10
        )


@pytest.mark.slow
@pytest.mark.parametrize("structure_name", ["molecule", "triclinic"])
def test_physics_suite_on_the_compiled_model(models, structure_name):
    _, compiled = models
    structure = ethanol() if structure_name == "molecule" else triclinic_cell()
    assert np.abs(predict(compiled, structure).forces).max() > 1e-3
    test_physics.test_rotation_and_reflection(compiled, structure, reflection=True)
    test_physics.test_translation(compiled, structure)
    test_physics.test_permutation(compiled, structure)
    test_physics.test_forces_match_finite_differences(compiled, structure)
    if structure_name == "triclinic":
        test_physics.test_stress_matches_finite_strain(compiled)
        test_physics.test_supercell_is_extensive(compiled)
    else:
        test_physics.test_smooth_when_an_atom_crosses_the_cutoff(compiled)


@pytest.mark.slow
def test_inductor_compiled_equals_eager_on_a_molecule_and_a_periodic_cell():
    model = tiny_preset()
    eager = MLFFCalculator(model, device="cpu", dtype="float64")
    compiled = MLFFCalculator(model, device="cpu", dtype="float64", compile="inductor")
    assert is_compiled(compiled.model) and not is_compiled(eager.model)
    assert not is_compiled(model)  # the caller's model is left as it was
    ethanol_molecule = molecule("CH3CH2OH")
    copper = bulk("Cu", "fcc", a=3.61) * (2, 2, 2)
    copper.rattle(0.05, seed=1)
    for atoms, properties in ((ethanol_molecule, ["forces"]), (copper, ["forces", "stress"])):
        results = []
        for calculator in (eager, compiled):
            work = copy.deepcopy(atoms)
            work.calc = calculator
            results.append({p: np.array(work.calc.get_property(p, work)) for p in properties})
            results[-1]["energy"] = work.get_potential_energy()
        for key in results[0]:
            np.testing.assert_allclose(results[1][key], results[0][key], rtol=0, atol=1e-10)
    assert compiled_forces(compiled.model).failed is None


def test_auto_compiles_long_runs_of_egnn_calls_on_a_cpu_sooner_for_large_blocks():
    from mlff.compiled import AUTO_COMPILE_MIN_STEPS, auto_compile_min_steps, auto_compile_mode

    egnn = tiny_preset().eval()
    long_run = AUTO_COMPILE_MIN_STEPS
    assert auto_compile_mode(egnn, 72, long_run) == "inductor"
    assert auto_compile_mode(egnn, 72, long_run - 1) == "none"  # too short to pay back
    assert auto_compile_mode(egnn, MAX_EGNN_COMPILED_EDGES + 1, long_run) == "none"
    copper = graph_from_atoms(bulk("Cu", "fcc", a=3.61, cubic=True) * (4, 4, 4), egnn.cutoff)
    assert auto_compile_mode(egnn, copper.n_edges, long_run, copper) == "inductor"  # blocks
    moving = tiny_model("egnn", elements=("Cu",), cutoff=4.0)  # coordinate updates: per edge
    assert auto_compile_mode(moving, copper.n_edges, long_run, copper) == "none"
    # the saving per step grows with the edges in blocks: larger cells compile in shorter runs
    big = graph_from_atoms(bulk("Cu", "fcc", a=3.61, cubic=True) * (8, 8, 8), egnn.cutoff)
    shorter = auto_compile_min_steps(big.n_edges, in_blocks=True)
    assert shorter < auto_compile_min_steps(copper.n_edges, in_blocks=True) <= long_run
    assert auto_compile_min_steps(big.n_edges, in_blocks=False) == long_run
    assert auto_compile_mode(egnn, big.n_edges, shorter, big) == "inductor"
    assert auto_compile_mode(egnn, big.n_edges, shorter - 1, big) == "none"
    assert auto_compile_mode(egnn, 0, long_run) == "none"
    assert auto_compile_mode(tiny_model("tfn-l2-attention"), 72, long_run) == "none"  # unmeasured


def test_md_run_resolves_compile_auto_from_the_model_and_structures(tmp_path):
    from mlff.workflows.common import resolve_compile_mode

    from mlff import save_model
    from mlff.compiled import AUTO_COMPILE_MIN_STEPS

    path = tmp_path / "model.pt"
    save_model(tiny_preset(), path)
    slab = bulk("Cu", "fcc", a=3.61, cubic=True) * (8, 8, 2)
    slab.center(vacuum=5.0, axis=2)
    mol, cell = [ethanol()], [bulk("Cu", "fcc", a=3.61, cubic=True) * (6, 6, 6)]
    long_run = AUTO_COMPILE_MIN_STEPS
    assert resolve_compile_mode("auto", path, mol, long_run, "cpu") == "inductor"
    assert resolve_compile_mode("auto", path, mol, 1000, "cpu") == "none"
    assert resolve_compile_mode("auto", path, cell, long_run, "cpu") == "inductor"  # blocks
    # too many edges, uneven neighbour counts: eager
    assert resolve_compile_mode("auto", path, [slab], long_run, "cpu") == "none"
    assert resolve_compile_mode("none", path, mol, long_run, "cpu") == "none"
    assert resolve_compile_mode("inductor", path, cell, 10, "cpu") == "inductor"

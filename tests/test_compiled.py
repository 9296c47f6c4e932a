"""The compiled inference path (``--compile inductor``) against eager, the reference.

Compiling costs about a minute per structure kind on two cores, so one test covers a molecule
and a periodic cell with stress, and the errors of the option; the physics suite runs eagerly.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from mlff import MLFFCalculator, build_model
from mlff.compiled import compile_model, is_compiled
from mlff.errors import MLFFError


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


def test_compile_refuses_bad_modes_and_training_models():
    model = tiny_preset()
    with pytest.raises(MLFFError, match="compile must be one of"):
        compile_model(model, "fast")
    with pytest.raises(MLFFError, match="prepared for inference"):
        compile_model(model.train(), "inductor")
    assert compile_model(model, "none") is model and not is_compiled(model)


@pytest.mark.slow
def test_compiled_equals_eager_on_a_molecule_and_a_periodic_cell():
    model = tiny_preset()
    eager = MLFFCalculator(model, device="cpu", dtype="float64")
    compiled = MLFFCalculator(model, device="cpu", dtype="float64", compile="inductor")
    assert is_compiled(compiled.model) and not is_compiled(eager.model)
    assert not is_compiled(model)  # the caller's model is left as it was
    ethanol = molecule("CH3CH2OH")
    copper = bulk("Cu", "fcc", a=3.61) * (2, 2, 2)
    copper.rattle(0.05, seed=1)
    for atoms, properties in ((ethanol, ["forces"]), (copper, ["forces", "stress"])):
        results = []
        for calculator in (eager, compiled):
            work = copy.deepcopy(atoms)
            work.calc = calculator
            results.append({p: np.array(work.calc.get_property(p, work)) for p in properties})
            results[-1]["energy"] = work.get_potential_energy()
        for key in results[0]:
            np.testing.assert_allclose(results[1][key], results[0][key], rtol=0, atol=1e-10)

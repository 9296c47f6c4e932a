"""The LAMMPS adapter against MLFFCalculator (float64), on stand-in ML-IAP data (no LAMMPS).

One domain (one rank) and two (a cell split in halves along x), for an fcc Cu cell with periodic
images and a molecule; energies, per-atom energies, forces folded onto the atoms and the virial
must equal the calculator's to 1e-8. Multi-layer models are the hard case: a ghost shell of
``depth x cutoff`` must be exact, and one a cutoff thinner must not be.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from mlff import build_model
from mlff.calculator import MLFFCalculator
from mlff.errors import LAMMPSError
from mlff.lammps import MLIAPAdapter, message_passing_depth
from mlff.lammps.files import settings_for
from tests.conftest import randomise
from tests.lammps.stand_in import StandInData, domains

TOLERANCE = 1e-8  # eV, eV/Å, eV (virial)
CUTOFF = 3.0  # Å: the 12 nearest neighbours in fcc Cu
ELEMENTS = ["H", "C", "O", "Cu"]
MODELS = {
    "egnn-3": ("egnn", "none", {"features": 8, "num_layers": 3, "angular_channels": 2}),
    "tfn-3": ("tfn", "none", {"features": 4, "num_layers": 3, "l_max": 1}),
    "egnn-1+unimol-1": (
        "egnn",
        "unimol",
        {"features": 8, "num_layers": 1, "encoder_num_layers": 1, "encoder_pair_features": 4},
    ),
    "egnn-1": ("egnn", "none", {"features": 8, "num_layers": 1}),
}


def model_named(name: str, seed: int = 1):
    potential, encoder, hyper = MODELS[name]
    torch.manual_seed(seed)
    model = build_model(potential, encoder, elements=ELEMENTS, cutoff=CUTOFF, **hyper)
    return randomise(model.double(), seed).eval()


def copper():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    atoms.rattle(0.15, seed=2)
    return atoms


def ethanol():
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=1)
    return atoms


def reference(model, atoms):
    """Energy, per-atom energies, forces and virial (eV) of MLFFCalculator in float64."""
    calculator = MLFFCalculator(model, device="cpu", dtype="float64")
    atoms = atoms.copy()
    atoms.calc = calculator
    forces = atoms.get_forces()
    if np.any(atoms.pbc):
        virial = -atoms.get_stress(voigt=False) * atoms.get_volume()
    else:  # a finite system: W = sum_i x_i ⊗ F_i
        virial = atoms.get_positions().T @ forces
    return atoms.get_potential_energy(), atoms.get_potential_energies(), forces, virial


def run_domains(adapter, atoms, shell, n_domains, ghost_lists=True):
    """Sum of the domains' energies, per-atom energies, forces folded onto owners, virial."""
    energy, virial = 0.0, np.zeros((3, 3))
    energies, forces = np.zeros(len(atoms)), np.zeros((len(atoms), 3))
    parts = domains(atoms, adapter.element_types, CUTOFF, shell, n_domains, ghost_lists)
    for part in parts:
        data = part.data
        adapter.compute_forces(data)
        assert data.eatoms.shape == (data.nlistatoms,) and data.eatoms.dtype == np.float64
        assert data.energy == pytest.approx(data.eatoms.sum(), abs=1e-12)
        energy += data.energy
        energies[part.owner[: data.nlocal]] += data.eatoms
        np.add.at(forces, part.owner, data.f)  # ghosts' forces go back to their owners
        virial += data.virial
    return energy, energies, forces, virial, parts


def assert_matches(result, expected, tolerance=TOLERANCE):
    for got, want, what in zip(
        result, expected, ("energy", "energies", "forces", "virial"), strict=True
    ):
        error = np.max(np.abs(np.asarray(got) - np.asarray(want)))
        assert error < tolerance, f"{what}: max error {error:.3g}"


@pytest.mark.parametrize("name", ["egnn-3", "tfn-3", "egnn-1+unimol-1"])
@pytest.mark.parametrize("structure", ["copper", "ethanol"])
@pytest.mark.parametrize("n_domains", [1, 2])
def test_domains_equal_the_calculator(name, structure, n_domains):
    model = model_named(name)
    atoms = copper() if structure == "copper" else ethanol()
    adapter = MLIAPAdapter(model)
    shell = adapter.settings.ghost_shell + 0.5  # the skin
    energy, energies, forces, virial, parts = run_domains(adapter, atoms, shell, n_domains)
    expected = reference(model, atoms)
    assert np.abs(expected[2]).max() > 0.05  # forces that a wrong fold could not hide in
    assert_matches((energy, energies, forces, virial), expected)
    if structure == "copper":  # the ghosts carry forces: folding them back matters
        assert max(np.abs(p.data.f[p.data.nlocal :]).max() for p in parts) > 0.01


@pytest.mark.parametrize("name", ["egnn-3", "tfn-3"])
def test_a_ghost_shell_one_cutoff_thinner_is_wrong(name):
    """The test above can fail: with (depth - 1) x cutoff of ghosts the halves are not exact."""
    model = model_named(name)
    adapter = MLIAPAdapter(model)
    assert adapter.settings.depth == 3
    shell = (adapter.settings.depth - 1) * CUTOFF + 0.1
    energy, *_ = run_domains(adapter, copper(), shell, n_domains=2)
    assert abs(energy - reference(model, copper())[0]) > 1e-6


def test_one_layer_needs_no_ghost_neighbour_lists():
    model = model_named("egnn-1")
    adapter = MLIAPAdapter(model)
    assert adapter.settings.depth == 1
    result = run_domains(adapter, copper(), CUTOFF + 0.5, n_domains=2, ghost_lists=False)
    assert_matches(result[:4], reference(model, copper()))


def test_several_layers_without_ghost_neighbour_lists_is_refused():
    adapter = MLIAPAdapter(model_named("egnn-3"))
    part = domains(copper(), adapter.element_types, CUTOFF, 9.5, 2, ghost_lists=False)[0]
    with pytest.raises(LAMMPSError, match=r"ghost atoms lack neighbour lists.*unified FILE 1"):
        adapter.compute_forces(part.data)


def test_depth_counts_every_message_passing_layer():
    assert message_passing_depth(model_named("egnn-3")) == 3
    assert message_passing_depth(model_named("tfn-3")) == 3
    # the encoder's density channel, its attention layer, and the EGNN layer
    assert message_passing_depth(model_named("egnn-1+unimol-1")) == 3


def test_element_map_maps_lammps_types_to_model_species():
    """A Cu-only LAMMPS run of a four-element model: LAMMPS element 0 is the model's Cu."""
    model = model_named("egnn-3")
    adapter = MLIAPAdapter(model, settings_for(model, ["Cu"]))
    assert adapter.element_types == ["Cu"]
    result = run_domains(adapter, copper(), adapter.settings.ghost_shell + 0.5, 1)
    assert_matches(result[:4], reference(model, copper()))


def test_what_lammps_reads_from_the_object():
    adapter = MLIAPAdapter(model_named("tfn-3"), settings_for(model_named("tfn-3"), ["Cu", "H"]))
    assert adapter.rcutfac == CUTOFF / 2  # LAMMPS's pair cutoff is 2 x rcutfac
    assert adapter.element_types == ["Cu", "H"]
    assert (adapter.ndescriptors, adapter.nparams) == (1, 1)
    assert adapter.compute_descriptors(None) is None and adapter.compute_gradients(None) is None


def test_lammps_element_outside_the_map_is_refused():
    adapter = MLIAPAdapter(model_named("egnn-1"), settings_for(model_named("egnn-1"), ["Cu"]))
    data = domains(copper(), ["Cu"], CUTOFF, 3.5)[0].data
    data.elems[5] = 1
    with pytest.raises(LAMMPSError, match="outside the element map"):
        adapter.compute_forces(data)
    data.elems[5] = -1
    with pytest.raises(LAMMPSError, match="mapped to NULL"):
        adapter.compute_forces(data)


def test_pairs_beyond_the_cutoff_are_ignored():
    """LAMMPS with a longer pair cutoff than the model's: the extra pairs change nothing."""
    model = model_named("egnn-3")
    adapter = MLIAPAdapter(model)
    longer = domains(copper(), adapter.element_types, CUTOFF + 0.8, 9.5)[0].data
    exact = domains(copper(), adapter.element_types, CUTOFF, 9.5)[0].data
    assert longer.npairs > exact.npairs
    adapter.compute_forces(longer)
    adapter.compute_forces(exact)
    assert longer.energy == pytest.approx(exact.energy, abs=1e-10)
    assert np.abs(longer.f[: longer.nlocal] - exact.f[: exact.nlocal]).max() < 1e-10


def test_a_rank_without_pairs():
    """Isolated atoms: their energies, and no call of update_pair_forces with nothing."""
    model = model_named("egnn-3")
    adapter = MLIAPAdapter(model)
    atoms = molecule("H2O")
    atoms.positions *= 4.0  # every distance beyond the cutoff
    data = domains(atoms, adapter.element_types, CUTOFF, 9.5)[0].data
    assert data.npairs == 0
    adapter.compute_forces(data)
    assert data.energy == pytest.approx(reference(model, atoms)[0], abs=TOLERANCE)


def test_a_rank_without_atoms():
    adapter = MLIAPAdapter(model_named("egnn-3"))
    data = StandInData(0, [], [], [], np.zeros((0, 3)))
    data.elems = None  # LAMMPS's NULL arrays
    adapter.compute_forces(data)
    assert data.energy == 0.0

"""``mlff check``: a model's symmetry on one structure — rotations, a reflection, translations and
permutations of the atoms — with the errors and the tolerance of the dtype it runs in."""

from __future__ import annotations

import click
from mlff.workflows.common import (
    check_elements,
    cli_errors,
    emit_json,
    load_calculator,
    read_structures,
    set_threads,
)


def _energy_forces(calculator, atoms):
    """(energy eV, forces (n, 3) eV/Å) of ``atoms`` through the calculator."""
    work = atoms.copy()
    work.calc = calculator
    return float(work.get_potential_energy()), work.get_forces().copy()


# below this largest force (eV/Å) a structure sits at a symmetric point: its forces vanish by
# symmetry, relative force errors are round-off over round-off, and the check rattles a copy
SYMMETRIC_FORCE_EV_A = 1e-3
AUTO_RATTLE_A = 0.05


def _result(name, energy_error, force_error, force_tolerance, energy_tolerance) -> dict:
    return {
        "test": name,
        "energy_error_per_atom": float(energy_error),
        "force_error": float(force_error),
        "energy_tolerance": float(energy_tolerance),
        "force_tolerance": float(force_tolerance),
        "passed": bool(energy_error <= energy_tolerance and force_error <= force_tolerance),
    }


def symmetry_tests(
    calculator,
    atoms,
    rotations: int = 3,
    translations: int = 2,
    permutations: int = 2,
    seed: int | None = 0,
    force_tolerance=None,
    energy_tolerance=None,
) -> list[dict]:
    """Run the tests on ``atoms``; each compares the model at a transformed copy with the
    transformed reference: ``force_error = max|F' - T F| / max|F|`` and the energy change per atom.
    """
    import numpy as np

    from mlff.covariance import check_covariance, default_tolerances

    rng = np.random.default_rng(seed)
    default_force, default_energy = default_tolerances(calculator.dtype)
    force_tol = default_force if force_tolerance is None else force_tolerance
    energy_tol = default_energy if energy_tolerance is None else energy_tolerance
    energy, forces = _energy_forces(calculator, atoms)
    scale = max(float(np.abs(forces).max()), 1e-12)
    n = len(atoms)
    results = []
    for k in range(rotations + 1):
        reflection = k == rotations
        check = check_covariance(
            calculator.model,
            atoms,
            rng=rng,
            reflection=reflection,
            force_tolerance=force_tol,
            energy_tolerance=energy_tol,
            reference=(energy, forces),
        )
        name = "reflection (rotation x inversion)" if reflection else f"rotation {k + 1}"
        results.append(
            _result(name, check.energy_error_per_atom, check.force_error, force_tol, energy_tol)
        )
    for k in range(translations):
        moved = atoms.copy()
        moved.positions += rng.uniform(-5.0, 5.0, size=3)
        if all(atoms.pbc):
            moved.wrap()
        e, f = _energy_forces(calculator, moved)
        label = f"translation {k + 1}" + (" (wrapped)" if all(atoms.pbc) else "")
        results.append(
            _result(
                label, abs(e - energy) / n, np.abs(f - forces).max() / scale, force_tol, energy_tol
            )
        )
    for k in range(permutations):
        order = rng.permutation(n)
        shuffled = atoms[order]
        e, f = _energy_forces(calculator, shuffled)
        results.append(
            _result(
                f"permutation {k + 1}",
                abs(e - energy) / n,
                np.abs(f - forces[order]).max() / scale,
                force_tol,
                energy_tol,
            )
        )
    return results


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("structure", type=click.Path(dir_okay=False))
@click.option("--index", default="-1", show_default=True, help="Frame of STRUCTURE (last).")
@click.option("--rotations", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--rattle",
    type=click.FloatRange(min=0),
    default=None,
    help=f"Displace atoms randomly by this much (Å) first [default: {AUTO_RATTLE_A} Å when the "
    "forces vanish by symmetry, else 0].",
)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option(
    "--dtype", type=click.Choice(["float64", "float32"]), default="float64", show_default=True
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@cli_errors
def check(model, structure, index, rotations, seed, rattle, device, dtype, as_json) -> None:
    """Check MODEL's rotation/reflection/translation/permutation covariance on STRUCTURE.

    Exits with status 1 when a test exceeds the tolerance of the dtype. A structure whose forces
    vanish by symmetry (a perfect crystal) is rattled first, since relative force errors mean
    nothing there.
    """
    import numpy as np

    from mlff.graph import check_structure

    atoms = read_structures(structure, index)[-1]
    where = f"{structure}, frame {index}"
    check_structure(atoms, where)
    atoms.calc = None
    set_threads(None, len(atoms))
    calculator = load_calculator(model, device=device, dtype=dtype)
    check_elements(atoms, calculator, where)
    notes = []
    if rattle is None:
        _, forces = _energy_forces(calculator, atoms)
        largest = float(np.linalg.norm(forces, axis=1).max())
        rattle = AUTO_RATTLE_A if largest < SYMMETRIC_FORCE_EV_A else 0.0
        if rattle:
            notes.append(
                f"forces vanish by symmetry (max |F| = {largest:.1e} eV/Å): "
                f"atoms rattled by {rattle} Å (seed {seed})"
            )
    elif rattle:
        notes.append(f"atoms rattled by {rattle} Å (seed {seed})")
    if rattle:
        atoms.rattle(rattle, seed=seed)
    results = symmetry_tests(calculator, atoms, rotations=rotations, seed=seed)
    failed = [r for r in results if not r["passed"]]
    lines = [
        *notes,
        f"{'test':<36} {'dE (eV/atom)':>12} {'tol':>7} {'dF (rel)':>10} {'tol':>7}  ok",
    ]
    for r in results:
        lines.append(
            f"{r['test']:<36} {r['energy_error_per_atom']:>12.2e} {r['energy_tolerance']:>7.0e} "
            f"{r['force_error']:>10.2e} {r['force_tolerance']:>7.0e}  "
            f"{'yes' if r['passed'] else 'FAIL'}"
        )
    for line in lines:
        click.echo(line, err=as_json)
    if as_json:
        emit_json(
            {
                "model": str(model),
                "structure": str(structure),
                "n_atoms": len(atoms),
                "rattle_a": rattle,
                "dtype": dtype,
                "device": str(calculator.device),
                "tests": results,
                "passed": not failed,
            }
        )
    if failed:
        names = ", ".join(r["test"] for r in failed)
        raise click.ClickException(
            f"{len(failed)} of {len(results)} symmetry tests failed for {model} on {structure} "
            f"({dtype}): {names}"
        )

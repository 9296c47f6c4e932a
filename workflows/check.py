"""``mlff check``: a model's symmetry on one structure — rotations, a reflection, translations and
permutations of the atoms, and for periodic cells the stress — measured by the shared checks of
:mod:`mlff.testing` and held to the tolerances of :mod:`mlff.covariance` for the model's dtype."""

from __future__ import annotations

import click
from mlff.workflows.common import (
    cli_errors,
    emit_json,
    load_calculator,
    read_checked,
    runtime_options,
)

# below this largest force (eV/Å) a structure sits at a symmetric point: its forces vanish by
# symmetry, so comparing them cannot reveal an orientation error, and the check rattles a copy
SYMMETRIC_FORCE_EV_A = 1e-3
AUTO_RATTLE_A = 0.05


def _result(name: str, errors, reference, force_tolerance: float, energy_tolerance: float) -> dict:
    """One test as reported: errors relative as in :mod:`mlff.covariance`, tolerances, verdict."""
    from mlff.covariance import relative_force_error, relative_stress_error

    force_error = relative_force_error(errors.forces, reference.forces)
    stress_error = None
    if reference.stress is not None:
        stress_error = relative_stress_error(errors.stress, reference.stress)
    passed = (
        errors.energy <= energy_tolerance
        and force_error <= force_tolerance
        and (stress_error is None or stress_error <= force_tolerance)
    )
    return {
        "test": name,
        "energy_error_per_atom": float(errors.energy),
        "force_error": float(force_error),
        "stress_error": stress_error,
        "energy_tolerance": float(energy_tolerance),
        "force_tolerance": float(force_tolerance),
        "stress_tolerance": None if stress_error is None else float(force_tolerance),
        "passed": bool(passed),
    }


def symmetry_tests(
    model,
    atoms,
    rotations: int = 3,
    translations: int = 2,
    permutations: int = 2,
    seed: int | None = 0,
    force_tolerance: float | None = None,
    energy_tolerance: float | None = None,
    reference=None,
) -> list[dict]:
    """Run :func:`mlff.testing.symmetry_errors` for random transforms of ``atoms``.

    ``model``: a :class:`~mlff.model.ForceField`; ``reference``: its
    :class:`~mlff.testing.Prediction` at ``atoms`` when already known. Errors: energy change per
    atom (eV/atom); force (and stress) error relative to the largest reference component, floored
    as in :func:`mlff.covariance.relative_force_error`. Tolerances default to the dtype's.
    """
    import numpy as np

    from mlff.covariance import default_tolerances, random_rotation
    from mlff.testing import predict, symmetry_errors

    rng = np.random.default_rng(seed)
    default_force, default_energy = default_tolerances(model.dtype)
    force_tol = default_force if force_tolerance is None else float(force_tolerance)
    energy_tol = default_energy if energy_tolerance is None else float(energy_tolerance)
    reference = reference or predict(model, atoms)
    periodic = bool(np.any(atoms.pbc))
    transforms = []
    for k in range(rotations + 1):
        reflection = k == rotations
        name = "reflection (rotation x inversion)" if reflection else f"rotation {k + 1}"
        transforms.append((name, {"rotation": random_rotation(rng, reflection)}))
    for k in range(translations):
        name = f"translation {k + 1}" + (" (wrapped)" if periodic else "")
        transforms.append((name, {"translation": rng.uniform(-5.0, 5.0, size=3), "wrap": True}))
    for k in range(permutations):
        transforms.append((f"permutation {k + 1}", {"permutation": rng.permutation(len(atoms))}))
    return [
        _result(
            name,
            symmetry_errors(model, atoms, reference=reference, **transform),
            reference,
            force_tol,
            energy_tol,
        )
        for name, transform in transforms
    ]


def _table(results: list[dict]) -> list[str]:
    stress = any(r["stress_error"] is not None for r in results)
    header = f"{'test':<36} {'dE (eV/atom)':>12} {'tol':>7} {'dF (rel)':>10} {'tol':>7}"
    lines = [header + (f" {'dS (rel)':>10}" if stress else "") + "  ok"]
    for r in results:
        line = (
            f"{r['test']:<36} {r['energy_error_per_atom']:>12.2e} {r['energy_tolerance']:>7.0e} "
            f"{r['force_error']:>10.2e} {r['force_tolerance']:>7.0e}"
        )
        if stress:
            line += f" {r['stress_error']:>10.2e}" if r["stress_error"] is not None else " " * 11
        lines.append(line + f"  {'yes' if r['passed'] else 'FAIL'}")
    return lines


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
@runtime_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@cli_errors
def check(
    model, structure, index, rotations, seed, rattle, device, dtype, threads, compile_mode, as_json
) -> None:
    """Check MODEL's rotation/reflection/translation/permutation covariance on STRUCTURE.

    Force (and, for periodic cells, stress) errors are relative to the largest reference
    component, at least 0.01 eV/Å (1e-4 eV/Å³); energy errors are per atom. Exits with status 1
    when a test exceeds the tolerance of the dtype. A structure whose forces vanish by symmetry
    (a perfect crystal) is rattled first unless --rattle is given: it could not reveal an error.
    """
    import numpy as np

    from mlff.testing import predict

    structures = read_checked(structure, index)[-1:]
    atoms = structures[0][1]
    calculator = load_calculator(
        model, structures, device=device, dtype=dtype, threads=threads, compile=compile_mode
    )
    notes = []
    reference = predict(calculator.model, atoms)
    if rattle is None:
        largest = float(np.linalg.norm(reference.forces, axis=1).max())
        rattle = AUTO_RATTLE_A if largest < SYMMETRIC_FORCE_EV_A else 0.0
        if rattle:
            notes.append(
                f"forces vanish (max |F| = {largest:.1e} < {SYMMETRIC_FORCE_EV_A:g} eV/Å), as at "
                f"a symmetric point: atoms rattled by {rattle} Å (seed {seed})"
            )
    elif rattle:
        notes.append(f"atoms rattled by {rattle} Å (seed {seed})")
    if rattle:
        atoms.rattle(rattle, seed=seed)
        reference = predict(calculator.model, atoms)
    results = symmetry_tests(
        calculator.model, atoms, rotations=rotations, seed=seed, reference=reference
    )
    failed = [r for r in results if not r["passed"]]
    for line in [*notes, *_table(results)]:
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

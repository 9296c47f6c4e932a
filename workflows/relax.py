"""``mlff relax``: relax many structures (positions, optionally the cell) and report each one."""

from __future__ import annotations

from pathlib import Path

import click
from mlff.workflows.common import (
    cli_errors,
    emit_json,
    finite,
    load_calculator,
    read_checked,
    runtime_options,
    write_structures,
)

OPTIMIZERS = ("fire", "bfgs", "lbfgs")


def _table(results) -> list[str]:
    header = (
        f"{'structure':<28} {'atoms':>5} {'E0 (eV)':>13} {'E (eV)':>13} {'fmax':>9} "
        f"{'steps':>5} {'conv':>4} {'dV (%)':>7}  space group"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        dv = "" if r.volume_change_percent is None else f"{r.volume_change_percent:+.2f}"
        groups = ""
        if r.initial_spacegroup is not None or r.spacegroup is not None:
            groups = f"{r.initial_spacegroup or '?'} -> {r.spacegroup or '?'}"
        label = r.label if len(r.label) <= 28 else "…" + r.label[-27:]
        lines.append(
            f"{label:<28} {r.n_atoms:>5} {r.initial_energy:>13.5f} {r.energy:>13.5f} "
            f"{r.fmax:>9.2e} {r.steps:>5} {'yes' if r.converged else 'NO':>4} {dv:>7}  {groups}"
        )
    return lines


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("structures", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--index", default=":", show_default=True, help="Frames of each file (ASE index).")
@click.option(
    "--fmax",
    type=click.FloatRange(min=0, min_open=True),
    default=0.01,
    show_default=True,
    callback=finite,
    help="Force convergence target in eV/Å.",
)
@click.option(
    "--optimizer",
    type=click.Choice(OPTIMIZERS, case_sensitive=False),
    default="fire",
    show_default=True,
)
@click.option(
    "--cell/--fixed-cell",
    default=False,
    show_default=True,
    help="Relax the cell too (FrechetCellFilter; periodic structures).",
)
@click.option("--max-steps", type=click.IntRange(min=1), default=500, show_default=True)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write relaxed structures; format from the extension (.extxyz, .cif, POSCAR).",
)
@click.option(
    "--keep-unconverged",
    is_flag=True,
    help="Also write unconverged structures to --out (extxyz marks them relaxed=False).",
)
@click.option(
    "--symprec",
    type=click.FloatRange(min=0, min_open=True),
    default=0.01,
    show_default=True,
    help="Space-group tolerance in Å.",
)
@click.option(
    "--engine",
    type=click.Choice(["auto", "ase", "batched"]),
    default="auto",
    show_default=True,
    help="ase: one structure at a time through ASE's optimisers. batched: FIRE on many "
    "structures at once on the device, refilled as they converge. auto: batched on a GPU "
    "(with FIRE), else ase.",
)
@click.option(
    "--max-atoms-per-batch",
    type=click.IntRange(min=1),
    default=4096,
    show_default=True,
    help="Most atoms relaxed at once by the batched engine.",
)
@runtime_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@cli_errors
def relax(
    model,
    structures,
    index,
    fmax,
    optimizer,
    cell,
    max_steps,
    out,
    keep_unconverged,
    symprec,
    engine,
    max_atoms_per_batch,
    device,
    dtype,
    threads,
    compile_mode,
    as_json,
) -> None:
    """Relax every structure in STRUCTURES (multi-frame files, CIF, POSCAR...) with MODEL.

    Structures that do not reach --fmax within --max-steps are reported as not converged and are
    left out of --out unless --keep-unconverged is given.
    """
    from mlff.relaxation import relax as relax_one

    checked, inputs = [], []  # (file and frame, atoms); (label in reports, atoms)
    for path in structures:
        frames = read_checked(path, index)
        checked += frames
        for k, (where, atoms) in enumerate(frames):
            if cell and not all(atoms.pbc):
                raise click.BadParameter(
                    f"{where} is not periodic in all three directions; relax it without --cell",
                    param_hint="'--cell'",
                )
            inputs.append((path if len(frames) == 1 else f"{path}[{k}]", atoms))
    if out is not None:
        _check_output(Path(out), len(inputs))
    calculator = load_calculator(
        model, checked, device=device, dtype=dtype, threads=threads, compile=compile_mode
    )

    engine = _choose_engine(engine, optimizer.lower(), calculator.device)
    if engine == "batched":
        results = _relax_batched(calculator.model, inputs, fmax, max_steps, cell, symprec,
                                 max_atoms_per_batch)  # fmt: skip
    else:
        results = []
        for label, atoms in inputs:
            atoms.calc = None
            results.append(
                relax_one(
                    atoms,
                    calculator,
                    fmax=fmax,
                    optimizer=optimizer.lower(),
                    cell=cell,
                    max_steps=max_steps,
                    label=label,
                    symprec=symprec,
                )
            )
    unconverged = [r for r in results if not r.converged]
    written = 0
    if out is not None:
        keep = [r for r in results if r.converged or keep_unconverged]
        if keep:
            frames = []
            for r in keep:
                r.atoms.info["label"] = r.label
                frames.append(r.atoms)
            write_structures(out, frames)
            written = len(frames)

    lines = _table(results)
    lines.append(
        f"{len(results) - len(unconverged)} of {len(results)} converged to fmax < {fmax} eV/Å "
        f"({optimizer.lower()}, {'cell relaxed' if cell else 'fixed cell'})"
    )
    if out is not None:
        lines.append(f"wrote {written} structure(s) to {out}")
    for r in unconverged:
        note = " (written, marked relaxed=False)" if out and keep_unconverged else ""
        lines.append(f"NOT CONVERGED: {r.label}: fmax {r.fmax:.3g} after {r.steps} steps{note}")
    for line in lines:
        click.echo(line, err=as_json)
    if as_json:
        emit_json(
            {
                "structures": [r.as_dict() for r in results],
                "fmax_target": fmax,
                "optimizer": optimizer.lower(),
                "cell": cell,
                "converged": len(results) - len(unconverged),
                "total": len(results),
                "out": out,
                "written": written,
            }
        )


def _choose_engine(engine: str, optimizer: str, device) -> str:
    """Resolve ``--engine auto``; the batched engine runs FIRE only."""
    if engine == "auto":
        engine = "batched" if device.type == "cuda" and optimizer == "fire" else "ase"
    if engine == "batched" and optimizer != "fire":
        raise click.BadParameter(
            f"the batched engine runs FIRE, not {optimizer}", param_hint="'--engine'"
        )
    return engine


def _relax_batched(model, inputs, fmax, max_steps, cell, symprec, max_atoms_per_batch) -> list:
    """Relax ``inputs`` ((label, atoms) pairs) with batched FIRE and a Verlet list per batch."""
    from mlff.md.forces import BatchedModel, ForceFunction
    from mlff.md.neighbours import VerletList
    from mlff.md.relax import relax_many

    def force_fn(batch):
        return ForceFunction(BatchedModel(model, batch.numbers), VerletList(model.cutoff).update)

    return relax_many(
        [atoms for _, atoms in inputs],
        force_fn,
        fmax=fmax,
        max_steps=max_steps,
        max_atoms_per_batch=max_atoms_per_batch,
        cell=cell,
        labels=[label for label, _ in inputs],
        device=model.device,
        symprec=symprec,
    )


def _check_output(path: Path, count: int) -> None:
    """Refuse an output path whose format cannot hold the structures, before any work."""
    from mlff.workflows.common import is_pymatgen_file

    if path.parent and not path.parent.exists():
        raise click.BadParameter(f"folder {path.parent} does not exist", param_hint="'--out'")
    if is_pymatgen_file(path) and path.suffix.lower() not in {".cif", ".mcif"} and count > 1:
        raise click.BadParameter(
            f"{path}: POSCAR holds one structure, got {count}", param_hint="'--out'"
        )

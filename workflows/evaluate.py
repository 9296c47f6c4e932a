"""``mlff eval MODEL DATA``: energy, force and stress errors of a model on labelled data."""

from __future__ import annotations

import click
from mlff.workflows.common import cli_errors, compile_option, emit_json

JSON_KEYS = (
    "energy_mae_mev_per_atom",
    "energy_rmse_mev_per_atom",
    "forces_mae_mev_per_a",
    "forces_rmse_mev_per_a",
    "stress_mae_mev_per_a3",
    "n_structures",
    "n_atoms",
)


@click.command("eval", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.argument("data", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option("--parity", type=click.Path(dir_okay=False), help="Write a parity plot (PNG).")
@click.option("--energy-key", help="Key of the energies (default: detect).")
@click.option("--forces-key", help="Key of the forces (default: detect).")
@click.option("--stress-key", help="Key of the stress or virial (default: detect).")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Structures per batch.",
)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option(
    "--dtype",
    type=click.Choice(["model", "float32", "float64"]),
    default="model",
    show_default=True,
    help="Precision (model: the one it was saved in).",
)
@click.option(
    "--threads",
    default=0,
    show_default=True,
    help="CPU threads (0: one on CPU, the fastest for molecular graphs).",
)
@compile_option
@cli_errors
def evaluate(
    model_path,
    data,
    as_json,
    parity,
    energy_key,
    forces_key,
    stress_key,
    batch_size,
    device,
    dtype,
    threads,
    compile_mode,
) -> None:
    """Report the errors of MODEL on labelled DATA files (any ASE-readable format).

    Energy MAE/RMSE in meV/atom, force MAE/RMSE in meV/Å (over components), stress MAE in
    meV/Å³ when the data hold stress.
    """
    import torch

    from mlff.data import LabelKeys, read_labelled
    from mlff.errors import DataError
    from mlff.files import load_model
    from mlff.runtime import resolve_device, set_threads
    from mlff.training.dataset import GraphSet
    from mlff.training.evaluation import evaluate_set

    device = resolve_device(device)
    set_threads(threads, device)
    model = load_model(model_path, device=device)
    if dtype != "model":
        model = model.to(getattr(torch, dtype))
    if compile_mode != "none":
        from mlff.compiled import compile_model

        model.eval().requires_grad_(False)
        compile_model(model, compile_mode)
    frames = read_labelled(data, LabelKeys(energy_key, forces_key, stress_key))
    known = set(model.elements)
    for frame in frames:
        unknown = sorted(set(frame.atoms.get_chemical_symbols()) - known)
        if unknown:
            raise DataError(
                f"{frame.where}: element(s) {', '.join(unknown)} not known to the model "
                f"(built for {', '.join(model.elements)})"
            )
    errors = evaluate_set(model, GraphSet(frames, model.cutoff), batch_size, keep=bool(parity))
    figures = errors.figures()
    report = {key: figures.get(key) for key in JSON_KEYS[:5]}
    report["n_structures"] = errors.n_structures
    report["n_atoms"] = errors.n_atoms
    if parity:
        from mlff.training.plots import plot_parity

        plot_parity(errors, parity, "eval")
    if as_json:
        emit_json(report)
        return
    click.echo(f"{model_path}: {report['n_structures']} structures, {report['n_atoms']} atoms")
    click.echo(
        f"energy  MAE {report['energy_mae_mev_per_atom']:9.3f} meV/atom  "
        f"RMSE {report['energy_rmse_mev_per_atom']:9.3f} meV/atom"
    )
    if report["forces_mae_mev_per_a"] is not None:
        click.echo(
            f"forces  MAE {report['forces_mae_mev_per_a']:9.3f} meV/Å     "
            f"RMSE {report['forces_rmse_mev_per_a']:9.3f} meV/Å"
        )
    if report["stress_mae_mev_per_a3"] is not None:
        click.echo(f"stress  MAE {report['stress_mae_mev_per_a3']:9.4f} meV/Å³")
    if parity:
        click.echo(f"parity plot: {parity}")

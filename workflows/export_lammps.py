"""``mlff export-lammps``: write a model for LAMMPS's ``pair_style mliap unified``."""

from __future__ import annotations

import re

import click
from mlff.workflows.common import cli_errors, finite


def _symbols(values: tuple[str, ...]) -> list[str]:
    """``--elements Cu --elements Au``, ``--elements Cu,Au`` and ``--elements "Cu Au"`` alike."""
    return [symbol for value in values for symbol in re.split(r"[,\s]+", value) if symbol]


@click.command("export-lammps")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="File to write (e.g. model.mliap.pt); written whole or not at all.",
)
@click.option(
    "--elements",
    multiple=True,
    help="Element of each LAMMPS atom type, type 1 first (repeat, or 'Cu,Au') "
    "[default: the model's elements].",
)
@click.option(
    "--skin",
    type=click.FloatRange(min=0.0),
    default=2.0,
    show_default=True,
    callback=finite,
    help="Neighbour skin of the LAMMPS run (Å), for the comm_modify cutoff printed.",
)
@cli_errors
def export_lammps(model: str, output: str, elements: tuple[str, ...], skin: float) -> None:
    """Write MODEL for LAMMPS (ML-IAP unified) and print the input lines LAMMPS needs.

    The file holds plain tensors (read with weights_only=True): hand it to LAMMPS from Python
    with mlff.lammps.register (inside an input script) or python -m mlff.lammps.driver.
    """
    from mlff.lammps.files import export_lammps as write

    settings = write(model, output, _symbols(elements) or None)
    click.echo(f"wrote {output}")
    click.echo(settings.describe(skin=skin))
    click.echo("load it from the input script, before pair_style:")
    click.echo(f"  python source here \"from mlff.lammps import register; register('{output}')\"")
    click.echo(f"or run: mpirun -np N python -m mlff.lammps.driver {output} in.lammps")

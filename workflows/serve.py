"""``mlff serve``: answer a running i-PI's force requests with a model (see :mod:`mlff.ipi`)."""

from __future__ import annotations

import sys

import click
from mlff.workflows.common import (
    SIGNAL_EXIT_CODES,
    cli_errors,
    emit_json,
    load_calculator,
    read_checked,
    runtime_options,
)


def _address(ipi: str | None, unix: str | None, sockets_prefix: str):
    from mlff.ipi import IPIAddress

    if (ipi is None) == (unix is None):
        raise click.UsageError("give exactly one of --ipi HOST:PORT and --unix NAME")
    try:
        return IPIAddress.inet(ipi) if ipi is not None else IPIAddress.unix(unix, sockets_prefix)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="'--ipi'" if ipi else "'--unix'") from None


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("structure", type=click.Path(dir_okay=False))
@click.option("--index", default="0", show_default=True, help="Frame of STRUCTURE (ASE index).")
@click.option("--ipi", metavar="HOST:PORT", help="i-PI's inet socket (<ffsocket mode='inet'>).")
@click.option("--unix", metavar="NAME", help="i-PI's unix socket <address> (mode='unix').")
@click.option(
    "--sockets-prefix",
    default="/tmp/ipi_",
    show_default=True,
    help="Where i-PI puts unix sockets: the socket of --unix NAME is PREFIX + NAME "
    "(i-PI's <simulation sockets_prefix> or i-pi -S).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Seconds to wait for i-PI to come up, retrying; 0 tries once.",
)
@runtime_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout at the end.")
@cli_errors
def serve(
    model,
    structure,
    index,
    ipi,
    unix,
    sockets_prefix,
    timeout,
    device,
    dtype,
    threads,
    compile_mode,
    as_json,
) -> None:
    """Answer i-PI's energy/force/virial requests with MODEL until i-PI ends the run.

    i-PI sends positions and the cell only: STRUCTURE gives the elements (the same atoms in the
    same order as i-PI's initial configuration) and the periodicity; the virial is sent for
    periodic structures. Start i-PI first (or within --timeout), then this command; one i-PI
    can serve several of them (one per bead or replica at a time).
    """
    from mlff.ipi import serve as serve_ipi

    address = _address(ipi, unix, sockets_prefix)
    structures = read_checked(structure, index)[:1]
    atoms = structures[0][1]
    calculator = load_calculator(
        model, structures, device=device, dtype=dtype, threads=threads, compile=compile_mode
    )
    click.echo(f"serving {model} ({len(atoms)} atoms, {dtype}) to i-PI at {address}", err=True)
    answered = [0]  # force calls so far, for the message on Ctrl-C

    def count(calls: int) -> None:
        answered[0] = calls

    try:
        summary = serve_ipi(atoms, calculator, address, timeout=timeout, on_force_call=count)
    except KeyboardInterrupt:
        click.echo(f"stopped by SIGINT after {answered[0]} force call(s)", err=True)
        sys.exit(SIGNAL_EXIT_CODES["SIGINT"])
    per_call_ms = 1e3 * summary.wall_s / max(summary.force_calls, 1)
    click.echo(
        f"i-PI ended the run: {summary.force_calls} force call(s) answered in "
        f"{summary.wall_s:.1f} s ({per_call_ms:.1f} ms per call)",
        err=as_json,
    )
    if as_json:
        emit_json(
            {
                "model": str(model),
                "structure": str(structure),
                "address": summary.address,
                "n_atoms": summary.n_atoms,
                "force_calls": summary.force_calls,
                "wall_s": summary.wall_s,
                "dtype": dtype,
                "device": str(calculator.device),
            }
        )

"""The ``mlff`` click group; each subcommand lives in its own module and only parses options."""

from __future__ import annotations

import click

from mlff._version import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mlff")
def cli() -> None:
    """Equivariant machine-learned force fields: train, evaluate, run MD, relax, check."""


def main() -> None:
    """Console-script entry point."""
    cli()

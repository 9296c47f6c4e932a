"""The ``mlff`` click group. Subcommands live in their own modules and are imported on first use,
so ``mlff --help`` answers without importing torch."""

from __future__ import annotations

import importlib
import os

import click

from mlff._version import __version__

# command name -> "module:attribute" under mlff.workflows
SUBCOMMANDS: dict[str, str] = {
    "train": "train:train",
    "pretrain": "pretrain:pretrain",
    "eval": "evaluate:evaluate",
    "md": "md:md",
    "relax": "relax:relax",
    "check": "check:check",
    "bench": "bench:bench",
    "export-lammps": "export_lammps:export_lammps",
    "serve": "serve:serve",
}

_SHORT_HELP = {
    "train": "Train a model on labelled trajectories.",
    "pretrain": "Pretrain the Uni-Mol encoder on unlabelled structures (for train --init).",
    "eval": "Report energy/force/stress errors of a model on labelled data.",
    "md": "Run molecular dynamics (md run) or analyse a trajectory (md analyze).",
    "relax": "Relax structures (positions, optionally the cell).",
    "check": "Report a model's rotational/reflection/permutation covariance on a structure.",
    "bench": "Measure MD speed and memory of a model on a structure.",
    "export-lammps": "Write a model for LAMMPS (pair_style mliap unified) and its input lines.",
    "serve": "Answer a running i-PI's force requests (path integrals and more) with a model.",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported only when they are run or asked for help."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in SUBCOMMANDS:
            return None
        module_name, attribute = SUBCOMMANDS[name].split(":")
        module = importlib.import_module(f"mlff.workflows.{module_name}")
        return getattr(module, attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, _SHORT_HELP[name]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mlff")
def cli() -> None:
    """Equivariant machine-learned force fields: train, evaluate, run MD, relax, check."""


def main() -> None:
    """Console-script entry point."""
    # numpy/scipy work here is on 3x3 cells; a BLAS thread pool only competes with torch's
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    cli()

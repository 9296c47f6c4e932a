"""``mlff pretrain``: options in, :func:`mlff.pretraining.run_pretraining` does the work."""

from __future__ import annotations

import sys

import click
from mlff.workflows.common import cli_errors
from mlff.workflows.run_options import add_options, dataclass_defaults, resolve_config

_DEFAULTS: dict | None = None


def _default(name: str):
    """The default of a pretraining option, from :class:`mlff.pretraining.config.PretrainConfig`."""
    global _DEFAULTS
    if _DEFAULTS is None:
        from mlff.pretraining.config import PretrainConfig  # no torch: --help stays quick

        _DEFAULTS = dataclass_defaults(PretrainConfig)
    return _DEFAULTS.get(name)


# (option, short name, click arguments); defaults are PretrainConfig's
_SPECS = [
    ("--out", "-o", {"type": click.Path(file_okay=False), "help": "Output directory."}),
    ("--valid-fraction", None, {"type": float, "help": "Fraction held out for validation."}),
    ("--seed", None, {"type": int, "help": "Seed of the split, weights, order and corruption."}),
    ("--cutoff", None, {"type": float, "help": "Neighbour cutoff (Å); --init needs the same."}),
    ("--features", None, {"type": int, "help": "Encoder width (atom features)."}),
    ("--pair-features", None, {"type": int, "help": "Encoder pair features."}),
    ("--num-layers", None, {"type": int, "help": "Encoder layers."}),
    ("--num-heads", None, {"type": int, "help": "Attention heads."}),
    (
        "--model-option",
        None,
        {"multiple": True, "metavar": "KEY=VALUE", "help": "Other encoder arguments."},
    ),
    (
        "--mask-fraction",
        None,
        {"type": float, "help": "Fraction of atoms whose element is hidden, in (0, 1)."},
    ),
    ("--noise", None, {"type": float, "help": "Gaussian noise on positions, sigma (Å) > 0."}),
    ("--atoms-weight", None, {"type": float, "help": "Weight of masked-atom cross-entropy."}),
    ("--coordinates-weight", None, {"type": float, "help": "Weight of coordinate denoising."}),
    ("--distances-weight", None, {"type": float, "help": "Weight of pair-distance recovery."}),
    ("--batch-size", None, {"type": int, "help": "Structures per step."}),
    ("--lr", None, {"type": float, "help": "Peak learning rate (AdamW, cosine schedule)."}),
    ("--weight-decay", None, {"type": float, "help": "AdamW weight decay."}),
    ("--warmup", None, {"type": float, "help": "Warm-up, fraction of the run."}),
    ("--min-lr-ratio", None, {"type": float, "help": "Final / peak learning rate."}),
    ("--clip-grad", None, {"type": float, "help": "Max gradient norm (0: no clipping)."}),
    ("--ema-decay", None, {"type": float, "help": "EMA decay of the weights."}),
    ("--epochs", None, {"type": int, "help": "Maximum epochs."}),
    (
        "--time-limit",
        None,
        {"type": float, "metavar": "MINUTES", "help": "Training time limit, minutes (0: none)."},
    ),
    ("--patience", None, {"type": int, "help": "Stop after this many validations without gain."}),
    ("--device", None, {"type": click.Choice(["auto", "cpu", "cuda"]), "help": "Device."}),
    ("--dtype", None, {"type": click.Choice(["float32", "float64"]), "help": "Precision."}),
    ("--threads", None, {"type": int, "help": "CPU threads (0: every available core)."}),
    ("--eval-batch-size", None, {"type": int, "help": "Structures per validation batch."}),
    (
        "--progress",
        None,
        {"type": click.Choice(["auto", "bar", "lines"]), "help": "Progress bar or lines."},
    ),
]


def _options(function):
    return add_options(function, _SPECS, _default)


@click.command("pretrain", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("data", nargs=-1, type=click.Path(dir_okay=False))
@_options
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="YAML file of options (the command line overrides it).",
)
@click.option(
    "--resume", type=click.Path(file_okay=False), help="Continue the run in this output directory."
)
@click.pass_context
@cli_errors
def pretrain(ctx: click.Context, data, config_file, resume, **options) -> None:
    """Pretrain the Uni-Mol encoder on unlabelled structures DATA (any ASE-readable files;
    labels are ignored): masked-atom prediction and coordinate denoising.

    Writes encoder.pt (for mlff train --encoder unimol --init OUT/encoder.pt), a checkpoint,
    metrics.csv, config.yaml, learning_curves.png and summary.json to --out.
    """
    from mlff.pretraining.config import pretrain_config_from_dict, read_pretrain_config
    from mlff.pretraining.run import pretrain_config_for_resume, run_pretraining

    config = resolve_config(
        ctx, data, config_file, resume, options, read_pretrain_config,
        pretrain_config_from_dict, pretrain_config_for_resume, "structure file(s)",
    )  # fmt: skip
    result = run_pretraining(config, resume=bool(resume))
    click.echo(
        f"stopped ({result.stopped}) after {result.epochs} epochs, {result.steps} steps, "
        f"{result.elapsed_s:.0f} s of training; best epoch {result.best_epoch}"
    )
    if result.valid:
        figures = result.valid
        text = f"valid: loss {figures['loss']:.4g}, coordinates {figures['coordinates_loss']:.4g}"
        if "atoms_accuracy" in figures:
            text += (
                f", masked atoms {figures['atoms_loss']:.4g} "
                f"(accuracy {figures['atoms_accuracy']:.3f})"
            )
        click.echo(text)
    click.echo(f"encoder: {result.out / 'encoder.pt'}")
    if result.stopped in ("SIGINT", "SIGTERM"):
        click.echo(
            f"interrupted ({result.stopped}); continue with: mlff pretrain --resume {result.out}",
            err=True,
        )
        sys.exit(130 if result.stopped == "SIGINT" else 143)
    if result.stopped == "non-finite loss":
        click.echo(
            f"pretraining diverged (the loss became NaN or infinite at step {result.steps}); "
            f"{result.out}/encoder.pt holds the best weights before; try a smaller --lr",
            err=True,
        )
        sys.exit(1)

"""``mlff train``: options in, :func:`mlff.training.run_training` does the work.

On a CPU it starts one process per core itself (``--workers``). Several GPUs (or a launch of
one's own)::

    torchrun --nproc-per-node N -m mlff.workflows.train DATA [options]
"""

from __future__ import annotations

import os
import sys

import click
from mlff.workflows.common import cli_errors
from mlff.workflows.run_options import add_options, dataclass_defaults, resolve_config

_DEFAULTS: dict | None = None


def _default(name: str):
    """The default of a training option, from :class:`mlff.training.config.TrainConfig`."""
    global _DEFAULTS
    if _DEFAULTS is None:
        from mlff.training.config import TrainConfig  # imports no torch: --help stays quick

        _DEFAULTS = dataclass_defaults(TrainConfig)
    return _DEFAULTS.get(name)


def _options(function):
    """Every training option; the defaults shown are TrainConfig's."""
    specs = [
        ("--out", "-o", {"type": click.Path(file_okay=False), "help": "Output directory."}),
        (
            "--valid",
            None,
            {
                "type": click.Path(dir_okay=False),
                "help": "Validation file (instead of a random --valid-fraction of DATA).",
            },
        ),
        (
            "--valid-fraction",
            None,
            {"type": float, "help": "Fraction of DATA held out for validation."},
        ),
        (
            "--test",
            None,
            {
                "type": click.Path(dir_okay=False),
                "help": "Test file, evaluated with the best model at the end.",
            },
        ),
        ("--seed", None, {"type": int, "help": "Seed of the split, the weights and the order."}),
        ("--energy-key", None, {"help": "Key of the energies (default: detect)."}),
        ("--forces-key", None, {"help": "Key of the forces (default: detect)."}),
        ("--stress-key", None, {"help": "Key of the stress or virial (default: detect)."}),
        (
            "--e0",
            None,
            {
                "type": click.Path(dir_okay=False),
                "help": "JSON {symbol: eV} of "
                "reference energies (default: least squares over the training set).",
            },
        ),
        ("--potential", None, {"type": click.Choice(["egnn", "tfn"]), "help": "Potential."}),
        ("--encoder", None, {"type": click.Choice(["none", "unimol"]), "help": "Encoder."}),
        ("--cutoff", None, {"type": float, "help": "Neighbour cutoff (Å)."}),
        (
            "--size",
            None,
            {"type": click.Choice(["small", "medium", "large"]), "help": "Model size preset."},
        ),
        ("--features", None, {"type": int, "help": "Width (overrides the preset)."}),
        ("--num-layers", None, {"type": int, "help": "Depth (overrides the preset)."}),
        (
            "--model-option",
            None,
            {
                "multiple": True,
                "metavar": "KEY=VALUE",
                "help": "Any other model hyperparameter (repeatable).",
            },
        ),
        (
            "--init",
            None,
            {
                "type": click.Path(dir_okay=False),
                "help": "Start from a pretrained Uni-Mol encoder (mlff pretrain's encoder.pt; "
                "needs --encoder unimol, the same elements and cutoff; the encoder's sizes come "
                "from the file).",
            },
        ),
        (
            "--init-mode",
            None,
            {
                "type": click.Choice(["auto", "finetune", "freeze", "low-lr"]),
                "help": "With --init: train every weight (finetune), keep the encoder fixed "
                "(freeze), or train it at --encoder-lr-ratio times the rate (low-lr); auto: "
                "freeze, the best measured.",
            },
        ),
        (
            "--encoder-lr-ratio",
            None,
            {"type": float, "help": "Encoder / peak learning rate under --init-mode low-lr."},
        ),
        (
            "--denoise-weight",
            None,
            {
                "type": float,
                "help": "Weight of the auxiliary denoising loss (0: off; needs --encoder "
                "unimol): noised positions recovered through a coordinate head.",
            },
        ),
        ("--denoise-sigma", None, {"type": float, "help": "Denoising noise (Å)."}),
        ("--energy-weight", None, {"type": float, "help": "Loss weight of energy per atom."}),
        ("--forces-weight", None, {"type": float, "help": "Loss weight of forces."}),
        ("--stress-weight", None, {"type": float, "help": "Loss weight of stress."}),
        ("--loss", None, {"type": click.Choice(["mse", "huber"]), "help": "Loss function."}),
        ("--huber-delta", None, {"type": float, "help": "Huber threshold (eV/atom, eV/Å)."}),
        ("--batch-size", None, {"type": int, "help": "Structures per step."}),
        (
            "--lr",
            None,
            {"type": float, "help": "Peak learning rate (AdamW; Muon matches its update size)."},
        ),
        (
            "--weight-decay",
            None,
            {"type": float, "help": "Decoupled weight decay (AdamW and Muon)."},
        ),
        (
            "--schedule",
            None,
            {"type": click.Choice(["cosine", "plateau"]), "help": "Learning-rate schedule."},
        ),
        ("--warmup", None, {"type": float, "help": "Warm-up, fraction of the run."}),
        ("--min-lr-ratio", None, {"type": float, "help": "Final / peak learning rate."}),
        ("--plateau-patience", None, {"type": int, "help": "Plateau: epochs before a cut."}),
        ("--plateau-factor", None, {"type": float, "help": "Plateau: factor of a cut."}),
        (
            "--optimizer",
            None,
            {
                "type": click.Choice(["auto", "muon", "adamw"]),
                "help": "muon: Muon on the hidden weight matrices, AdamW on the rest; auto: "
                "muon for an EGNN without encoder on molecules, else adamw.",
            },
        ),
        ("--clip-grad", None, {"type": float, "help": "Max gradient norm (0: no clipping)."}),
        ("--ema-decay", None, {"type": float, "help": "EMA decay of the weights."}),
        ("--epochs", None, {"type": int, "help": "Maximum epochs."}),
        (
            "--time-limit",
            None,
            {
                "type": float,
                "metavar": "MINUTES",
                "help": "Training time limit, minutes (0: none); the schedule ends at the limit.",
            },
        ),
        (
            "--patience",
            None,
            {
                "type": int,
                "help": "Stop after this many epochs without validation improvement (0: never).",
            },
        ),
        ("--device", None, {"type": click.Choice(["auto", "cpu", "cuda"]), "help": "Device."}),
        ("--dtype", None, {"type": click.Choice(["float32", "float64"]), "help": "Precision."}),
        (
            "--threads",
            None,
            {
                "type": int,
                "help": "CPU threads per process (0: the available cores shared among the "
                "training processes). Given alone, training runs "
                "in one process with this many threads.",
            },
        ),
        (
            "--workers",
            None,
            {
                "type": int,
                "help": "Training processes on CPU, each on its share of every step's batches "
                "(a step takes workers x batch size frames; 0: one per available core, each "
                "keeping 4 batches per epoch; 1 with --threads or on CUDA; ignored under "
                "torchrun).",
            },
        ),
        ("--eval-batch-size", None, {"type": int, "help": "Structures per evaluation batch."}),
        (
            "--compile",
            None,
            {
                "type": click.Choice(["auto", "none", "inductor"]),
                "help": "inductor: each step's energies, forces and backward as one "
                "torch.compile graph (compiling takes about a minute at the start, seconds with a "
                "warm cache, then steps run about 1.5x faster on a CPU); none: eager; auto: "
                "inductor on a CPU when the time limit is at least 5 minutes.",
            },
        ),
        (
            "--progress",
            None,
            {
                "type": click.Choice(["auto", "bar", "lines"]),
                "help": "Progress bar, or one line per epoch (auto: bar on a terminal).",
            },
        ),
    ]
    return add_options(function, specs, _default)


@click.command("train", context_settings={"help_option_names": ["-h", "--help"]})
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
def train(ctx: click.Context, data, config_file, resume, **options) -> None:
    """Train a model on labelled trajectories DATA (any ASE-readable files).

    Writes model.pt (best EMA weights), checkpoints, metrics.csv, config.yaml and plots to
    --out. Energies, forces and stress are found under the usual keys.
    """
    from mlff.training import run_training
    from mlff.training.config import config_from_dict, read_config
    from mlff.training.outputs import config_for_resume

    config = resolve_config(
        ctx, data, config_file, resume, options, read_config, config_from_dict,
        config_for_resume, "training DATA file(s)",
    )  # fmt: skip
    result = run_training(config, resume=bool(resume))
    if int(os.environ.get("RANK", "0")) != 0:
        return
    _report(result)
    if result.stopped in ("SIGINT", "SIGTERM"):
        click.echo(
            f"interrupted ({result.stopped}); {result.out}/model.pt holds the best weights so "
            f"far; continue with: mlff train --resume {result.out}",
            err=True,
        )
        sys.exit(130 if result.stopped == "SIGINT" else 143)
    if result.stopped == "non-finite loss":
        click.echo(
            f"training diverged (the loss became NaN or infinite at step {result.steps}); "
            f"{result.out}/model.pt holds the best weights before; try a smaller --lr",
            err=True,
        )
        sys.exit(1)


def _report(result) -> None:
    click.echo(
        f"stopped ({result.stopped}) after {result.epochs} epochs, {result.steps} steps, "
        f"{result.elapsed_s:.0f} s of training; best epoch {result.best_epoch}"
    )
    for name, figures in (("valid", result.valid), ("test", result.test)):
        if figures:
            text = (
                f"{name}: energy MAE {figures['energy_mae_mev_per_atom']:.2f} meV/atom "
                f"(RMSE {figures['energy_rmse_mev_per_atom']:.2f})"
            )
            if figures.get("forces_mae_mev_per_a") is not None:
                text += (
                    f", force MAE {figures['forces_mae_mev_per_a']:.2f} meV/Å "
                    f"(RMSE {figures['forces_rmse_mev_per_a']:.2f})"
                )
            if figures.get("stress_mae_mev_per_a3") is not None:
                text += f", stress MAE {figures['stress_mae_mev_per_a3']:.3f} meV/Å³"
            click.echo(text)
    click.echo(f"model: {result.out / 'model.pt'}")


if __name__ == "__main__":  # torchrun --nproc-per-node N -m mlff.workflows.train ...
    train()

"""PNG figures of a run: learning curves and energy/force parity plots (matplotlib, Agg)."""

from __future__ import annotations

import os

import numpy as np

from mlff.training.metrics import ErrorAccumulator, MetricsLog


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curves(log: MetricsLog, path: str | os.PathLike) -> None:
    """Loss, energy MAE, force MAE and learning rate against epoch, train and valid."""
    panels = (
        ("loss", "loss"),
        ("energy MAE (meV/atom)", "energy_mae_mev_per_atom"),
        ("force MAE (meV/Å)", "forces_mae_mev_per_a"),
    )
    plot_curves(log, path, panels, log_scale=True)


def plot_curves(log: MetricsLog, path: str | os.PathLike, panels: tuple, log_scale: bool) -> None:
    """Three panels of ``(title, figure)``, each the ``train_<figure>`` (running) and
    ``valid_<figure>`` (EMA) columns of ``log`` against epoch (a log axis with ``log_scale``),
    and the learning rate in the fourth; written as PNG to ``path``."""
    from mlff.files import atomic_write

    plt = _pyplot()
    epoch = log.column("epoch")
    figure, axes = plt.subplots(2, 2, figsize=(9, 7), constrained_layout=True)
    for axis, (title, name) in zip(axes.flat, panels, strict=False):
        for part, label in (("train", "train (running)"), ("valid", "valid (EMA)")):
            column = f"{part}_{name}"
            values = log.column(column) if log.rows and column in log.rows[0] else np.array([])
            if values.size and np.isfinite(values).any():
                axis.plot(epoch, values, label=label)
        axis.set_title(title)
        axis.set_xlabel("epoch")
        if axis.lines:
            if log_scale:
                axis.set_yscale("log")
            axis.legend()
    axis = axes.flat[3]
    axis.plot(epoch, log.column("lr"))
    axis.set_title("learning rate")
    axis.set_xlabel("epoch")
    axis.set_yscale("log")
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    plt.close(figure)


def plot_parity(errors: ErrorAccumulator, path: str | os.PathLike, title: str) -> None:
    """Predicted against reference energy per atom, force components (and stress) in panels."""
    from mlff.files import atomic_write

    plt = _pyplot()
    quantities = [
        (q, label, unit)
        for q, label, unit in (
            ("energy", "energy per atom", "eV/atom"),
            ("forces", "force components", "eV/Å"),
            ("stress", "stress components", "eV/Å³"),
        )
        if errors.values(q)[0].size
    ]
    figure, axes = plt.subplots(
        1,
        max(len(quantities), 1),
        figsize=(4.2 * max(len(quantities), 1), 4.2),
        squeeze=False,
        constrained_layout=True,
    )
    figures = errors.figures()
    for axis, (quantity, label, unit) in zip(axes.flat, quantities, strict=False):
        reference, predicted = errors.values(quantity)
        low, high = (
            float(min(reference.min(), predicted.min())),
            float(max(reference.max(), predicted.max())),
        )
        axis.plot([low, high], [low, high], color="grey", linewidth=0.8)
        axis.scatter(reference, predicted, s=3, alpha=0.5)
        key = next(k for k in figures if k.startswith(f"{quantity}_mae"))
        axis.set_title(f"{title}: {label}\nMAE {figures[key]:.3g} m{unit}")
        axis.set_xlabel(f"reference ({unit})")
        axis.set_ylabel(f"predicted ({unit})")
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    plt.close(figure)

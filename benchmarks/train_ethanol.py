"""Training benchmark: default ``mlff train`` per potential, test error against time (ethanol by
default, any extxyz with ``--data``).

The split of the issue: the 2,000 frames of ``ethanol_gfn2_500K.extxyz`` permuted with
``numpy.random.default_rng(42).permutation``, the first 1,000 for training (of which the default
5 % are held out for validation), the other 1,000 for testing. Data whose frames carry a
``trajectory`` tag (``benchmarks/make_reference_data.py``, ``data/``) is split by trajectory
instead: the last one is the test set (``--split``). Each potential is trained with
the default options of ``mlff train`` (the run's own time limit unless ``--time-limit`` is
given); every ``--every`` seconds of training the EMA weights are evaluated on the test set with
the training clock paused, so the curve is test force MAE against training wall time.

With ``--mace-python`` (a python in a separate environment with mace-torch, see
``benchmarks/mace_worker.py``) MACE is trained on the same split, on the same machine and
cores, after mlff's runs (``--mace-threads``, default every core: mlff's default trains one
process per core): ``mace_run_train`` with 32 channels, L=1, correlation 3, r_max 5 Å,
float32, batch 10, EMA, lr 0.01, loss weights 1 / 100, for ``--mace-epochs`` epochs (20), its
time taken on the same ``--clock`` (the whole MACE process, data loading included). The table
then gains a MACE row and the ratios of mlff's figures to MACE's. Without it only mlff's figures
are printed. Record results in docs/measurements.md with the command, date and machine.

    python benchmarks/train_ethanol.py                       # egnn, default time limit
    python benchmarks/train_ethanol.py --potential egnn --potential tfn --time-limit 30
    python benchmarks/train_ethanol.py --set batch_size=32 --set lr=0.01   # try options
    python benchmarks/train_ethanol.py --mace-python /path/macevenv/bin/python   # and MACE
    python benchmarks/train_ethanol.py --mace-python PATH --match-mace-time  # mlff at MACE's time
    python benchmarks/train_ethanol.py --mace-python PATH --match-mace-time --fractions 1,0.333
    python benchmarks/train_ethanol.py --data data/paracetamol_gfn2_500K.extxyz --work bench_para

Prints a table per potential and one JSON object (``--json-out`` writes it to a file too).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ethanol_gfn2_500K.extxyz"


def write_split(
    data: Path, work: Path, split: str = "auto", max_train: int = 0
) -> tuple[Path, Path]:
    """Write a train/test split of ``data`` to ``work`` (once); ``max_train`` > 0 keeps only that
    many training frames (the test set is unchanged): the first of the random split's permuted
    frames, or frames evenly spaced over the training trajectories, so that each contributes.

    ``random``: the issue's split, frames permuted with ``default_rng(42)``, the first 1,000 (at
    most half of the frames) for training. ``trajectory``: the frames of the last trajectory
    (their ``trajectory`` info, as ``benchmarks/make_reference_data.py`` writes it) are the test
    set, the others the training set, so no test frame comes from a run the model trained on.
    ``auto``: ``trajectory`` when every frame has the tag, else ``random``.
    """
    import ase.io

    stem = data.name.split(".")[0]
    train_name = f"{stem}_{split}_train{max_train or ''}.extxyz"
    train, test = work / train_name, work / f"{stem}_{split}_test.extxyz"
    if train.is_file() and test.is_file():
        return train, test
    frames = ase.io.read(str(data), index=":")
    tags = [frame.info.get("trajectory") for frame in frames]
    if split == "trajectory" and None in tags:
        sys.exit(f"--split trajectory: {data} frame {tags.index(None)} has no trajectory tag")
    by_trajectory = split == "trajectory" or (split == "auto" and None not in tags)
    if by_trajectory:
        last = max(tags)
        train_frames = [f for f, t in zip(frames, tags, strict=True) if t != last]
        test_frames = [f for f, t in zip(frames, tags, strict=True) if t == last]
    else:
        order = np.random.default_rng(42).permutation(len(frames))
        n_train = min(1000, len(frames) // 2)
        train_frames = [frames[i] for i in order[:n_train]]
        test_frames = [frames[i] for i in order[n_train:]]
    if 0 < max_train < len(train_frames) and by_trajectory:
        spread = np.linspace(0, len(train_frames) - 1, max_train).round().astype(int)
        train_frames = [train_frames[i] for i in spread]
    elif max_train > 0:
        train_frames = train_frames[:max_train]
    if not train_frames or not test_frames:
        sys.exit(f"{data}: the split leaves no training or no test frames")
    work.mkdir(parents=True, exist_ok=True)
    ase.io.write(str(train), train_frames)
    ase.io.write(str(test), test_frames)
    return train, test


def _parse_value(text: str):
    import yaml

    return yaml.safe_load(text)


def run(
    potential: str, train: Path, test: Path, work: Path, args, time_limit: float | None, label: str
) -> dict:
    """Train one potential with default options (plus ``--set``) for ``time_limit`` minutes (None:
    mlff's default); return its curve and figures under ``label``."""
    import torch

    from mlff.training import run_training
    from mlff.training.config import config_from_dict
    from mlff.training.dataset import GraphSet
    from mlff.training.evaluation import evaluate_set

    values = {"data": [str(train)], "out": str(work / f"run_{label}"), "potential": potential}
    if time_limit is not None:
        values["time_limit"] = time_limit
    for item in args.set:
        key, _, text = item.partition("=")
        values[key] = _parse_value(text)
    config = config_from_dict(values)
    out = Path(config.out)
    for name in ("checkpoint_last.pt", "checkpoint_best.pt"):
        (out / name).unlink(missing_ok=True)

    from mlff.data import read_labelled

    test_set = GraphSet(read_labelled(test), config.cutoff)
    curve: list[dict] = []
    last = {"t": -1e9}

    def monitor(loop) -> None:
        now = loop.progress.elapsed
        finished = bool(loop.progress.stopped)
        if now - last["t"] < args.every and not finished:
            return
        last["t"] = now
        errors = evaluate_set(loop.ema.model, test_set, 100).figures()
        point = {
            "training_time_s": round(now, 1),
            "epoch": loop.progress.epoch,
            "forces_mae_mev_per_a": errors["forces_mae_mev_per_a"],
            "forces_rmse_mev_per_a": errors["forces_rmse_mev_per_a"],
            "energy_mae_mev_per_atom": errors["energy_mae_mev_per_atom"],
        }
        curve.append(point)
        print(
            f"  [{label}] {now:7.1f} s  epoch {point['epoch']:4d}  test F MAE "
            f"{point['forces_mae_mev_per_a']:7.2f} meV/Å  E MAE "
            f"{point['energy_mae_mev_per_atom']:6.2f} meV/atom",
            file=sys.stderr,
            flush=True,
        )

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    result = run_training(
        config,
        log=lambda m: None if args.quiet else print(m, file=sys.stderr),
        monitors=[monitor],
        clock=time.process_time if args.clock == "cpu" else None,
    )
    final = evaluate_set(__import__("mlff").load_model(out / "model.pt"), test_set, 100).figures()
    figures = (
        "forces_mae_mev_per_a",
        "forces_rmse_mev_per_a",
        "energy_mae_mev_per_atom",
        "energy_rmse_mev_per_atom",
        "stress_mae_mev_per_a3",
        "stress_rmse_mev_per_a3",
    )
    return {
        "potential": potential,
        "label": label,
        "options": values,
        "clock": args.clock,
        "training_time_s": round(result.elapsed_s, 1),
        "total_time_s": round(time.perf_counter() - start, 1),
        "epochs": result.epochs,
        "stopped": result.stopped,
        "test_model_pt": {k: final[k] for k in figures if final.get(k) is not None},
        "curve": curve,
    }


def run_mace(train: Path, test: Path, work: Path, args) -> dict:
    """Train and test MACE on the same split with ``--mace-python`` (benchmarks/mace_worker.py)."""
    command = [
        str(args.mace_python),
        str(Path(__file__).with_name("mace_worker.py")),
        "train",
        str(train.resolve()),
        str(test.resolve()),
        "--work",
        str((work / "run_mace").resolve()),
        "--epochs",
        str(args.mace_epochs),
        "--threads",
        str(args.mace_threads or os.cpu_count() or 1),
    ]
    print(f"training MACE: {' '.join(command)}", file=sys.stderr, flush=True)
    from mace_worker import die_with_parent  # benchmarks/

    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, preexec_fn=die_with_parent)
    if done.returncode != 0 or not done.stdout.strip():
        sys.exit(f"--mace-python {args.mace_python}: mace_worker.py exited {done.returncode}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["training_time_s"] = result["cpu_time_s" if args.clock == "cpu" else "wall_time_s"]
    return result


def plot_curves(results: list[dict], mace: dict | None, path: Path, title: str) -> None:
    """Test force MAE against training time, one line per run, MACE (when run) as a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4.2), constrained_layout=True)
    for result in results:
        times = [p["training_time_s"] / 60 for p in result["curve"]]
        errors = [p["forces_mae_mev_per_a"] for p in result["curve"]]
        axis.plot(times, errors, marker="o", markersize=3, label=f"mlff {result['label']}")
    if mace:
        axis.plot(
            [mace["training_time_s"] / 60],
            [mace["test"]["forces_mae_mev_per_a"]],
            marker="*",
            markersize=12,
            linestyle="none",
            label=f"MACE {mace['mace_version']}, {mace['epochs']} epochs (this run)",
        )
    axis.set_yscale("log")
    axis.set_xlabel(f"training time ({results[0]['clock']} clock), min")
    axis.set_ylabel("test force MAE (meV/Å)")
    axis.set_title(title)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def print_table(results: list[dict], mace: dict | None) -> None:
    """MACE's row first (when it ran), then one row per mlff run (test set), then the mlff/MACE
    ratios. Stress MAE (meV/Å³) where the test set has stress."""
    print(
        f"{'model':14s} {'train s':>8s} {'epochs':>6s} {'F MAE':>8s} {'F RMSE':>8s} "
        f"{'E MAE':>8s} {'S MAE':>8s}   (test; meV/Å, meV/atom, meV/Å³)"
    )
    rows = [(r["label"], r["training_time_s"], r["epochs"], r["test_model_pt"]) for r in results]
    if mace:
        rows.insert(0, ("MACE", mace["training_time_s"], mace["epochs"], mace["test"]))
    for name, seconds, epochs, t in rows:
        stress = t.get("stress_mae_mev_per_a3")
        print(
            f"{name:14s} {seconds:8.0f} {epochs:6d} {t['forces_mae_mev_per_a']:8.2f} "
            f"{t['forces_rmse_mev_per_a']:8.2f} {t['energy_mae_mev_per_atom']:8.2f} "
            f"{'-' if stress is None else f'{stress:.3f}':>8s}"
        )
    for r in results if mace else []:
        t, m = r["test_model_pt"], mace["test"]
        line = (
            f"{r['label']} / MACE: time x{r['training_time_s'] / mace['training_time_s']:.2f}, "
            f"force MAE x{t['forces_mae_mev_per_a'] / m['forces_mae_mev_per_a']:.2f}, "
            f"energy MAE x{t['energy_mae_mev_per_atom'] / m['energy_mae_mev_per_atom']:.2f}"
        )
        if t.get("stress_mae_mev_per_a3") and m.get("stress_mae_mev_per_a3"):
            ratio = t["stress_mae_mev_per_a3"] / m["stress_mae_mev_per_a3"]
            line += f", stress MAE x{ratio:.2f}"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--work", type=Path, default=Path("bench_ethanol"))
    parser.add_argument(
        "--split",
        choices=["auto", "random", "trajectory"],
        default="auto",
        help="test set: the last trajectory of tagged data (auto, trajectory) or the issue's "
        "random 1,000/rest split (random; auto for untagged data such as the shared ethanol)",
    )
    parser.add_argument(
        "--max-train",
        type=int,
        default=0,
        help="keep only the first N training frames (0: all); for large cells, where MACE's 20 "
        "epochs on every frame would take most of an hour",
    )
    parser.add_argument("--potential", action="append", choices=["egnn", "tfn"])
    parser.add_argument("--time-limit", type=float, help="minutes (default: mlff's default)")
    parser.add_argument("--every", type=float, default=60.0, help="seconds between test points")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any TrainConfig option (to try settings)",
    )
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="training time as wall time, or as this process's CPU time (with --threads 1: "
        "what the run takes alone, to compare settings on a busy machine)",
    )
    parser.add_argument(
        "--mace-python",
        type=Path,
        help="python of an environment with mace-torch: train MACE on the same split too",
    )
    parser.add_argument("--mace-epochs", type=int, default=20, help="MACE's max_num_epochs")
    parser.add_argument(
        "--match-mace-time",
        action="store_true",
        help="train MACE first and give mlff exactly MACE's training time (overrides --time-limit)",
    )
    parser.add_argument(
        "--fractions",
        default="1",
        help="with --match-mace-time: comma-separated fractions of MACE's time, one mlff run "
        "each (the issue's table: 1,0.333)",
    )
    parser.add_argument(
        "--mace-threads",
        type=int,
        default=0,
        help="MACE's torch threads (default: every core, as mlff train's default of one "
        "training process per core uses them)",
    )
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--plot", type=Path, help="PNG of test force MAE against time")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    args = parser.parse_args()
    if args.mace_python and not args.mace_python.is_file():
        sys.exit(f"--mace-python {args.mace_python}: no such file")
    train, test = write_split(args.data, args.work, args.split, args.max_train)
    mace = None
    limits: list[tuple[float | None, str]] = [(args.time_limit, "")]
    if args.mace_python and args.match_mace_time:  # MACE first: mlff then gets its time
        mace = run_mace(train, test, args.work, args)
        fractions = [float(f) for f in args.fractions.split(",")]
        minutes = mace["training_time_s"] / 60.0
        limits = [(f * minutes, "" if f == 1 else f"@{f:g}") for f in fractions]
    results = [
        run(p, train, test, args.work, args, limit, p + suffix)
        for p in (args.potential or ["egnn"])
        for limit, suffix in limits
    ]
    if args.mace_python and mace is None:
        mace = run_mace(train, test, args.work, args)
    print_table(results, mace)
    payload = {"results": results, "mace": mace}
    print(json.dumps(payload))
    if args.json_out:
        args.json_out.write_text(json.dumps(payload, indent=2))
    if args.plot:
        plot_curves(results, mace, args.plot, f"{args.data.name}, test: {test.name}")


if __name__ == "__main__":
    main()

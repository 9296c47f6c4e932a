"""Pretraining benchmark: does a pretrained Uni-Mol encoder help at equal fine-tuning time?

Data (per ``--dataset``): the frames are permuted with ``numpy.random.default_rng(42)``; the first
``--test-frames`` (ethanol 500, Cu a quarter) are the held-out test set, never seen by any arm.
The rest, stripped of labels, is the pretraining set (``mlff pretrain`` for ``--pretrain-seconds``,
once per dataset and seed), and its first N frames (``--subsets``, default 50, 200, 950; capped
at what is left) are the labelled training sets.

Arms, each trained by ``mlff train``'s engine for the same ``--seconds`` of training time:

    egnn               EGNN without encoder (the default model)
    egnn+unimol        EGNN + Uni-Mol encoder from scratch
    egnn+unimol+pre    EGNN + Uni-Mol encoder from the pretrained encoder.pt (--init)
    tfn, tfn+unimol, tfn+unimol+pre   the same for TFN
    egnn+unimol+dns    EGNN + Uni-Mol from scratch with auxiliary denoising (--denoise-weight;
                       the denoising head reads the Uni-Mol pair representation)

Every Uni-Mol arm uses the pretraining run's encoder sizes, so scratch and pretrained encoders are
the same network. Printed: test force MAE (meV/Å) and energy MAE (meV/atom) of each arm's model.pt,
mean and spread over ``--seeds``, per labelled-set size; ``--json`` prints one JSON object instead.

    python benchmarks/pretraining.py --seconds 300 --pretrain-seconds 1800     # the experiment
    python benchmarks/pretraining.py --dataset cu --seeds 0 --subsets 50
    python benchmarks/pretraining.py --seconds 3 --pretrain-seconds 3 --seeds 0 --subsets 50 \\
        --arms egnn,egnn+unimol+pre --test-frames 20 --work /tmp/bench_pre   # a smoke run

Record results in docs/measurements.md with the command, date and machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATASETS = {
    "ethanol": (SHARED / "ethanol_gfn2_500K.extxyz", 500, 5.0),
    "cu": (SHARED / "cu_emt.extxyz", 0, 5.0),  # 0: a quarter of the frames
}
ARMS = {
    # name: (potential, encoder, pretrained, denoise)
    "egnn": ("egnn", "none", False, False),
    "egnn+unimol": ("egnn", "unimol", False, False),
    "egnn+unimol+pre": ("egnn", "unimol", True, False),
    "tfn": ("tfn", "none", False, False),
    "tfn+unimol": ("tfn", "unimol", False, False),
    "tfn+unimol+pre": ("tfn", "unimol", True, False),
    "egnn+unimol+dns": ("egnn", "unimol", False, True),
}


def split(data: Path, test_frames: int, work: Path) -> dict[str, Path | int]:
    """Write test.extxyz (labelled), pool.extxyz (labelled) and unlabelled.xyz (the pool without
    labels) to ``work``; the pool keeps the permuted order, so its first N are a subset."""
    import ase.io
    from ase import Atoms

    work.mkdir(parents=True, exist_ok=True)
    frames = ase.io.read(str(data), index=":")
    order = np.random.default_rng(42).permutation(len(frames))
    n_test = test_frames or len(frames) // 4
    test = [frames[i] for i in order[:n_test]]
    pool = [frames[i] for i in order[n_test:]]
    paths = {"test": work / "test.extxyz", "pool": work / "pool.extxyz"}
    ase.io.write(paths["test"], test, format="extxyz")
    ase.io.write(paths["pool"], pool, format="extxyz")
    bare = [Atoms(a.numbers, a.positions, cell=a.cell, pbc=a.pbc) for a in pool]
    paths["unlabelled"] = work / "unlabelled.xyz"
    ase.io.write(paths["unlabelled"], bare, format="extxyz")
    return {**paths, "n_pool": len(pool), "n_test": len(test)}


def subset(pool: Path, n: int, work: Path) -> Path:
    """The first ``n`` labelled frames of the pool, written once."""
    import ase.io

    path = work / f"train_{n}.extxyz"
    if not path.is_file():
        ase.io.write(path, ase.io.read(str(pool), index=f":{n}"), format="extxyz")
    return path


def pretrain(unlabelled: Path, out: Path, seed: int, cutoff: float, args) -> dict:
    """``mlff pretrain`` for ``--pretrain-seconds``; its encoder sizes and time."""
    from mlff.pretraining.config import pretrain_config_from_dict
    from mlff.pretraining.run import run_pretraining

    values = {
        "data": [str(unlabelled)],
        "out": str(out),
        "seed": seed,
        "cutoff": cutoff,
        "time_limit": args.pretrain_seconds / 60.0,
        "progress": "lines",
    }
    for item in args.pretrain_set:
        key, _, text = item.partition("=")
        values[key] = json.loads(text) if text[:1] in "0123456789-[{tf" else text
    config = pretrain_config_from_dict(values)
    if (out / "checkpoint_last.pt").is_file():
        (out / "checkpoint_last.pt").unlink()
    result = run_pretraining(
        config, log=lambda m: None if args.quiet else print(m, file=sys.stderr)
    )
    encoder = {
        "encoder_features": config.features,
        "encoder_pair_features": config.pair_features,
        "encoder_num_layers": config.num_layers,
        "encoder_num_heads": config.num_heads,
    }
    return {"encoder": encoder, "time_s": result.elapsed_s, "valid": result.valid}


def reuse_pretraining(out: Path) -> dict:
    """Encoder sizes of an earlier pretraining run's ``out/encoder.pt`` (--reuse-pretraining)."""
    from mlff.pretraining.files import read_encoder

    sizes = read_encoder(out / "encoder.pt").model_hyperparameters()
    keys = ("features", "pair_features", "num_layers", "num_heads")
    encoder = {f"encoder_{key}": sizes[f"encoder_{key}"] for key in keys}
    return {"encoder": encoder, "time_s": None, "valid": None, "reused": str(out)}


def train_arm(arm: str, train: Path, test_set, out: Path, seed: int, cutoff: float, encoder: dict,
              encoder_file: Path | None, args) -> dict:  # fmt: skip
    """Train one arm for ``--seconds``; the test figures of its model.pt."""
    from mlff import load_model
    from mlff.training import run_training
    from mlff.training.config import config_from_dict
    from mlff.training.evaluation import evaluate_set

    potential, encoder_name, pretrained, denoise = ARMS[arm]
    values = {
        "data": [str(train)],
        "out": str(out),
        "potential": potential,
        "encoder": encoder_name,
        "cutoff": cutoff,
        "seed": seed,
        "time_limit": args.seconds / 60.0,
        "progress": "lines",
    }
    if encoder_name == "unimol":
        values["model_options"] = dict(encoder)
    if pretrained:
        values["init"] = str(encoder_file)
        values["init_mode"] = args.init_mode
    if denoise:
        values["denoise_weight"] = args.denoise_weight
    for item in args.set:
        key, _, text = item.partition("=")
        values[key] = json.loads(text) if text[:1] in "0123456789-[{tf" else text
    for name in ("checkpoint_last.pt", "checkpoint_best.pt"):
        (out / name).unlink(missing_ok=True)
    config = config_from_dict(values)
    result = run_training(config, log=lambda m: None if args.quiet else print(m, file=sys.stderr))
    figures = evaluate_set(load_model(out / "model.pt"), test_set, 100).figures()
    return {
        "forces_mae_mev_per_a": figures["forces_mae_mev_per_a"],
        "energy_mae_mev_per_atom": figures["energy_mae_mev_per_atom"],
        "training_time_s": round(result.elapsed_s, 1),
        "epochs": result.epochs,
    }


def run_dataset(name: str, args) -> dict:
    from mlff.data import read_labelled
    from mlff.training.dataset import GraphSet

    data, test_frames, cutoff = DATASETS[name]
    if args.data:
        data = Path(args.data)
    work = Path(args.work) / name
    paths = split(data, args.test_frames if args.test_frames is not None else test_frames, work)
    test_set = GraphSet(read_labelled(paths["test"]), cutoff)
    sizes = sorted({min(n, int(paths["n_pool"])) for n in args.subsets})
    results: dict = {"n_test": paths["n_test"], "n_pool": paths["n_pool"], "runs": []}
    for seed in args.seeds:
        needs_pretraining = any(ARMS[arm][2] for arm in args.arms)
        encoder, encoder_file, pre = {}, None, None
        if needs_pretraining or any(ARMS[arm][1] == "unimol" for arm in args.arms):
            pre_out = work / f"pretrain_seed{seed}"
            if needs_pretraining and args.reuse_pretraining and (pre_out / "encoder.pt").is_file():
                pre = reuse_pretraining(pre_out)
                encoder, encoder_file = pre["encoder"], pre_out / "encoder.pt"
                results.setdefault("pretraining", {})[seed] = pre
            elif needs_pretraining:
                pre = pretrain(paths["unlabelled"], pre_out, seed, cutoff, args)
                encoder, encoder_file = pre["encoder"], pre_out / "encoder.pt"
                results.setdefault("pretraining", {})[seed] = pre
            else:
                from mlff.pretraining.config import PretrainConfig

                default = PretrainConfig()
                encoder = {
                    "encoder_features": default.features,
                    "encoder_pair_features": default.pair_features,
                    "encoder_num_layers": default.num_layers,
                    "encoder_num_heads": default.num_heads,
                }
        for size in sizes:
            train = subset(paths["pool"], size, work)
            for arm in args.arms:
                out = work / f"{arm}_n{size}_seed{seed}"
                start = time.perf_counter()
                figures = train_arm(
                    arm, train, test_set, out, seed, cutoff, encoder, encoder_file, args
                )
                row = {"arm": arm, "n_train": size, "seed": seed, **figures}
                row["total_time_s"] = round(time.perf_counter() - start, 1)
                results["runs"].append(row)
                print(
                    f"[{name}] {arm:18s} n={size:4d} seed {seed}: "
                    f"F {figures['forces_mae_mev_per_a']:.1f} meV/Å  "
                    f"E {figures['energy_mae_mev_per_atom']:.2f} meV/atom",
                    file=sys.stderr,
                    flush=True,
                )
    return results


def print_table(name: str, results: dict) -> None:
    runs = results["runs"]
    print(f"\n{name}: test MAE over {results['n_test']} held-out frames, mean ± std over seeds")
    print(
        f"{'arm':18s} {'n_train':>7s} {'force meV/Å':>16s} {'energy meV/atom':>18s} {'seeds':>5s}"
    )
    keys = sorted(
        {(r["n_train"], r["arm"]) for r in runs}, key=lambda k: (k[0], list(ARMS).index(k[1]))
    )
    for size, arm in keys:
        rows = [r for r in runs if r["arm"] == arm and r["n_train"] == size]
        forces = np.array([r["forces_mae_mev_per_a"] for r in rows])
        energy = np.array([r["energy_mae_mev_per_atom"] for r in rows])
        print(
            f"{arm:18s} {size:7d} {forces.mean():9.2f} ± {forces.std():5.2f} "
            f"{energy.mean():11.3f} ± {energy.std():5.3f} {len(rows):5d}"
        )


def _list(kind):
    return lambda text: [kind(t) for t in text.split(",") if t]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["ethanol", "cu", "both"], default="ethanol")
    parser.add_argument("--data", help="another extxyz instead of the dataset's file")
    parser.add_argument("--seconds", type=float, default=300.0, help="fine-tuning time per arm")
    parser.add_argument("--pretrain-seconds", type=float, default=1800.0)
    parser.add_argument("--seeds", type=_list(int), default=[0, 1, 2])
    parser.add_argument("--subsets", type=_list(int), default=[50, 200, 950])
    parser.add_argument("--arms", type=_list(str), default=list(ARMS))
    parser.add_argument("--test-frames", type=int, default=None, help="held-out test frames")
    parser.add_argument(
        "--init-mode", default="auto", choices=["auto", "finetune", "freeze", "low-lr"]
    )
    parser.add_argument("--denoise-weight", type=float, default=1.0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an mlff train option for every arm (repeatable)")  # fmt: skip
    parser.add_argument("--pretrain-set", action="append", default=[], metavar="KEY=VALUE",
                        help="an mlff pretrain option (repeatable)")  # fmt: skip
    parser.add_argument("--work", default="bench_pretraining")
    parser.add_argument("--reuse-pretraining", action="store_true",
                        help="use WORK/DATASET/pretrain_seedN/encoder.pt if it exists")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quiet", action="store_true", help="no training progress lines")
    args = parser.parse_args()
    unknown = sorted(set(args.arms) - set(ARMS))
    if unknown:
        parser.error(f"unknown arm(s) {', '.join(unknown)}; choose from {', '.join(ARMS)}")
    names = ["ethanol", "cu"] if args.dataset == "both" else [args.dataset]
    everything = {name: run_dataset(name, args) for name in names}
    if args.json:
        print(json.dumps({"seconds_per_arm": args.seconds, "results": everything}, indent=2))
        return
    for name, results in everything.items():
        print_table(name, results)


if __name__ == "__main__":
    main()

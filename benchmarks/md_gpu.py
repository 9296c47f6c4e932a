"""The batched engine on a GPU: one JSON table over molecules and crystals, float32 and float64.

    python benchmarks/md_gpu.py [--out md_gpu.json] [--steps 200] [--quick] [--size medium]
        [--hyper '{}'] [--compile none|inductor] [--device cuda]

Cases: ethanol x {1, 64, 1024} replicas, aspirin (21 atoms, the first frame of
data/aspirin_gfn2_500K.extxyz) x {1, 64}, and fcc Cu cells of {256, 2048, 32k, 100k} atoms; NVT
Langevin at 300 K, 1 fs, no output files. The model is ``mlff train``'s EGNN at ``--size``
(untrained, cutoff 5 Å; ``none``: build_model's defaults). Columns: steps/s, atom-steps/s,
ms/step, peak memory (MiB), neighbour-list builds, and host syncs per step between the run's
synchronisation points (counted with ``torch.cuda.set_sync_debug_mode("warn")``, one warning
per sync). A case that runs out of memory is recorded as such. ``--quick`` runs the smaller
cases only. Run it where a GPU is lent; ``--device cpu`` is a dry run of the same script (no
memory or sync columns). Record the table in docs/measurements.md with command, date and machine.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import ase.io
import torch
from ase.build import bulk, molecule
from md_engines import hyperparameters  # --size and --hyper, as md_engines.py reads them

from mlff import build_model
from mlff.compiled import compile_model
from mlff.md.runner import run_batched_md
from mlff.md.settings import MDSettings

ASPIRIN = Path(__file__).resolve().parent.parent / "data" / "aspirin_gfn2_500K.extxyz"


def cases(quick: bool) -> list[tuple[str, list, list[str]]]:
    """(name, structures, elements) of each case."""
    cu = bulk("Cu", "fcc", a=3.61, cubic=True)
    # 4 atoms per conventional cell: 256 = 4 x 4^3, 2048 = 4 x 8^3, 32k = 4 x 20^3, 100k = 4 x 29^3
    rows = [(f"ethanol-x{n}", [molecule("CH3CH2OH") for _ in range(n)], ["H", "C", "O"])
            for n in ((1, 64) if quick else (1, 64, 1024))]  # fmt: skip
    aspirin = ase.io.read(ASPIRIN, index=0)
    aspirin.calc = None
    rows += [(f"aspirin-x{n}", [aspirin.copy() for _ in range(n)], ["H", "C", "O"])
             for n in (1, 64)]  # fmt: skip
    sizes = (4, 8) if quick else (4, 8, 20, 29)
    rows += [(f"Cu-{4 * n**3}", [cu * (n, n, n)], ["Cu"]) for n in sizes]
    return rows


def make_model(elements: list[str], dtype: torch.dtype, args):
    """The EGNN of ``--size`` on ``--device``, compiled with ``--compile``."""
    torch.manual_seed(0)
    model = build_model("egnn", elements=elements, cutoff=5.0, **hyperparameters(args))
    model = model.to(args.device, dtype).eval()
    if args.compile != "none":
        model = compile_model(model.requires_grad_(False), args.compile)
    return model


def run_case(structures, elements, dtype: torch.dtype, args) -> dict:
    steps, cuda = args.steps, args.device.startswith("cuda")
    model = make_model(elements, dtype, args)
    settings = MDSettings(ensemble="nvt", temperature_k=300.0, timestep_fs=1.0, steps=steps,
                          interval=steps, covariance_every=0, seed=0)  # fmt: skip
    warm = MDSettings(**{**vars(settings), "steps": 5, "interval": 5})
    run_batched_md([a.copy() for a in structures], model, warm)  # compiles, if asked
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        started = time.perf_counter()
        summary = run_batched_md([a.copy() for a in structures], model, settings)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("default")
        elapsed = time.perf_counter() - started
    syncs = sum("synchroniz" in str(w.message).lower() for w in caught)
    n_atoms = sum(len(a) for a in structures)
    return {
        "steps_per_s": steps / elapsed,
        "atom_steps_per_s": steps * n_atoms / elapsed,
        "ms_per_step": 1000.0 * elapsed / steps,
        "engine_steps_per_s": summary.steps_per_second,
        "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "neighbour_builds": summary.neighbour_builds,
        "host_syncs_per_step": syncs / steps if cuda else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="md_gpu.json")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--size", default="medium", help="mlff train's size preset, or none")
    parser.add_argument("--hyper", default="{}", help="build_model hyperparameters over --size")
    parser.add_argument("--compile", default="none", choices=["none", "inductor"])
    parser.add_argument("--device", default="cuda", help="cuda (the benchmark) or cpu (dry run)")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU: this benchmark runs only where one is lent")
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    table = {"device": device_name, "torch": torch.__version__, "size": args.size,
             "compile": args.compile, "steps": args.steps, "rows": []}  # fmt: skip
    for name, structures, elements in cases(args.quick):
        for dtype in (torch.float32, torch.float64):
            row = {"case": name, "atoms": sum(len(a) for a in structures), "dtype": str(dtype)}
            try:
                row.update(run_case(structures, elements, dtype, args))
            except torch.cuda.OutOfMemoryError:
                row["error"] = "out of memory"
                torch.cuda.empty_cache()
            table["rows"].append(row)
            print(json.dumps(row), flush=True)
    with open(args.out, "w") as handle:
        json.dump(table, handle, indent=1)


if __name__ == "__main__":
    main()

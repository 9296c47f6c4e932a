"""Eager against compiled evaluation per call, from a molecule to bulk cells, to place the size
above which ``mlff.compiled`` leaves a model eager (``MAX_EGNN_COMPILED_EDGES``,
``MIN_FUSED_EDGES``).

    python benchmarks/compiled_crossover.py [--size medium] [--hyper '{...}'] [--threads 2]
        [--dtype float32] [--cells 2x2x2,2x2x3,3x3x3,4x4x4] [--json]

For ethanol and fcc Cu supercells (cubic cell, 0.05 Å rattle) it times energy + forces of the
same model eagerly (``mlff.forces.evaluate``) with the fused CPU kernels
(:mod:`mlff.potentials.fused`, where they build) and without them (``eager_reference_ms``: the
op-by-op reference), and through its compiled graph directly (ignoring the size rule), median of
repeated calls after a compiling warm-up, and prints ms per call and the edge count. Record
results in docs/measurements.md with command, date and machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch
from ase.build import bulk, molecule
from mlff.potentials.fused import reference_path

from mlff import build_model
from mlff.compiled import compile_model, compiled_forces
from mlff.forces import evaluate
from mlff.graph import graph_from_atoms
from mlff.runtime import keep_freed_memory
from mlff.training.config import TrainConfig


def median_ms(function, repeats: int) -> float:
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return 1e3 * sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="medium", help="mlff train's size preset")
    parser.add_argument("--hyper", default="{}", help="JSON build_model arguments over the preset")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--cells", default="2x2x2,2x2x3,3x3x3,4x4x4")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the calculator and the MD engines do: no page faults per call
    torch.manual_seed(0)
    preset = TrainConfig(potential="egnn", size=args.size).model_hyperparameters()
    hyper = {**preset, **json.loads(args.hyper)}
    model = build_model("egnn", elements=["H", "C", "O", "Cu"], cutoff=5.0, **hyper)
    model = model.to(getattr(torch, args.dtype)).eval().requires_grad_(False)
    compiled_model = compile_model(copy.deepcopy(model))
    compiled = compiled_forces(compiled_model)
    structures = [("ethanol", molecule("CH3CH2OH"))]
    for cell in args.cells.split(","):
        repeat = tuple(int(n) for n in cell.split("x"))
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * repeat
        atoms.rattle(0.05, seed=0)
        structures.append((f"Cu-{len(atoms)}", atoms))
    rows = []
    for name, atoms in structures:
        graph = graph_from_atoms(atoms, model.cutoff).to(model.device, model.dtype)
        species = model.species_index(graph.numbers)

        inputs = (species, graph.edge_index, graph.edge_shifts, graph.batch, graph.positions,
                  graph.cell)  # fmt: skip
        repeats = 50 if len(atoms) < 100 else 10
        row = {
            "system": name,
            "atoms": len(atoms),
            "edges": graph.n_edges,
            "eager_ms": median_ms(lambda: evaluate(model, graph), repeats),  # noqa: B023
            "compiled_ms": median_ms(lambda: compiled(*inputs), repeats),  # noqa: B023
        }
        with reference_path():
            row["eager_reference_ms"] = median_ms(lambda: evaluate(model, graph), repeats)  # noqa: B023
        rows.append(row)
        print(
            f"{name:<9} {row['edges']:>7} edges  eager {row['eager_ms']:8.2f} ms  "
            f"(reference {row['eager_reference_ms']:8.2f})  compiled {row['compiled_ms']:8.2f} "
            f"ms  eager/compiled {row['eager_ms'] / row['compiled_ms']:5.2f}",
            flush=True,
        )
    if args.json:
        print(json.dumps({"dtype": args.dtype, "threads": args.threads, "rows": rows}))


if __name__ == "__main__":
    main()

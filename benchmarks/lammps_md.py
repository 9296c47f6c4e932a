"""MD speed of LAMMPS (ML-IAP unified, 1, 2 and 4 MPI ranks) against ``mlff md run``.

    python benchmarks/lammps_md.py [--repeat 6] [--ranks 1,2,4] [--steps 30] [--warmup 5]
        [--size medium] [--hyper '{}'] [--engines lammps,batched,ase] [--timeout 3600] [--json]

One fcc Cu cell (a = 3.61 Å, ``--repeat`` n gives n×n×n cubic cells, 4n³ atoms: 6 -> 864,
8 -> 2048; rattled 0.02 Å, seed 0), one untrained EGNN (``mlff train``'s ``--size`` preset,
``--hyper`` overrides entries, 5 Å cutoff), float64 on the CPU, NVE from 300 K, 1 fs steps, a
1 Å neighbour skin everywhere. Rows:

* ``lammps``, N ranks: ``mpiexec -n N python -m mlff.lammps.driver`` (the README's route) with
  the input lines ``mlff export-lammps`` prints, one torch thread per rank
  (``OMP_NUM_THREADS=1``). Steps/s is LAMMPS's ``Loop time`` of ``run STEPS`` after a
  ``run WARMUP``: the set-up (first force call, neighbour lists) is not counted.
* ``batched`` and ``ase``, N threads: ``mlff md run --engine batched|ase --threads N``, run
  twice (``WARMUP`` and ``WARMUP + STEPS`` steps); steps/s is STEPS over the difference of the two
  runs' own timings, so start-up and the first force call cancel out the same way.

``speedup`` is steps/s over the same code's 1-rank (1-thread) row and ``efficiency`` speedup/N.
A row whose command fails is reported as failed with its last line, and the table goes on. The
LAMMPS rows also check LAMMPS's step-0 energy against MLFFCalculator (``dE0``; round-off, else
the set-up is wrong). More ranks than cores oversubscribe them: time on an otherwise idle machine
with at least 4 cores. ``--json`` prints one JSON object on stdout instead of the table. Record
results in docs/measurements.md with the command, date and machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import ase.io
import torch
from ase.build import bulk
from mace_worker import die_with_parent  # benchmarks/

from mlff import MLFFCalculator, build_model, save_model
from mlff.errors import MLFFError
from mlff.lammps import export_lammps
from mlff.training.config import TrainConfig

BIN = Path(sys.executable).parent
SKIN = 1.0  # Å, LAMMPS's neighbour skin and the batched engine's Verlet skin
TIMESTEP_FS = 1.0
TEMPERATURE_K = 300.0
LOOP = re.compile(r"Loop time of ([0-9.eE+-]+) on (\d+) procs for (\d+) steps")


def copper(repeat: int):
    """fcc Cu, ``repeat``³ cubic cells (4 atoms each), rattled 0.02 Å (seed 0)."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (repeat, repeat, repeat)
    atoms.rattle(0.02, seed=0)
    return atoms


def make_model(size: str, hyper: str):
    """``mlff train``'s EGNN at ``size`` (``hyper``: JSON dict of overrides), float64."""
    config = TrainConfig(potential="egnn", size=size)
    hyperparameters = {**config.model_hyperparameters(), **json.loads(hyper)}
    torch.manual_seed(0)
    model = build_model("egnn", "none", elements=["Cu"], cutoff=5.0, **hyperparameters)
    return model.double().eval(), hyperparameters


def lammps_input(commands: list[str], warmup: int, steps: int) -> str:
    """The LAMMPS input: the model's lines from ``mlff export-lammps``, NVE, two runs."""
    lines = [
        "units metal",
        "atom_style atomic",
        "atom_modify map yes",
        "newton on",
        "boundary p p p",
        "read_data cu.data",
        f"neighbor {SKIN} bin",
        "neigh_modify every 1 delay 0 check yes",
        *commands,
        f"velocity all create {TEMPERATURE_K} 4928459 loop geom dist gaussian",
        "fix nve all nve",
        f"timestep {TIMESTEP_FS / 1000}",
        "thermo_style custom step pe",
        "thermo_modify format float %.12f",
        f"run {warmup}",
        f"run {steps}",
    ]
    return "\n".join(lines) + "\n"


def run(command: list[str], cwd: Path, timeout: float, env: dict | None = None):
    """(stdout, None) or (None, the reason it failed in one line)."""
    try:
        done = subprocess.run(
            command,
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=die_with_parent,  # a stopped benchmark takes LAMMPS along
        )
    except subprocess.TimeoutExpired:
        return None, f"over {timeout:g} s"
    if done.returncode != 0:
        lines = (done.stderr.strip() or done.stdout.strip() or "?").splitlines()
        return None, f"exit {done.returncode}: {lines[-1][:200]}"
    return done.stdout, None


def lammps_row(work: Path, ranks: int, args) -> dict:
    """One LAMMPS run on ``ranks`` ranks: steps/s of the timed run and the step-0 energy."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [str(BIN / "mpiexec"), "-n", str(ranks), sys.executable, "-m"]
    command += ["mlff.lammps.driver", "model.mliap.pt", "in.lammps"]
    out, failed = run(command, work, args.timeout, env)
    if failed:
        return {"failed": failed}
    loops = LOOP.findall(out)
    header = out.splitlines().index(next(line for line in out.splitlines() if "PotEng" in line))
    energy = float(out.splitlines()[header + 1].split()[1])
    seconds, procs, steps = loops[-1]
    assert int(procs) == ranks and int(steps) == args.steps, loops[-1]
    return {"steps_per_second": args.steps / float(seconds), "energy_step0_ev": energy}


def mlff_row(work: Path, engine: str, threads: int, args) -> dict:
    """``mlff md run`` with ``engine`` on ``threads`` threads: steady-state steps/s."""
    seconds = []
    for steps in (args.warmup, args.warmup + args.steps):
        command = [str(BIN / "mlff"), "md", "run", "model.pt", "cu.extxyz", "--engine", engine]
        command += ["--ensemble", "nve", "--steps", str(steps), "--temperature", "300"]
        command += ["--timestep", str(TIMESTEP_FS), "--dtype", "float64", "--device", "cpu"]
        command += ["--threads", str(threads), "--compile", "none", "--skin", str(SKIN)]
        command += ["--covariance-every", "0", "--seed", "0", "--no-progress", "--json"]
        out, failed = run(command, work, args.timeout)
        if failed:
            return {"failed": failed}
        summary = json.loads(out)
        seconds.append(summary["steps"] / summary["steps_per_second"])
    if seconds[1] <= seconds[0]:
        return {"failed": "the longer run was not slower: timing noise; raise --steps"}
    return {"steps_per_second": args.steps / (seconds[1] - seconds[0])}


def add_speedups(rows: list[dict]) -> None:
    """Speed-up over the same code's 1-core row and parallel efficiency (speed-up / cores)."""
    for row in rows:
        base = next((r for r in rows if r["code"] == row["code"] and r["cores"] == 1), None)
        if "steps_per_second" in row and base and "steps_per_second" in base:
            row["speedup"] = row["steps_per_second"] / base["steps_per_second"]
            row["efficiency"] = row["speedup"] / row["cores"]


def table(result: dict) -> str:
    lines = [
        f"fcc Cu, {result['atoms']} atoms; EGNN {result['size']} (untrained), float64, CPU; "
        f"NVE, {result['steps']} timed steps after {result['warmup']}; "
        f"{result['cores_available']} core(s) here",
        f"{'code':8} {'cores':>5} {'steps/s':>9} {'atom-steps/s':>13} {'speedup':>8} "
        f"{'efficiency':>10}  note",
    ]
    for row in result["rows"]:
        if "failed" in row:
            lines.append(f"{row['code']:8} {row['cores']:>5} failed: {row['failed']}")
            continue
        rate = row["steps_per_second"]
        speedup = f"{row['speedup']:.2f}" if "speedup" in row else "-"
        efficiency = f"{row['efficiency']:.0%}" if "efficiency" in row else "-"
        note = f"dE0 {row['energy_error_ev']:.1e} eV" if "energy_error_ev" in row else ""
        lines.append(
            f"{row['code']:8} {row['cores']:>5} {rate:>9.3f} {rate * result['atoms']:>13.0f} "
            f"{speedup:>8} {efficiency:>10}  {note}".rstrip()
        )
    lines.append("cores: MPI ranks (LAMMPS, 1 torch thread each) or torch threads (mlff md run)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=6, help="n×n×n cubic cells (4n³ atoms)")
    parser.add_argument("--ranks", default="1,2,4", help="MPI ranks / torch threads to run")
    parser.add_argument("--steps", type=int, default=30, help="timed MD steps")
    parser.add_argument("--warmup", type=int, default=5, help="MD steps before the timed ones")
    parser.add_argument("--size", default="medium", help="mlff train's model size preset")
    parser.add_argument("--hyper", default="{}", help="JSON dict of hyperparameter overrides")
    parser.add_argument("--engines", default="lammps,batched,ase", help="codes to run")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per command")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    try:
        ranks = [int(n) for n in args.ranks.split(",")]
        engines = [e for e in args.engines.split(",") if e]
        if not ranks or min(ranks) < 1 or args.repeat < 1 or args.steps < 1 or args.warmup < 1:
            raise ValueError("--ranks, --repeat, --steps and --warmup must be positive")
        unknown = set(engines) - {"lammps", "batched", "ase"}
        if unknown:
            raise ValueError(f"--engines: unknown {', '.join(sorted(unknown))}")
        model, hyperparameters = make_model(args.size, args.hyper)
    except (ValueError, MLFFError) as error:  # json.JSONDecodeError is a ValueError
        sys.exit(f"lammps_md.py: error: {error}")

    atoms = copper(args.repeat)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lammps_md_") as folder:
        work = Path(folder)
        save_model(model, work / "model.pt")
        ase.io.write(work / "cu.extxyz", atoms)
        ase.io.write(work / "cu.data", atoms, format="lammps-data", specorder=["Cu"], masses=True)
        settings = export_lammps(model, work / "model.mliap.pt", ["Cu"])
        (work / "in.lammps").write_text(
            lammps_input(settings.commands(skin=SKIN), args.warmup, args.steps)
        )
        reference = None
        for code in engines:
            for n in ranks:
                print(f"lammps_md: {code} on {n} core(s)", file=sys.stderr, flush=True)
                if code == "lammps":
                    row = lammps_row(work, n, args)
                    if "energy_step0_ev" in row:
                        if reference is None:
                            calculator = MLFFCalculator(
                                model, device="cpu", dtype="float64", compile="none"
                            )
                            reference = calculator.get_potential_energy(atoms.copy())
                        row["energy_error_ev"] = abs(row["energy_step0_ev"] - reference)
                else:
                    row = mlff_row(work, code, n, args)
                rows.append({"code": code, "cores": n, **row})
    add_speedups(rows)
    result = {
        "atoms": len(atoms),
        "size": args.size,
        "hyperparameters": hyperparameters,
        "ghost_shell_a": settings.comm_cutoff(SKIN),
        "steps": args.steps,
        "warmup": args.warmup,
        "skin_a": SKIN,
        "timestep_fs": TIMESTEP_FS,
        "cores_available": os.cpu_count(),
        "machine": platform.platform(),
        "processor": platform.processor(),
        "torch": torch.__version__,
        "rows": rows,
    }
    print(json.dumps(result, indent=2) if args.json else table(result))


if __name__ == "__main__":
    main()

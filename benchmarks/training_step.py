"""Cost of one training step (forward, forces, loss, backward through the forces, AdamW) for
several model settings, interleaved in one process so that they share the machine's state.

    python benchmarks/training_step.py DATA.extxyz --config '{}' \
        --config '{"angular_invariants": "many_body"}' [--batch-size 16] [--threads 1] [--profile]

Each ``--config`` is a JSON object of hyperparameters laid over the ``mlff train`` size preset
(``"max_padding"`` sets the EGNN's layout rule; 1.0 forces the per-edge layout;
``"compile": "inductor"`` runs the step through ``mlff train --compile``'s compiled graph, and
its first warm-up step, the compilation, is printed).
Prints the median and quartiles of ms per step, and with ``--profile`` torch's operator table of
the first configuration. One thread per process is what ``mlff train`` runs on a CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from mlff.builder import build_model
from mlff.data import elements_of, read_labelled
from mlff.training.config import TrainConfig
from mlff.training.dataset import GraphSet
from mlff.training.loop import _EnergyAndForces
from mlff.training.loss import LossWeights, loss_terms, total_loss
from mlff.training.statistics import data_statistics


def make_step(model: torch.nn.Module, stress: bool, compile: str = "none"):
    """A closure running one optimisation step on a batch; returns the loss."""
    forward = _EnergyAndForces(model, compute_forces=True, compute_stress=stress, compile=compile)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(batch) -> float:
        loss = total_loss(loss_terms(forward(batch.graph), batch), LossWeights())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        return float(loss.detach())

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--config", action="append", default=[], help="JSON hyperparameters")
    parser.add_argument("--size", default="medium")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--frames", type=int, default=160, help="frames read from DATA")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per configuration")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    frames = read_labelled(args.data)[: args.frames]
    elements = elements_of(frames)
    graphs = GraphSet(frames, 5.0)
    stats = data_statistics(graphs, elements, None)
    stress = any(f.stress is not None for f in frames)
    batches = [
        graphs.batch(range(k, k + args.batch_size)).to(torch.device("cpu"), torch.float32)
        for k in range(0, len(frames) - args.batch_size + 1, args.batch_size)
    ]
    configs = [json.loads(text) for text in args.config] or [{}]
    steps = []
    for options in configs:
        hyper_options = dict(options)
        max_padding = hyper_options.pop("max_padding", None)
        compile_mode = hyper_options.pop("compile", "none")
        hyper = TrainConfig(data=["x"], size=args.size, model_options=hyper_options)
        torch.manual_seed(0)
        model = (
            build_model(
                potential="egnn",
                encoder="none",
                elements=elements,
                cutoff=5.0,
                reference_energies=stats.reference_energies,
                energy_scale=stats.energy_scale,
                energy_shift=stats.energy_shift,
                avg_num_neighbors=stats.avg_num_neighbors,
                **hyper.model_hyperparameters(),
            )
            .to(torch.float32)
            .train()
        )
        if max_padding is not None:  # the EGNN's layout rule (1.0: per-edge layout)
            model.potential.max_padding = max_padding
        n_parameters = sum(p.numel() for p in model.parameters())
        step = make_step(model, stress, compile_mode)
        start = time.perf_counter()
        step(batches[0])
        print(f"{json.dumps(options)}: first step {time.perf_counter() - start:.1f} s", flush=True)
        for batch in batches[1:3]:  # warm-up
            step(batch)
        steps.append((options, n_parameters, step, []))
    for _ in range(args.rounds):
        for _options, _n, step, times in steps:
            for k in range(args.steps):
                start = time.perf_counter()
                step(batches[k % len(batches)])
                times.append(1e3 * (time.perf_counter() - start))
    n_atoms = batches[0].graph.n_atoms
    print(f"{args.data}: batch {args.batch_size} ({n_atoms} atoms), {args.threads} thread(s)")
    for options, n_parameters, _step, times in steps:
        q = statistics.quantiles(times, n=4)
        print(
            f"{json.dumps(options):60s} {n_parameters:8d} params  "
            f"median {q[1]:7.1f} ms/step (quartiles {q[0]:.1f}-{q[2]:.1f})"
        )
    if args.profile:
        step = steps[0][2]
        with torch.profiler.profile() as profile:
            for k in range(10):
                step(batches[k % len(batches)])
        print(profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()

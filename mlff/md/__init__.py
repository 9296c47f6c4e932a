"""Molecular dynamics and relaxation engines.

Shared by both engines:

    settings.py     MDSettings and MDSummary (units: fs, K, bar, 1/ps)
    trajectory.py   trajectory writers and readers (extxyz, .traj, DCD, XTC, HDF5)
    log.py          the CSV log and the running energy-drift fit

The ASE engine (one structure, ASE's integrators; the reference):

    ase_engine.py   run_md: integrator per ensemble, restarts, blow-up and covariance checks

The batched engine (many systems on the model's device at once):

    state.py        SystemBatch: positions, momenta, masses, cells of all systems as flat tensors
    neighbours.py   VerletList: pairs within cutoff + skin, rebuilt per system without host syncs
    forces.py       the model on a batch: energies, forces (and stress) from the pair list
    integrators.py  step functions: velocity Verlet, Langevin BAOAB, Nosé-Hoover chain, Bussi
    npt.py          MTK NPT: isotropic and full-cell barostats
    checks.py       per-system covariance check and blow-up detection
    output.py       snapshots written by a background thread, one file per system
    runner.py       run_batched_md: the step loop behind ``mlff md run --engine batched``
    fire.py         batched FIRE; cell_filter.py: the Fréchet cell parametrisation
    relax.py        relax_many: FIRE over a queue that refills the batch as systems converge
"""

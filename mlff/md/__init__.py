"""Molecular dynamics and relaxation engines.

The batched device engine keeps many systems on the device at once:

    state.py        SystemBatch: positions, momenta, masses, cells of all systems as flat tensors
    neighbours.py   Verlet neighbour lists with a skin, rebuilt per system on the device
    forces.py       the model on a batch: energies, forces (and stress) from the neighbour list
    integrators.py  step functions: velocity Verlet, Langevin, Nosé-Hoover chain, Bussi, NPT
    relax.py        batched FIRE with a cell filter, and the queue that refills the batch
"""

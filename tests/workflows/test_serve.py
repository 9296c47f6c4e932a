"""``mlff serve``: a real i-PI gets the calculator's energies and forces, and every way a run can
go wrong (no server, a server that goes away, a bad address, another system) ends in one line.

The i-PI test starts ``i-pi`` (the ``ipi`` package, a test dependency) in a subprocess; the
others talk to a stand-in server built on ASE's side of the same protocol."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import units
from ase.build import molecule
from ase.calculators.socketio import IPIProtocol
from click.testing import CliRunner
from mlff.workflows.cli import cli

from mlff import MLFFCalculator, save_model
from tests.workflows.conftest import cu_vacancy, randomised_model

IPI_SCRIPT = Path(sys.executable).with_name("i-pi")
HAVE_IPI = importlib.util.find_spec("ipi") is not None and IPI_SCRIPT.is_file()
IPI_LIMIT_S = 90  # a hung i-PI is killed after this; the served run then fails in one line
STEPS = 10

IPI_INPUT = """<simulation verbosity="low" floatformat="%.17e" sockets_prefix="{prefix}">
  <output prefix="sim">
    <properties filename="out" stride="1">[ step, potential, {vectors} ]</properties>
  </output>
  <total_steps>{steps}</total_steps>
  <prng><seed>12345</seed></prng>
  <ffsocket name="mlff" mode="unix" pbc="false"><address>ethanol</address></ffsocket>
  <system>
    <initialize nbeads="1">
      <file mode="xyz">init.xyz</file>
      <velocities mode="thermal" units="kelvin">300</velocities>
    </initialize>
    <forces><force forcefield="mlff"/></forces>
    <motion mode="dynamics">
      <dynamics mode="nve"><timestep units="femtosecond">0.5</timestep></dynamics>
    </motion>
  </system>
</simulation>
"""


def invoke(args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result) -> str:
    """The last line of a failed command, after checking that it failed without a traceback."""
    assert result.exit_code not in (0, None), result.output
    assert "Traceback" not in result.output, result.output
    assert not isinstance(result.exception, (AssertionError, TypeError, KeyError, RuntimeError))
    return result.output.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def hco_model_file(tmp_path_factory) -> Path:
    """A tiny randomised float64 EGNN for H, C, O with a 5 Å cutoff (ethanol sees every pair)."""
    path = tmp_path_factory.mktemp("models") / "hco.pt"
    save_model(randomised_model(elements=["H", "C", "O"], cutoff=5.0), path)
    return path


@pytest.fixture
def socket_dir():
    """A short folder for unix sockets (their paths may not exceed 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="mlff-ipi-") as folder:
        yield folder + "/"


def _ipi_files(folder: Path, atoms, socket_prefix: str) -> None:
    """i-PI's input.xml and its initial configuration (Å, in a 20 Å box: a molecule)."""
    lines = [
        str(len(atoms)),
        "# CELL(abcABC): 20 20 20 90 90 90 positions{angstrom} cell{angstrom}",
        *(
            f"{s} {x:.12f} {y:.12f} {z:.12f}"
            for s, (x, y, z) in zip(atoms.symbols, atoms.positions, strict=True)
        ),
    ]
    (folder / "init.xyz").write_text("\n".join(lines) + "\n")
    # positions and forces of every atom, printed at full precision (the xyz trajectory has 6
    # digits): each row of sim.out is one configuration i-PI sent and what it got back
    vectors = ", ".join(
        f"{name}(atom={k})" for name in ("atom_x", "atom_f") for k in range(len(atoms))
    )
    text = IPI_INPUT.format(prefix=socket_prefix, vectors=vectors, steps=STEPS)
    (folder / "input.xml").write_text(text)


@pytest.mark.skipif(not HAVE_IPI, reason="i-PI (the ipi package) is not installed")
def test_ipi_gets_the_calculators_energies_and_forces(hco_model_file, tmp_path, socket_dir):
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=2)
    structure = tmp_path / "ethanol.xyz"
    ase.io.write(structure, atoms)
    run = tmp_path / "ipi"
    run.mkdir()
    _ipi_files(run, atoms, socket_dir)
    log = (run / "ipi.log").open("w")
    ipi = subprocess.Popen(
        [sys.executable, str(IPI_SCRIPT), "input.xml"], cwd=run, stdout=log, stderr=log
    )
    watchdog = threading.Timer(IPI_LIMIT_S, ipi.kill)
    watchdog.start()
    try:
        result = invoke(
            [
                "serve", hco_model_file, structure, "--unix", "ethanol",
                "--sockets-prefix", socket_dir, "--timeout", 30, "--device", "cpu",
            ]
        )  # fmt: skip
        assert result.exit_code == 0, result.output + (run / "ipi.log").read_text()[-2000:]
        assert ipi.wait(timeout=30) == 0
    finally:
        watchdog.cancel()
        if ipi.poll() is None:
            ipi.kill()
            ipi.wait()
        log.close()
    # velocity Verlet: the initial forces, then one call per step
    assert f"{STEPS + 1} force call(s) answered" in result.output
    table = np.loadtxt(run / "sim.out", ndmin=2)
    n = len(atoms)
    assert table.shape == (STEPS + 1, 2 + 6 * n)
    np.testing.assert_array_equal(table[:, 0], np.arange(STEPS + 1))
    positions = table[:, 2 : 2 + 3 * n].reshape(-1, n, 3) * units.Bohr  # Bohr -> Å
    ipi_energies = table[:, 1] * units.Ha  # Hartree -> eV
    ipi_forces = table[:, 2 + 3 * n :].reshape(-1, n, 3) * units.Ha / units.Bohr
    assert np.ptp(positions[:, 0, 0]) > 1e-4, "the atoms did not move: no dynamics to compare"
    calculator = MLFFCalculator(hco_model_file, device="cpu", dtype="float64")
    energies, forces = [], []
    for frame in positions:
        atoms.positions = frame
        atoms.calc = calculator
        energies.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())
    assert np.ptp(energies) > 1e-6, "energies do not change: the comparison would be empty"
    # i-PI prints the very numbers it was sent (17 digits): equal up to the unit round trip
    np.testing.assert_allclose(ipi_energies, energies, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ipi_forces, np.array(forces), rtol=1e-10, atol=1e-12)


class StandInServer:
    """A one-client i-PI stand-in on a unix socket: ``script(protocol)`` plays the server's side
    (ASE's IPIProtocol: ``calculate`` sends a configuration and gets forces back, ``end`` sends
    EXIT), then the connection closes."""

    def __init__(self, path: str, script, delay_s: float = 0.0) -> None:
        self.path, self.script, self.delay_s = path, script, delay_s
        self.results: list[dict] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            threading.Event().wait(self.delay_s)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
                server.bind(self.path)
                server.listen(1)
                server.settimeout(30)
                connection, _ = server.accept()
                with connection:
                    connection.settimeout(30)
                    self.script(IPIProtocol(connection), self.results)
        except BaseException as error:  # reported by the test through self.error
            self.error = error

    def __enter__(self) -> StandInServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.thread.join(timeout=40)
        assert not self.thread.is_alive(), "the stand-in server did not finish"


def _serve(model, structure, socket_dir, *extra):
    return invoke(
        ["serve", model, structure, "--unix", "test", "--sockets-prefix", socket_dir, *extra]
    )


def test_serve_answers_force_calls_until_exit_after_waiting_for_the_server(
    hco_model_file, ethanol_file, socket_dir
):
    atoms = ase.io.read(ethanol_file)
    cell = np.eye(3) * 20.0

    def two_calls_then_exit(protocol, results):
        for shift in (0.0, 0.1):
            results.append(protocol.calculate(atoms.positions + shift, cell))
        protocol.end()

    with StandInServer(socket_dir + "test", two_calls_then_exit, delay_s=0.5) as server:
        result = _serve(hco_model_file, ethanol_file, socket_dir, "--timeout", 20, "--json")
    assert server.error is None, server.error
    assert result.exit_code == 0, result.output
    assert '"force_calls": 2' in result.output
    atoms.calc = MLFFCalculator(hco_model_file, device="cpu")
    for shift, answer in zip((0.0, 0.1), server.results, strict=True):
        atoms.positions = ase.io.read(ethanol_file).positions + shift
        assert answer["energy"] == pytest.approx(atoms.get_potential_energy(), rel=1e-12)
        np.testing.assert_allclose(answer["forces"], atoms.get_forces(), rtol=1e-10, atol=1e-12)


def test_a_periodic_structure_sends_the_virial(model_file, tmp_path, socket_dir):
    atoms = cu_vacancy()
    structure = tmp_path / "cu.extxyz"
    ase.io.write(structure, atoms)

    def one_call(protocol, results):
        results.append(protocol.calculate(atoms.positions, atoms.cell.array))
        protocol.end()

    with StandInServer(socket_dir + "test", one_call) as server:
        result = _serve(model_file, structure, socket_dir, "--timeout", 20)
    assert result.exit_code == 0, result.output
    atoms.calc = MLFFCalculator(model_file, device="cpu")
    virial = -atoms.get_volume() * atoms.get_stress(voigt=False)  # eV
    assert np.abs(virial).max() > 1e-3
    np.testing.assert_allclose(server.results[0]["virial"], virial, rtol=1e-10, atol=1e-12)


def test_a_server_that_goes_away_mid_run_is_one_line(hco_model_file, ethanol_file, socket_dir):
    atoms = ase.io.read(ethanol_file)

    def one_call_then_close(protocol, results):
        results.append(protocol.calculate(atoms.positions, np.eye(3) * 20.0))

    with StandInServer(socket_dir + "test", one_call_then_close):
        result = _serve(hco_model_file, ethanol_file, socket_dir, "--timeout", 20)
    line = one_line_error(result)
    assert "went away after 1 force call(s) without ending the run" in line, line
    assert f"unix socket {socket_dir}test" in line


def test_another_atom_count_from_ipi_is_one_line(hco_model_file, ethanol_file, socket_dir):
    def five_atoms(protocol, results):
        protocol.status()
        protocol.sendposdata(np.eye(3) * 20.0, np.eye(3) / 20.0, np.zeros((5, 3)))
        protocol.status()  # the client hangs up instead of answering

    with StandInServer(socket_dir + "test", five_atoms) as server:
        result = _serve(hco_model_file, ethanol_file, socket_dir, "--timeout", 20)
    line = one_line_error(result)
    assert "sent 5 atoms, but the structure has 9" in line, line
    assert server.results == []


def test_no_server_is_one_line_naming_the_address(hco_model_file, ethanol_file, socket_dir):
    line = one_line_error(_serve(hco_model_file, ethanol_file, socket_dir, "--timeout", 0))
    assert line.endswith(
        f"no i-PI server at unix socket {socket_dir}test (no such socket file): "
        "start i-PI first, or check the address"
    ), line
    with socket.socket() as probe:  # a free port: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = ["serve", hco_model_file, ethanol_file, "--ipi", f"127.0.0.1:{port}", "--timeout", 0.3]
    line = one_line_error(invoke(args))
    assert f"no i-PI server at 127.0.0.1:{port} (connection refused, waited 0.3 s)" in line, line


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--ipi", "localhost"], "'localhost' is not HOST:PORT"),
        (["--ipi", "localhost:99999"], "'localhost:99999' is not HOST:PORT"),
        (["--ipi", ":31415"], "':31415' is not HOST:PORT"),
        (["--ipi", "localhost:31415", "--unix", "x"], "give exactly one of --ipi"),
        ([], "give exactly one of --ipi"),
    ],
)
def test_bad_addresses_are_one_line(hco_model_file, ethanol_file, options, expected):
    line = one_line_error(invoke(["serve", hco_model_file, ethanol_file, *options]))
    assert expected in line, line


def test_an_element_the_model_lacks_is_one_line(hco_model_file, tmp_path, socket_dir):
    path = tmp_path / "ammonia.xyz"
    ase.io.write(path, molecule("NH3"))
    line = one_line_error(_serve(hco_model_file, path, socket_dir, "--timeout", 0))
    assert "ammonia.xyz, frame 0: element(s) N not known to the model" in line, line

"""Serve an ASE calculator (an :class:`~mlff.calculator.MLFFCalculator`) to a running i-PI.

i-PI integrates the equations of motion (path integrals, replica exchange, enhanced sampling)
and asks its clients, over a socket, for the energy, forces and virial of each configuration it
sends. This module connects ASE's :class:`~ase.calculators.socketio.SocketClient` to such a
server; ASE converts i-PI's atomic units (Bohr, Hartree) to eV and Å both ways.

i-PI sends positions and the cell only. The species, their order and the periodicity come from
the ``atoms`` the caller gives, which must hold the same atoms in the same order as i-PI's own
input file; the atom count is checked on every configuration.

>>> summary = serve(atoms, MLFFCalculator("model.pt"), IPIAddress.unix("ethanol"))
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.calculators.socketio import IPIProtocol, SocketClient, SocketClosed
from ase.parallel import DummyMPI

from mlff.errors import MLFFError

# i-PI's (and ASE's) default: a unix socket named NAME lives at /tmp/ipi_NAME
DEFAULT_SOCKETS_PREFIX = "/tmp/ipi_"
# messages a client receives in i-PI's protocol (ASE's SocketClient answers each)
SERVER_MESSAGES = ("STATUS", "INIT", "POSDATA", "GETFORCE", "EXIT")
RETRY_INTERVAL_S = 0.25


class IPIError(MLFFError):
    """An i-PI server that cannot be reached, goes away, or sends what the structure cannot take."""


@dataclass(frozen=True)
class IPIAddress:
    """Where an i-PI server listens: ``host`` and ``port`` (inet socket) or ``path`` (unix)."""

    host: str | None = None
    port: int | None = None
    path: str | None = None

    @classmethod
    def inet(cls, text: str) -> IPIAddress:
        """``"HOST:PORT"`` (an IPv6 host in brackets, ``"[::1]:31415"``), as in i-PI's
        ``<ffsocket mode="inet">`` ``<address>`` and ``<port>``. Raises ``ValueError``."""
        host, sep, port = text.strip().rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                f"i-PI address {text!r} is not HOST:PORT with a port from 1 to 65535 "
                "(e.g. localhost:31415)"
            )
        return cls(host=host, port=int(port))

    @classmethod
    def unix(cls, name: str, prefix: str = DEFAULT_SOCKETS_PREFIX) -> IPIAddress:
        """The unix socket ``prefix + name``: i-PI's ``<address>`` and ``sockets_prefix``."""
        if not name or "\0" in name:
            raise ValueError(f"i-PI unix socket name {name!r} is empty or holds a NUL byte")
        return cls(path=f"{prefix}{name}")

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix socket {self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class ServeSummary:
    """How a served run went: force calls answered, atoms per call, wall time (s)."""

    address: str
    n_atoms: int
    force_calls: int
    wall_s: float


def connect(address: IPIAddress, timeout: float = 60.0) -> socket.socket:
    """A blocking socket connected to the i-PI server at ``address``.

    Retries every 0.25 s for up to ``timeout`` seconds while nothing listens there yet (i-PI
    still starting); 0 tries once. Raises :class:`IPIError` naming the address.
    """
    deadline = time.monotonic() + max(float(timeout), 0.0)
    while True:
        try:
            return _connect_once(address, max(deadline - time.monotonic(), 1.0))
        except (ConnectionRefusedError, FileNotFoundError) as error:
            if time.monotonic() + RETRY_INTERVAL_S > deadline:
                reason = "no such socket file" if isinstance(error, FileNotFoundError) else None
                waited = f", waited {timeout:g} s" if timeout > 0 else ""
                raise IPIError(
                    f"no i-PI server at {address} ({reason or 'connection refused'}{waited}): "
                    "start i-PI first, or check the address"
                ) from None
            time.sleep(RETRY_INTERVAL_S)
        except socket.gaierror as error:
            raise IPIError(f"i-PI address {address}: unknown host ({error.strerror})") from None
        except OSError as error:  # a path too long, no permission, an unreachable network
            reason = error.strerror or str(error)
            raise IPIError(f"cannot connect to i-PI at {address}: {reason}") from None


def _connect_once(address: IPIAddress, timeout: float) -> socket.socket:
    if address.path is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(address.path)
        except OSError:
            sock.close()
            raise
    else:
        sock = socket.create_connection((address.host, address.port), timeout=timeout)
    sock.settimeout(None)  # i-PI may be silent for long between steps (other clients, output)
    return sock


class _CheckedProtocol(IPIProtocol):
    """ASE's client side of i-PI's protocol, with three checks ASE does not make: the atom count
    of each configuration, unknown messages, and a connection closed without EXIT (ASE takes that
    for a normal end)."""

    def __init__(self, sock: socket.socket, n_atoms: int, address: IPIAddress) -> None:
        super().__init__(sock)
        self.n_atoms = n_atoms
        self.address = address

    def recvmsg(self) -> str:
        try:
            message = super().recvmsg()
        except SocketClosed:
            # not a SocketClosed, which ASE's loop would take for EXIT
            raise ConnectionResetError("closed the connection without EXIT") from None
        if message not in SERVER_MESSAGES:
            raise IPIError(f"i-PI at {self.address} sent an unknown message {message!r}")
        return message

    def recvposdata(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        try:
            cell, icell, positions = super().recvposdata()
        except AssertionError:  # ASE's check that every number is finite
            raise IPIError(f"i-PI at {self.address} sent non-finite positions or cell") from None
        if len(positions) != self.n_atoms:
            raise IPIError(
                f"i-PI at {self.address} sent {len(positions)} atoms, but the structure has "
                f"{self.n_atoms}: give the structure of i-PI's input (same atoms, same order)"
            )
        return cell, icell, positions


class _ConnectedClient(SocketClient):
    """ASE's SocketClient on a socket from :func:`connect`.

    ``SocketClient.__init__`` connects by itself, at once and only to unix sockets under
    /tmp/ipi_; this sets the attributes it sets, for one process (no MPI), and keeps its loop.
    """

    def __init__(self, sock: socket.socket, protocol: IPIProtocol, address: IPIAddress) -> None:
        self.comm = DummyMPI()
        self.host, self.port, self.unixsocket = address.host, address.port, address.path
        self.protocol = protocol
        self.log = protocol.log
        self.closed = False
        self.bead_index = 0
        self.bead_initbytes = b""
        self.state = "READY"


def serve(
    atoms: Atoms,
    calculator: Calculator,
    address: IPIAddress,
    timeout: float = 60.0,
    on_force_call: Callable[[int], None] | None = None,
) -> ServeSummary:
    """Answer i-PI's force requests with ``calculator`` until i-PI ends the run (EXIT).

    Args:
        atoms: species, order and pbc of i-PI's system; positions and cell come from i-PI and
            are written into ``atoms``. The virial (from the stress) is sent for periodic atoms,
            zero otherwise.
        calculator: any ASE calculator giving energy (eV) and forces (eV/Å), and the stress
            (eV/Å³) for periodic atoms; attached to ``atoms``.
        address: where i-PI listens.
        timeout: seconds to wait for the server to come up (see :func:`connect`).
        on_force_call: called with the number of force calls answered so far after each one.

    Raises :class:`IPIError` when the server is not there, goes away before EXIT, sends a
    configuration with another atom count, or breaks the protocol.
    """
    if len(atoms) == 0:
        raise IPIError("the structure served to i-PI has no atoms")
    sock = connect(address, timeout)
    atoms.calc = calculator
    client = _ConnectedClient(sock, _CheckedProtocol(sock, len(atoms), address), address)
    calls = 0
    start = time.perf_counter()
    try:
        for _ in client.irun(atoms, use_stress=bool(np.any(atoms.pbc))):
            calls += 1
            if on_force_call is not None:
                on_force_call(calls)
    except (SocketClosed, ConnectionError) as error:  # closed, reset, broken pipe
        reason = error.strerror or str(error) or type(error).__name__
        raise IPIError(
            f"i-PI at {address} went away after {calls} force call(s) without ending the run "
            f"({reason})"
        ) from None
    finally:
        client.close()
    return ServeSummary(str(address), len(atoms), calls, time.perf_counter() - start)

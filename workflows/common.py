"""Helpers shared by the CLI commands: one-line errors, reading structures, JSON output."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any

import click

PYMATGEN_SUFFIXES = {".cif", ".mcif"}
PYMATGEN_NAMES = ("POSCAR", "CONTCAR")
# trajectories read through mdtraj, with the topology PDB that mlff md run writes beside them
MDTRAJ_SUFFIXES = {".dcd", ".xtc", ".h5"}
# exit status of a run stopped by a signal (after writing its files), as shells report them
SIGNAL_EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


def cli_errors(function):
    """Turn user-caused errors (mlff's, bad files, bad values) into one-line click errors."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        from mlff.errors import MLFFError

        try:
            return function(*args, **kwargs)
        except click.ClickException:
            raise
        except (MLFFError, FileNotFoundError, ValueError) as error:
            message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise click.ClickException(message) from None
        except OSError as error:  # an output that cannot be written: a folder, no permission
            where = error.filename or "file"
            raise click.ClickException(f"{where}: {error.strerror or error}") from None

    return wrapper


def is_pymatgen_file(path: Path) -> bool:
    """CIF and POSCAR/CONTCAR files are read through pymatgen."""
    name = path.name.upper()
    return path.suffix.lower() in PYMATGEN_SUFFIXES or name.startswith(PYMATGEN_NAMES)


def read_structures(path: str | Path, index: str | int = ":") -> list:
    """Read ``ase.Atoms`` from any ASE-readable file, CIF/POSCAR through pymatgen, or DCD/XTC/HDF5
    trajectories through mdtraj.

    ``index`` is an ASE index string (":" all frames, "-1" last). Raises ``ValueError`` with a
    one-line message naming the file when it cannot be read or holds no structure.
    """
    import ase.io
    from ase.io.formats import UnknownFileTypeError

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    if path.suffix.lower() in MDTRAJ_SUFFIXES:
        from mlff.md.trajectory import read_mdtraj_frames

        return read_mdtraj_frames(path, _as_slice(index))
    try:
        if is_pymatgen_file(path):
            frames = _read_with_pymatgen(path)
            frames = (
                frames[_as_slice(index)]
                if isinstance(_as_slice(index), slice)
                else [frames[_as_slice(index)]]
            )
        else:
            frames = ase.io.read(str(path), index=index)
            frames = frames if isinstance(frames, list) else [frames]
    except ValueError as error:
        if str(error).startswith(str(path)):
            raise
        raise ValueError(f"{path}: cannot read structures ({_first_line(error)})") from None
    except (StopIteration, IndexError):  # an index past the last frame
        raise ValueError(f"{path}: has no frame {index} ({_count_frames(path)})") from None
    except UnknownFileTypeError as error:
        raise ValueError(
            f"{path}: not a structure file ASE or pymatgen reads ({_first_line(error)}); "
            "use extxyz, .traj, CIF, POSCAR or another ASE format"
        ) from None
    except KeyError as error:  # ASE's readers look symbols up in a table
        raise ValueError(
            f"{path}: cannot read structures (unknown element symbol or key {error})"
        ) from None
    except Exception as error:  # ASE and pymatgen raise many types on garbage input
        raise ValueError(f"{path}: cannot read structures ({_first_line(error)})") from None
    if not frames:
        raise ValueError(f"{path}: no structures found (index {index!r})")
    return frames


def _count_frames(path: Path) -> str:
    """ "N frame(s)" in ``path``, for error messages."""
    import ase.io

    try:
        return f"it holds {len(ase.io.read(str(path), index=':'))} frame(s)"
    except Exception:  # the message is already about a bad index; counting is a courtesy
        return "its frames could not be counted"


def _as_slice(index: str | int):
    if isinstance(index, int):
        return index
    if ":" in index:
        parts = [int(p) if p else None for p in index.split(":")]
        return slice(*parts)
    return int(index)


def _read_with_pymatgen(path: Path) -> list:
    import warnings

    from pymatgen.io.ase import AseAtomsAdaptor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if path.suffix.lower() in PYMATGEN_SUFFIXES:
            from pymatgen.io.cif import CifParser

            structures = CifParser(str(path)).parse_structures(primitive=False)
        else:
            from pymatgen.io.vasp import Poscar

            structures = [Poscar.from_file(str(path)).structure]
    if not structures:
        raise ValueError(f"{path}: no structure in file")
    return [AseAtomsAdaptor.get_atoms(s) for s in structures]


def write_structures(path: str | Path, frames: list) -> None:
    """Write frames atomically; CIF and POSCAR through pymatgen, anything else through ASE."""
    import ase.io

    from mlff.files import atomic_write

    path = Path(path)
    if is_pymatgen_file(path):
        from pymatgen.io.ase import AseAtomsAdaptor

        if path.suffix.lower() in PYMATGEN_SUFFIXES:
            from pymatgen.io.cif import CifWriter

            text = "".join(str(CifWriter(AseAtomsAdaptor.get_structure(a))) for a in frames)
        else:
            from pymatgen.io.vasp import Poscar

            if len(frames) != 1:
                raise ValueError(f"{path}: POSCAR holds one structure, got {len(frames)}")
            text = Poscar(AseAtomsAdaptor.get_structure(frames[0])).get_str()
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))
        return
    fmt = None if path.suffix else "extxyz"
    atomic_write(path, lambda tmp: ase.io.write(tmp, frames, format=fmt or _ase_format(path)))


def _ase_format(path: Path) -> str | None:
    from ase.io.formats import filetype

    try:
        return filetype(str(path), read=False)
    except Exception:
        return "extxyz"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def emit_json(payload: dict[str, Any]) -> None:
    """Print one JSON object on stdout (the ``--json`` contract)."""
    sys.stdout.write(json.dumps(payload, default=_jsonable) + "\n")
    sys.stdout.flush()


def _jsonable(value: Any):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_checked(path: str | Path, index: str | int = ":") -> list[tuple[str, object]]:
    """Read frames as (``where``, ``ase.Atoms``) pairs, each checked for what makes it unusable:
    non-finite positions, a degenerate cell, overlapping atoms. ``where`` names file and frame."""
    from mlff.graph import check_contacts, check_structure

    frames = read_structures(path, index)
    single = len(frames) == 1 and ":" not in str(index)
    checked = []
    for k, atoms in enumerate(frames):
        where = f"{path}, frame {index if single else k}"
        if not single and str(index) != ":":
            where += f" of {index}"
        check_structure(atoms, where)
        check_contacts(atoms, where)
        atoms.calc = None
        checked.append((where, atoms))
    return checked


def load_calculator(
    model: str | Path,
    structures: list[tuple[str, object]],
    device: str = "auto",
    dtype: str = "float64",
    threads: int | None = None,
    **kwargs,
):
    """An MLFFCalculator for the model file ``model``, ready for ``structures`` (from
    :func:`read_checked`): torch threads set for their size, their elements checked against the
    model's. One-line errors name the model file, or the file and frame at fault."""
    from mlff.calculator import MLFFCalculator
    from mlff.runtime import resolve_device, set_threads

    largest = max((len(atoms) for _, atoms in structures), default=None)
    set_threads(threads, resolve_device(device), largest)
    calculator = MLFFCalculator(str(model), device=device, dtype=dtype, **kwargs)
    for where, atoms in structures:
        check_elements(atoms, calculator, where)
    return calculator


def check_elements(atoms, calculator, where: str) -> None:
    """Raise ``UnknownElementError`` naming ``where`` for elements of ``atoms`` the model lacks."""
    from mlff.errors import UnknownElementError

    known = set(calculator.model.elements)
    unknown = sorted(set(atoms.get_chemical_symbols()) - known)
    if unknown:
        raise UnknownElementError(
            f"{where}: element(s) {', '.join(unknown)} not known to the model, "
            f"which was built for {', '.join(calculator.model.elements)}"
        )


def finite(ctx, param, value):
    """click callback: refuse NaN and infinite numbers, naming the option."""
    import math

    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number", ctx=ctx, param=param)
    return value


def compile_option(command=None, *, auto: bool = False):
    """The --compile option (``compile_mode``) of eval, md run, relax, bench and check; with
    ``auto`` it also offers (and defaults to) "auto", resolved by :func:`resolve_compile_mode`."""

    def decorate(command):
        choices = ["auto", "none", "inductor"] if auto else ["none", "inductor"]
        help_text = (
            "none: eager (the reference); inductor: energies, forces and stress as one "
            "torch.compile graph (compiling takes a minute or two at the start; faster calls for "
            "molecules and even-density cells; other large cells stay eager)."
        )
        if auto:
            help_text += (
                " auto: inductor for runs of an EGNN on a CPU long enough that compiling pays "
                "for itself twice (40,000 steps up to 4,096 edges per call; fewer for larger "
                "calls in neighbour blocks); else none."
            )
        return click.option(
            "--compile",
            "compile_mode",
            type=click.Choice(choices),
            default="auto" if auto else "none",
            show_default=True,
            help=help_text,
        )(command)

    return decorate if command is None else decorate(command)


def resolve_compile_mode(
    compile_mode: str,
    model: str | Path,
    structures: list,
    steps: int,
    device: str = "auto",
    dtype: str = "float64",
) -> str:
    """``--compile auto`` -> "inductor" or "none" for ``steps`` steps of ``structures`` (atoms,
    all in one batch) with the model file ``model`` (see :func:`mlff.compiled.auto_compile_mode`);
    any other mode is returned as it is."""
    if compile_mode != "auto":
        return compile_mode
    from mlff.calculator import prepare_model
    from mlff.compiled import AUTO_COMPILE_FEWEST_STEPS, auto_compile_mode
    from mlff.graph import batch_graphs, graph_from_atoms

    if steps < AUTO_COMPILE_FEWEST_STEPS:  # too short to pay for compiling, whatever the model
        return "none"

    prepared = prepare_model(str(model), device, dtype)
    graph = batch_graphs([graph_from_atoms(atoms, prepared.cutoff) for atoms in structures])
    return auto_compile_mode(prepared, graph.n_edges, steps, graph)


def runtime_options(command=None, *, auto_compile: bool = False):
    """The --device, --dtype, --threads and --compile options of md run, relax, bench and check
    (``auto_compile``: --compile also offers and defaults to "auto")."""
    if command is None:
        return lambda command: runtime_options(command, auto_compile=auto_compile)
    command = compile_option(command, auto=auto_compile)
    command = click.option(
        "--threads",
        type=click.IntRange(min=1),
        default=None,
        help="torch CPU threads [default: 1 below 1000 atoms, else torch's].",
    )(command)
    command = click.option(
        "--dtype", type=click.Choice(["float64", "float32"]), default="float64", show_default=True
    )(command)
    return click.option(
        "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
    )(command)

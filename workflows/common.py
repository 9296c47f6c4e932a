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

    return wrapper


def is_pymatgen_file(path: Path) -> bool:
    """CIF and POSCAR/CONTCAR files are read through pymatgen."""
    name = path.name.upper()
    return path.suffix.lower() in PYMATGEN_SUFFIXES or name.startswith(PYMATGEN_NAMES)


def read_structures(path: str | Path, index: str | int = ":") -> list:
    """Read ``ase.Atoms`` from any ASE-readable file, or CIF/POSCAR through pymatgen.

    ``index`` is an ASE index string (":" all frames, "-1" last). Raises ``ValueError`` with a
    one-line message naming the file when it cannot be read or holds no structure.
    """
    import ase.io

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
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
    except Exception as error:  # ASE and pymatgen raise many types on garbage input
        raise ValueError(f"{path}: cannot read structures ({_first_line(error)})") from None
    if not frames:
        raise ValueError(f"{path}: no structures found (index {index!r})")
    return frames


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


def load_calculator(model: str | Path, device: str = "auto", dtype: str = "float64", **kwargs):
    """An MLFFCalculator for the model file ``model`` (one-line errors name the file)."""
    from mlff.calculator import MLFFCalculator

    return MLFFCalculator(str(model), device=device, dtype=dtype, **kwargs)


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


# below this many atoms torch's intra-op threads cost more than they give on a CPU
SMALL_SYSTEM_ATOMS = 1000


def set_threads(threads: int | None, n_atoms: int | None = None) -> None:
    """Set torch's CPU threads: ``threads`` when given, else one thread for small structures
    (fewer than SMALL_SYSTEM_ATOMS atoms), whose tiny tensors only pay for the thread pool."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    elif n_atoms is not None and n_atoms < SMALL_SYSTEM_ATOMS:
        torch.set_num_threads(1)


def finite(ctx, param, value):
    """click callback: refuse NaN and infinite numbers, naming the option."""
    import math

    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number", ctx=ctx, param=param)
    return value


def runtime_options(command):
    """The --device, --dtype and --threads options shared by md run, relax, bench and check."""
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

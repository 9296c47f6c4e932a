"""What LAMMPS must be told about a model: the element map, the cutoff and the ghost shell.

A message-passing model of depth ``D`` (hops: each layer sees one cutoff further) gives atom
``i`` an energy that depends on every atom within ``D x cutoff`` of it. LAMMPS therefore needs
ghost atoms out to ``D x cutoff`` plus the neighbour skin (``comm_modify cutoff``), and neighbour
lists of the ghost atoms (the ``1`` after the file name in ``pair_style mliap unified``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ase.data import atomic_numbers

from mlff.errors import LAMMPSError

# LAMMPS's default neighbour skin in metal units (Å), used when the caller does not give one
DEFAULT_SKIN = 2.0
# the file name that tells `pair_style mliap unified` to use the object loaded from Python
LOADED_FROM_PYTHON = "EXISTS"


def message_passing_depth(model) -> int:
    """Hops of the receptive field of ``model`` (a ForceField): energies see ``depth x cutoff``.

    Each potential layer passes messages one cutoff further. The plain species embedding sees
    nothing; the Uni-Mol encoder sees one cutoff (its density channel) plus one per attention
    layer, and its pair features of ``(i, j)`` reach that far around ``j``, hence one more.
    """
    potential = model.config.get("potential")
    encoder = model.config.get("encoder")
    if potential not in ("egnn", "tfn"):
        raise LAMMPSError(f"cannot tell the receptive field of potential {potential!r}")
    depth = len(model.potential.layers)
    if encoder == "unimol":
        depth += len(model.encoder.layers) + 1
    elif encoder != "none":
        raise LAMMPSError(f"cannot tell the receptive field of encoder {encoder!r}")
    return depth


def check_type_elements(type_elements: Sequence[str] | None, model_elements: Sequence[str]):
    """The element of each LAMMPS atom type (type 1 first), checked against the model's.

    ``None`` or empty: the model's own elements, one type each. Raises :class:`LAMMPSError` for a
    symbol that is not an element or one the model was not built for.
    """
    if not type_elements:
        return tuple(model_elements)
    type_elements = tuple(str(symbol) for symbol in type_elements)
    unknown = [s for s in type_elements if s not in atomic_numbers or s == "X"]
    if unknown:
        raise LAMMPSError(
            f"element map {' '.join(type_elements)}: {', '.join(unknown)} is not an element "
            "symbol (give one symbol per LAMMPS atom type, e.g. --elements Cu --elements Au)"
        )
    missing = sorted(set(type_elements) - set(model_elements))
    if missing:
        raise LAMMPSError(
            f"element map {' '.join(type_elements)} does not match the model: "
            f"{', '.join(missing)} not among its elements {' '.join(model_elements)}"
        )
    return type_elements


@dataclass(frozen=True)
class LAMMPSSettings:
    """The model's side of a LAMMPS input.

    type_elements: element of LAMMPS atom type 1, 2, ... (the ``pair_coeff * *`` line).
    model_elements: the model's elements, in its species order.
    cutoff: pair cutoff in Å (LAMMPS's ``rcutfac`` is half of it).
    depth: message-passing hops (:func:`message_passing_depth`).
    """

    type_elements: tuple[str, ...]
    model_elements: tuple[str, ...]
    cutoff: float
    depth: int

    @property
    def element_types(self) -> list[str]:
        """The element names LAMMPS may map types to: those of the map, each once."""
        return list(dict.fromkeys(self.type_elements))

    @property
    def ghost_shell(self) -> float:
        """Å: ghost atoms must reach this far (before the skin) for exact energies."""
        return self.depth * self.cutoff

    def comm_cutoff(self, skin: float = DEFAULT_SKIN) -> float:
        """Å: the ``comm_modify cutoff`` that keeps the ghost shell exact between rebuilds."""
        return self.ghost_shell + float(skin)

    def check_comm_cutoff(self, comm_cutoff: float, skin: float = DEFAULT_SKIN) -> None:
        """Raise :class:`LAMMPSError` if ``comm_cutoff`` (Å) is too short for this model."""
        needed = self.comm_cutoff(skin)
        if comm_cutoff < needed - 1e-9:
            raise LAMMPSError(
                f"ghost shell {comm_cutoff:g} Å is too small for this model: {self.depth} "
                f"message-passing hop(s) x cutoff {self.cutoff:g} Å + skin {skin:g} Å needs "
                f"'comm_modify cutoff {needed:g}'"
            )

    def commands(self, file: str = LOADED_FROM_PYTHON, skin: float = DEFAULT_SKIN) -> list[str]:
        """The LAMMPS input lines for this model (after the box is defined)."""
        ghost_lists = 1 if self.depth > 1 else 0
        return [
            f"pair_style mliap unified {file} {ghost_lists}",
            f"pair_coeff * * {' '.join(self.type_elements)}",
            f"comm_modify cutoff {self.comm_cutoff(skin):g}",
        ]

    def describe(self, skin: float = DEFAULT_SKIN) -> str:
        """A few lines for people: what LAMMPS needs, and why."""
        lines = [
            f"elements (LAMMPS types 1..{len(self.type_elements)}): {' '.join(self.type_elements)}",
            f"cutoff: {self.cutoff:g} Å; message passing: {self.depth} hop(s); ghost shell: "
            f"{self.ghost_shell:g} Å + skin {skin:g} Å = {self.comm_cutoff(skin):g} Å",
            "LAMMPS input (newton on, the default; after the box is defined):",
        ]
        return "\n".join(lines + [f"  {line}" for line in self.commands(skin=skin)])

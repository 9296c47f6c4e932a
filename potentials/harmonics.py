"""Real spherical harmonics of degrees 1..3 as one matrix product of monomials (EGNN angles)."""

from __future__ import annotations

import math

import torch


def real_harmonics(
    unit: torch.Tensor, order: int, matrix: torch.Tensor | None = None
) -> torch.Tensor:
    """Real spherical harmonics of degrees 1..``order`` (<= 3) of unit vectors (n, 3).

    Returns (n, 3), (n, 8) or (n, 15) columns, degree by degree, normalised so that the squares
    of each degree's components sum to 1 (``sum_m Y_lm(a) Y_lm(b) = P_l(a . b)``). On unit
    vectors each harmonic is a homogeneous polynomial of its degree (1 = x² + y² + z²), so all
    are one matrix product of the monomials ``[u, u ⊗ u, u ⊗ u ⊗ u]`` (few, large operations).
    ``matrix``: :func:`harmonic_matrix` of ``order`` in ``unit``'s dtype and device (a module
    keeps it as a buffer); built here when None.
    """
    monomials = [unit]
    if order >= 2:
        pairs = (unit.unsqueeze(-1) * unit.unsqueeze(-2)).flatten(-2)
        monomials.append(pairs)
    if order >= 3:
        monomials.append((pairs.unsqueeze(-1) * unit.unsqueeze(-2)).flatten(-2))
    if matrix is None:
        matrix = harmonic_matrix(order).to(dtype=unit.dtype, device=unit.device)
    return torch.cat(monomials, dim=-1) @ matrix


# each harmonic as {exponents (x, y, z): coefficient}, homogeneous in its degree
_S3, _A, _B, _C = math.sqrt(3.0), math.sqrt(5.0 / 8.0), math.sqrt(15.0), math.sqrt(3.0 / 8.0)
_HARMONICS = {
    1: [{(1, 0, 0): 1.0}, {(0, 1, 0): 1.0}, {(0, 0, 1): 1.0}],
    2: [
        {(1, 1, 0): _S3},
        {(0, 1, 1): _S3},
        {(0, 0, 2): 1.0, (2, 0, 0): -0.5, (0, 2, 0): -0.5},  # (3z² - 1) / 2
        {(1, 0, 1): _S3},
        {(2, 0, 0): 0.5 * _S3, (0, 2, 0): -0.5 * _S3},
    ],
    3: [
        {(2, 1, 0): 3.0 * _A, (0, 3, 0): -_A},
        {(1, 1, 1): _B},
        {(0, 1, 2): 4.0 * _C, (2, 1, 0): -_C, (0, 3, 0): -_C},  # c y (5z² - 1)
        {(0, 0, 3): 1.0, (2, 0, 1): -1.5, (0, 2, 1): -1.5},  # z (5z² - 3) / 2
        {(1, 0, 2): 4.0 * _C, (3, 0, 0): -_C, (1, 2, 0): -_C},  # c x (5z² - 1)
        {(2, 0, 1): 0.5 * _B, (0, 2, 1): -0.5 * _B},
        {(3, 0, 0): _A, (1, 2, 0): -3.0 * _A},
    ],
}


def harmonic_matrix(order: int) -> torch.Tensor:
    """(3 + 9 + 27 up to ``order``, components) coefficients of the harmonics in the monomials
    ``u_a``, ``u_a u_b`` (row 3 + 3a + b), ``u_a u_b u_c`` (row 12 + 9a + 3b + c)."""
    if order not in _HARMONICS:
        raise ValueError(f"real harmonics are implemented for orders 1..3, got {order!r}")
    rows = {1: 3, 2: 12, 3: 39}[order]
    matrix = torch.zeros(rows, sum(2 * l + 1 for l in range(1, order + 1)), dtype=torch.float64)
    column, first_row = 0, 0
    for degree in range(1, order + 1):
        for polynomial in _HARMONICS[degree]:
            for exponents, coefficient in polynomial.items():
                axes = [axis for axis, power in enumerate(exponents) for _ in range(power)]
                row = first_row + sum(a * 3 ** (degree - 1 - k) for k, a in enumerate(axes))
                matrix[row, column] = coefficient
            column += 1
        first_row += 3**degree
    return matrix

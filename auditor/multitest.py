"""Multiple testing: p-values adjusted across the suspects of one batch.

Auditing many suspects at level alpha each would let false accusations add up, so a
batch summary adjusts the per-suspect p-values: Holm's step-down controls the
family-wise error rate (the chance of even one false accusation), Benjamini-Hochberg
the false discovery rate (the expected share of false ones among the accusations).
Both are checked against statsmodels' `multipletests` in the tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

Correction = Literal["holm", "bh", "none"]

DESCRIPTIONS: dict[str, str] = {
    "holm": "Holm step-down (family-wise error rate)",
    "bh": "Benjamini-Hochberg (false discovery rate)",
    "none": "no correction (each suspect tested alone)",
}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values: max over j <= i of (m - j + 1) p_(j), capped at 1."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        adjusted[i] = running
    return adjusted


def benjamini_hochberg(pvalues: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values: min over j >= i of m p_(j) / j, capped at 1."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 1.0
    for rank in range(m - 1, -1, -1):
        i = order[rank]
        running = min(running, m * float(pvalues[i]) / (rank + 1))
        adjusted[i] = min(1.0, running)
    return adjusted


def adjust(pvalues: Sequence[float], method: Correction) -> list[float]:
    for p in pvalues:
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"p-value {p!r} outside [0, 1]")
    if method == "holm":
        return holm(pvalues)
    if method == "bh":
        return benjamini_hochberg(pvalues)
    if method == "none":
        return [float(p) for p in pvalues]
    raise ValueError(f"unknown correction {method!r}")

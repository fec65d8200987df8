"""Patient-disjoint train/val/test splits from a seed.

All images of one patient land in the same split, so no patient's follow-up film leaks from
training into evaluation (NIH has 30,805 patients for 112,120 images). Patients, not images, are
shuffled with a private ``numpy.random.default_rng(seed)``: the global NumPy/torch RNG state is
neither read nor changed.

With ``P`` unique patients and fractions ``(f_train, f_val, f_test)`` (summing to 1), the first
``round(P * f_train)`` shuffled patients are train, the next ``round(P * (f_train + f_val)) -
round(P * f_train)`` are val and the rest test.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

SPLITS = ("train", "val", "test")


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    f = tuple(float(x) for x in fractions)
    if len(f) != 3 or any(x < 0 for x in f) or abs(sum(f) - 1.0) > 1e-6:
        raise ValueError(f"fractions={tuple(fractions)}: expected three non-negative numbers "
                         "(train, val, test) summing to 1")
    return f  # type: ignore[return-value]


def patient_split(patient_ids: Sequence, fractions: Sequence[float] = (0.7, 0.1, 0.2),
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Indices of each split, ``{"train": idx, "val": idx, "test": idx}`` (sorted int64 arrays)."""
    f = check_fractions(fractions)
    pids = np.asarray([str(p) for p in patient_ids], dtype=object)
    unique = np.array(sorted(set(pids)), dtype=object)  # sorted: order-independent of the CSV
    order = unique[np.random.default_rng(seed).permutation(len(unique))]
    n = len(order)
    cut1, cut2 = round(n * f[0]), round(n * (f[0] + f[1]))
    group = {p: 0 for p in order[:cut1]}
    group.update({p: 1 for p in order[cut1:cut2]})
    group.update({p: 2 for p in order[cut2:]})
    g = np.array([group[p] for p in pids], dtype=np.int64)
    return {name: np.flatnonzero(g == k) for k, name in enumerate(SPLITS)}


def select_split(patient_ids: Sequence, split: str, fractions: Sequence[float],
                 seed: int) -> np.ndarray:
    """Indices for ``split`` in ``("all", "train", "val", "test")``."""
    if split == "all":
        return np.arange(len(patient_ids))
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected 'all', 'train', 'val' or 'test'")
    return patient_split(patient_ids, fractions, seed)[split]

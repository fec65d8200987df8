"""Patient-disjoint train/val/test splits and label-fraction subsets: the one rule of the kit.

Every loader without an official split (and the evaluation of any dataset) splits with
:func:`patient_split`; every label fraction (METHOD.md section 5: 0.01, 0.1, 1.0 are fractions, not
percentages) is drawn with :func:`label_fraction`.

All images of one patient land in the same split, so no patient's follow-up film leaks from
training into evaluation (NIH has 30,805 patients for 112,120 images). Patients, not images, are
shuffled with a private ``numpy.random.default_rng(seed)``: the global NumPy/torch RNG state is
neither read nor changed.

With ``P`` unique patients and fractions ``(f_train, f_val, f_test)`` (summing to 1), the first
``round(P * f_train)`` shuffled patients are train, the next ``round(P * (f_train + f_val)) -
round(P * f_train)`` are val and the rest test; a split with a positive fraction that would get
no patient takes one from train (so a tiny dataset still has a val and a test patient), and a split
that leaves train empty is an error.
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
    if f[2] > 0 and cut2 >= n:  # guarantee a test patient
        cut2 = n - 1
        cut1 = min(cut1, cut2)
    if f[1] > 0 and cut2 - cut1 < 1:  # guarantee a val patient
        cut1 = cut2 - 1
    if f[0] > 0 and cut1 < 1:
        raise ValueError(f"{n} patient(s) are too few for fractions {f}: the train split would "
                         "be empty")
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


def _patients(patient_ids) -> tuple[np.ndarray, np.ndarray]:
    pids = np.asarray(patient_ids).astype(str)
    uniq, inverse = np.unique(pids, return_inverse=True)
    return uniq, inverse


def label_fraction(patient_ids: np.ndarray, labels: np.ndarray, fraction: float,
                   seed: int = 0, both_classes: bool = True) -> np.ndarray:
    """Indices of the images of a random ``fraction`` of the patients (seeded, sorted).

    The number of patients kept is ``max(1, round(fraction * n_patients))``. Multi-label aware: with
    ``both_classes`` the first picks (rarest finding first, within that budget) make sure every
    finding that has a positive and a negative patient in the pool has at least one of each in the
    subset, so a per-finding classifier can be fitted; the rest of the budget is filled at random.
    A patient counts as positive for a finding when any of their images is positive.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction}: expected a fraction in (0, 1] (0.01 means 1 %)")
    labels = np.asarray(labels, dtype=np.float64)
    uniq, inverse = _patients(patient_ids)
    if labels.ndim != 2 or labels.shape[0] != inverse.size:
        raise ValueError(f"labels {labels.shape}: expected (N, K) with N = {inverse.size} images")
    n = len(uniq)
    budget = max(1, round(fraction * n))
    rng = np.random.default_rng(seed)
    if budget >= n:
        return np.arange(inverse.size)
    # per-patient class presence: pos[p, k] / neg[p, k]
    pos = np.zeros((n, labels.shape[1]), dtype=bool)
    neg = np.zeros_like(pos)
    np.logical_or.at(pos, inverse, labels == 1)
    np.logical_or.at(neg, inverse, labels == 0)
    chosen: list[int] = []
    taken = np.zeros(n, dtype=bool)
    if both_classes:
        # rarest class first: it has the fewest patients to choose from
        needs = [(pos[:, k].sum(), k, pos) for k in range(pos.shape[1])]
        needs += [(neg[:, k].sum(), k, neg) for k in range(neg.shape[1])]
        for count, k, table in sorted(needs, key=lambda t: (t[0], t[1])):
            if len(chosen) >= budget or count == 0 or table[taken, k].any():
                continue
            candidates = np.flatnonzero(table[:, k] & ~taken)
            p = int(rng.choice(candidates))
            chosen.append(p)
            taken[p] = True
    rest = rng.permutation(np.flatnonzero(~taken))[: budget - len(chosen)]
    taken[rest] = True
    return np.flatnonzero(taken[inverse])

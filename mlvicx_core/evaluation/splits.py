"""Patient-level splits and label-fraction subsets (METHOD.md section 5).

Every split is made over *patients*, never images, so that no patient's films end up on both sides.
Label fractions are fractions (0.01, 0.1, 1.0), not percentages.
"""
from __future__ import annotations

import numpy as np


def _patients(patient_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pids = np.asarray(patient_ids).astype(str)
    uniq, inverse = np.unique(pids, return_inverse=True)
    return uniq, inverse


def patient_split(patient_ids: np.ndarray, val: float = 0.1, test: float = 0.2,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Split image indices into ``train``/``val``/``test`` by patient (seeded).

    ``val`` and ``test`` are the fractions of *patients* in each; each gets at least one patient
    when the fraction is positive. Returns sorted index arrays.
    """
    if val < 0 or test < 0 or val + test >= 1:
        raise ValueError(f"val={val}, test={test}: expected non-negative fractions summing to < 1")
    uniq, inverse = _patients(patient_ids)
    n = len(uniq)
    n_test = max(1, round(test * n)) if test > 0 else 0
    n_val = max(1, round(val * n)) if val > 0 else 0
    if n_test + n_val >= n:
        raise ValueError(f"{n} patients are too few for val={val}, test={test} (train would be empty)")
    order = np.random.default_rng(seed).permutation(n)
    group = np.zeros(n, dtype=int)  # 0 train, 1 val, 2 test
    group[order[:n_test]] = 2
    group[order[n_test:n_test + n_val]] = 1
    g = group[inverse]
    return {name: np.flatnonzero(g == i) for i, name in enumerate(("train", "val", "test"))}


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

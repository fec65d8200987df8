"""k-nearest-neighbour classification on frozen features (cosine similarity).

For a query q and training features x_i (both L2-normalised), the k most similar training images
N_k(q) vote per finding: score_k(q) = mean of y_ik over the neighbours whose label k is known (the
training prevalence when none is). The scores are probabilities in [0, 1], scored by AUROC.
``k`` is chosen on the validation split by :func:`select_k`.
"""
from __future__ import annotations

import numpy as np

from .metrics import nanmean_or_nan, per_finding_auroc


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_scores(x_train: np.ndarray, y_train: np.ndarray, x_query: np.ndarray, k: int = 20,
               chunk: int = 1024) -> np.ndarray:
    """(Nq, K) per-finding scores of the queries from their ``k`` cosine-nearest training images."""
    y_train = np.asarray(y_train, dtype=np.float64)
    if x_train.ndim != 2 or len(x_train) != len(y_train) or x_query.shape[1:] != x_train.shape[1:]:
        raise ValueError(f"x_train {x_train.shape}, y_train {y_train.shape}, x_query "
                         f"{x_query.shape}: expected (N, D), (N, K), (Nq, D)")
    if not 1 <= k:
        raise ValueError(f"k={k}: expected k >= 1")
    k = min(k, len(x_train))
    a, b = _normalise(x_train), _normalise(x_query)
    known = ~np.isnan(y_train)
    y0 = np.where(known, y_train, 0.0)
    prevalence = np.array([nanmean_or_nan(y_train[:, j]) for j in range(y_train.shape[1])])
    prevalence = np.nan_to_num(prevalence, nan=0.5)
    out = np.empty((len(b), y_train.shape[1]))
    for start in range(0, len(b), chunk):  # chunks bound the (Nq, N) similarity matrix
        sim = b[start:start + chunk] @ a.T
        nn_idx = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        votes = y0[nn_idx].sum(axis=1)
        counts = known[nn_idx].sum(axis=1)
        out[start:start + chunk] = np.where(counts > 0, votes / np.maximum(counts, 1), prevalence)
    return out


def select_k(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
             ks: tuple[int, ...] = (5, 10, 20, 50)) -> tuple[int, dict[int, float]]:
    """The ``k`` with the best mean validation AUROC (ties -> smaller k), and every k's score."""
    scores = {k: nanmean_or_nan(per_finding_auroc(y_val, knn_scores(x_train, y_train, x_val, k)))
              for k in ks}
    defined = {k: v for k, v in scores.items() if not np.isnan(v)}
    best = max(defined, key=lambda k: (defined[k], -k)) if defined else ks[0]
    return best, scores

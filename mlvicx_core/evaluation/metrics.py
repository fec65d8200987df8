"""Classification and segmentation scores: AUROC (per finding, mean, bootstrap CIs) and Dice.

AUROC is computed from ranks (the Mann-Whitney statistic), with ties counted one half:

    AUROC = (sum of the ranks of the positives - n1 (n1 + 1) / 2) / (n1 n0)

A finding whose evaluated labels hold a single class has no AUROC: it is reported as NaN
("undefined"), never 0 or 0.5, and the mean AUROC averages the defined findings only. Unknown labels
(NaN) are left out finding by finding.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """AUROC of one finding; labels (N,) in {0, 1, NaN}, scores (N,). NaN if a single class."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
    known = ~np.isnan(y)
    y, s = y[known], s[known]
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0, 1 or NaN (unknown)")
    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def per_finding_auroc(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(N, K) labels and scores -> (K,) AUROCs, NaN where undefined."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    if labels.ndim != 2 or labels.shape != scores.shape:
        raise ValueError(f"expected (N, K) labels and scores of one shape, got {labels.shape} "
                         f"and {scores.shape}")
    return np.array([auroc(labels[:, k], scores[:, k]) for k in range(labels.shape[1])])


def nanmean_or_nan(values: np.ndarray) -> float:
    """Mean of the non-NaN entries; NaN (without a warning) when there are none."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")


@dataclass
class AurocResult:
    """Point estimates and percentile-bootstrap confidence intervals.

    ``per_finding`` (K,), ``mean`` scalar, ``per_finding_ci`` (K, 2), ``mean_ci`` (2,), NaN where
    undefined; ``n_positive`` (K,) positives among the evaluated images.
    """

    per_finding: np.ndarray
    mean: float
    per_finding_ci: np.ndarray
    mean_ci: np.ndarray
    n_positive: np.ndarray


def bootstrap_auroc(labels: np.ndarray, scores: np.ndarray, n_boot: int = 1000,
                    confidence: float = 0.95, seed: int = 0) -> AurocResult:
    """Per-finding and mean AUROC with percentile bootstrap CIs over images (seeded).

    Each of ``n_boot`` resamples draws N images with replacement; the mean of a resample averages the
    findings defined on the full set that are also defined in the resample. The CI bounds are the
    (1 - confidence)/2 and (1 + confidence)/2 quantiles of the resampled values.
    """
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    point = per_finding_auroc(labels, scores)
    defined = ~np.isnan(point)
    if n_boot < 1:
        raise ValueError(f"n_boot={n_boot}: expected >= 1")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence}: expected a value in (0, 1)")
    rng = np.random.default_rng(seed)
    n, k = labels.shape
    boots = np.full((n_boot, k), np.nan)
    for b in range(n_boot):
        rows = rng.integers(0, n, size=n)
        for j in np.flatnonzero(defined):
            boots[b, j] = auroc(labels[rows, j], scores[rows, j])
    q = [(1 - confidence) / 2, (1 + confidence) / 2]
    ci = np.full((k, 2), np.nan)
    for j in np.flatnonzero(defined):
        col = boots[:, j][~np.isnan(boots[:, j])]
        if col.size:
            ci[j] = np.quantile(col, q)
    means = np.array([nanmean_or_nan(row[defined]) for row in boots]) if defined.any() else []
    means = np.asarray(means)[~np.isnan(means)] if len(means) else np.array([])
    mean_ci = np.quantile(means, q) if means.size else np.full(2, np.nan)
    n_pos = np.nansum(labels == 1, axis=0).astype(int)
    return AurocResult(point, nanmean_or_nan(point), ci, np.asarray(mean_ci), n_pos)


def paired_auroc_difference(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray,
                            n_boot: int = 1000, confidence: float = 0.95, seed: int = 0
                            ) -> tuple[float, float, float]:
    """Mean AUROC of ``scores_a`` minus that of ``scores_b`` on the same images, with a paired
    percentile-bootstrap CI: ``(difference, ci_low, ci_high)``.

    Each resample draws N images with replacement and scores *both* encoders on those same images,
    so the image-to-image variation they share cancels (much tighter than comparing two separate
    intervals). Means average the findings defined on the full set and in the resample, as
    :func:`bootstrap_auroc` does. Shapes: labels, scores (N, K).
    """
    labels = np.asarray(labels, dtype=np.float64)
    a, b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    if not labels.shape == a.shape == b.shape or labels.ndim != 2:
        raise ValueError(f"labels {labels.shape}, scores {a.shape} and {b.shape}: expected one "
                         "shape (N, K)")
    if n_boot < 1 or not 0 < confidence < 1:
        raise ValueError(f"n_boot={n_boot}, confidence={confidence}: expected n_boot >= 1 and "
                         "0 < confidence < 1")
    defined = ~np.isnan(per_finding_auroc(labels, a))
    point = nanmean_or_nan(per_finding_auroc(labels, a)[defined]
                           - per_finding_auroc(labels, b)[defined])
    rng = np.random.default_rng(seed)
    n = len(labels)
    diffs = []
    for _ in range(n_boot):
        rows = rng.integers(0, n, size=n)
        d = [auroc(labels[rows, j], a[rows, j]) - auroc(labels[rows, j], b[rows, j])
             for j in np.flatnonzero(defined)]
        d = np.asarray(d)[~np.isnan(d)]
        if d.size:
            diffs.append(d.mean())
    q = [(1 - confidence) / 2, (1 + confidence) / 2]
    lo, hi = np.quantile(diffs, q) if diffs else (np.nan, np.nan)
    return point, float(lo), float(hi)


def dice(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-image (per-channel) Dice, 2 |A n B| / (|A| + |B|), over the last two axes.

    Shapes (..., H, W) bool -> (...). SIIM-ACR's convention for empty masks: an image whose predicted
    and true masks are both empty scores 1; one empty and the other not scores 0.
    """
    p = np.asarray(pred).astype(bool)
    t = np.asarray(target).astype(bool)
    if p.shape != t.shape or p.ndim < 2:
        raise ValueError(f"pred {p.shape} and target {t.shape}: expected one shape (..., H, W)")
    inter = (p & t).sum(axis=(-2, -1)).astype(np.float64)
    total = p.sum(axis=(-2, -1)) + t.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(total == 0, 1.0, 2.0 * inter / np.maximum(total, 1))
    return out

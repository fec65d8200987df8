"""Linear probe on frozen features: one L2-regularised logistic regression per finding.

Features are standardised with the training set's mean and standard deviation. The inverse L2
strength ``C`` is shared by all findings and chosen from a grid by the mean AUROC on the *validation*
split; the test split is never seen during fitting or selection. Unknown labels (NaN) are left out
per finding. A finding with a single class in the training subset cannot be fitted: its score is the
constant log-odds of its training prevalence (AUROC 0.5 on any test set); ``untrainable`` names it.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from torch import nn

from ..config import EvalConfig
from .metrics import nanmean_or_nan, per_finding_auroc


@dataclass
class LinearProbe:
    """Fitted probe: ``scores(x) = ((x - mean) / std) @ coef.T + intercept`` (logits, (N, K))."""

    mean: np.ndarray  # (D,)
    std: np.ndarray  # (D,)
    coef: np.ndarray  # (K, D)
    intercept: np.ndarray  # (K,)
    C: float
    val_auroc: dict[float, float] = field(default_factory=dict)  # C -> mean validation AUROC
    untrainable: list[int] = field(default_factory=list)

    def scores(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.mean.size:
            raise ValueError(f"features {x.shape}: expected (N, {self.mean.size})")
        return ((x - self.mean) / self.std) @ self.coef.T + self.intercept

    def as_torch_head(self) -> nn.Linear:
        """The probe as one ``nn.Linear(D, K)`` on raw features (standardisation folded in)."""
        w = self.coef / self.std[None, :]
        b = self.intercept - w @ self.mean
        head = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            head.weight.copy_(torch.as_tensor(w, dtype=torch.float32))
            head.bias.copy_(torch.as_tensor(b, dtype=torch.float32))
        return head


def _fit_one_c(z: np.ndarray, y: np.ndarray, C: float, max_iter: int):
    k = y.shape[1]
    coef = np.zeros((k, z.shape[1]))
    intercept = np.zeros(k)
    untrainable = []
    for j in range(k):
        known = ~np.isnan(y[:, j])
        yj = y[known, j]
        if yj.size == 0 or yj.min() == yj.max():
            prev = float(np.clip(yj.mean() if yj.size else 0.5, 1e-3, 1 - 1e-3))
            intercept[j] = np.log(prev / (1 - prev))
            untrainable.append(j)
            continue
        # Newton with a Cholesky solve: the same optimum as lbfgs, 6x faster on 1600 x 512
        # standardised features (and it converges where lbfgs stops at max_iter for large C)
        clf = LogisticRegression(C=C, max_iter=max_iter, solver="newton-cholesky")
        with warnings.catch_warnings():
            # a probe that stops at max_iter is still a valid probe; the val AUROC judges it
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(z[known], yj)
        coef[j], intercept[j] = clf.coef_[0], clf.intercept_[0]
    return coef, intercept, untrainable


def fit_linear_probe(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray,
                     y_val: np.ndarray, Cs: tuple[float, ...] | None = None,
                     max_iter: int | None = None) -> LinearProbe:
    """Fit one probe per ``C`` on train, keep the one with the best mean validation AUROC.

    ``Cs`` and ``max_iter`` default to the ``eval.probe_cs`` and ``eval.probe_max_iter`` defaults.

    Shapes: x (N, D) features, y (N, K) in {0, 1, NaN}. Ties go to the smaller ``C`` (stronger
    regularisation). If no finding has both classes in validation, the middle ``C`` is kept.
    """
    x_train = np.asarray(x_train, dtype=np.float64)
    x_val = np.asarray(x_val, dtype=np.float64)
    y_train = np.asarray(y_train, dtype=np.float64)
    y_val = np.asarray(y_val, dtype=np.float64)
    if x_train.ndim != 2 or y_train.ndim != 2 or len(x_train) != len(y_train):
        raise ValueError(f"x_train {x_train.shape}, y_train {y_train.shape}: expected (N, D), (N, K)")
    if x_val.shape[1:] != x_train.shape[1:] or y_val.shape[1:] != y_train.shape[1:]:
        raise ValueError(f"validation shapes {x_val.shape}, {y_val.shape} do not match training "
                         f"{x_train.shape}, {y_train.shape}")
    defaults = EvalConfig()
    Cs = defaults.probe_cs if Cs is None else Cs
    max_iter = defaults.probe_max_iter if max_iter is None else max_iter
    if not Cs:
        raise ValueError("Cs: give at least one C")
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std = np.where(std > 1e-8, std, 1.0)  # constant features stay 0 after centring
    z_train = (x_train - mean) / std
    best: LinearProbe | None = None
    val_auroc: dict[float, float] = {}
    with one_blas_thread():
        for C in sorted(Cs):
            coef, intercept, untrainable = _fit_one_c(z_train, y_train, C, max_iter)
            probe = LinearProbe(mean, std, coef, intercept, C, val_auroc, untrainable)
            val_auroc[C] = nanmean_or_nan(per_finding_auroc(y_val, probe.scores(x_val)))
            if best is None or (not np.isnan(val_auroc[C]) and
                                (np.isnan(val_auroc[best.C]) or val_auroc[C] > val_auroc[best.C])):
                best = probe
        if all(np.isnan(v) for v in val_auroc.values()):
            mid = sorted(Cs)[len(Cs) // 2]
            coef, intercept, untrainable = _fit_one_c(z_train, y_train, mid, max_iter)
            best = LinearProbe(mean, std, coef, intercept, mid, val_auroc, untrainable)
    return best


def one_blas_thread():
    """A context with one BLAS thread: on a shared CPU, OpenBLAS's spinning threads made a
    1,600 x 512 logistic regression 20-300x slower (0.5 s vs 9-150 s measured); the probes'
    matrices are small enough that one thread loses nothing."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


#: Ridge strengths of :func:`fit_ridge_probe`, as multiples of the number of fit images.
RIDGE_ALPHAS = tuple(float(a) for a in 10.0 ** np.arange(-3.0, 3.5, 0.5))


def _loo_auroc(u: np.ndarray, s2: np.ndarray, y: np.ndarray, lam: float) -> float:
    """AUROC of the exact leave-one-out predictions of ridge ``lam`` (unpenalised intercept) on
    centred labels ``y``, with the thin SVD ``X = U diag(s) V^T`` of the centred features:
    ``yhat = U diag(s^2 / (s^2 + lam)) U^T y``, hat values
    ``h_i = 1/n + sum_k U_ik^2 s_k^2 / (s_k^2 + lam)`` (the 1/n is the intercept's),
    ``y_loo = y - (y - yhat) / (1 - h)``."""
    from .metrics import auroc

    shrink = s2 / (s2 + lam)
    yhat = u @ (shrink * (u.T @ y))
    h = 1.0 / len(y) + (u * u) @ shrink
    loo = y - (y - yhat) / np.maximum(1.0 - h, 1e-12)
    return auroc((y > 0).astype(float), loo)


def fit_ridge_probe(x: np.ndarray, y: np.ndarray,
                    alphas: tuple[float, ...] = RIDGE_ALPHAS) -> LinearProbe:
    """Ridge regression of each finding's 0/1 label on standardised features, its strength chosen
    per finding by the AUROC of its exact leave-one-out predictions (closed form, no refits):

        w_k = argmin ||Z w - (y_k - mean y_k)||^2 + lam_k ||w||^2,  lam_k = alpha_k * n,
        alpha_k = argmax over ``alphas`` of AUROC(y_k, LOO predictions)

    with ``Z`` the standardised features of the ``n`` images whose label ``k`` is known. One thin
    SVD per pattern of known labels, then every alpha costs two (n, r) products. The fast
    read-out of the online probe; returns a :class:`LinearProbe` (``C`` holds the median alpha,
    ``val_auroc`` maps each alpha to the mean LOO AUROC over findings).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ValueError(f"x {x.shape}, y {y.shape}: expected (N, D), (N, K)")
    if not alphas:
        raise ValueError("alphas: give at least one ridge strength")
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > 1e-8, std, 1.0)
    z = (x - mean) / std
    k = y.shape[1]
    coef, intercept = np.zeros((k, x.shape[1])), np.zeros(k)
    chosen, untrainable = np.full(k, np.nan), []
    loo = {a: [] for a in alphas}
    known = ~np.isnan(y)
    with one_blas_thread():
        _fit_ridge_patterns(z, y, known, alphas, coef, intercept, chosen, untrainable, loo)
    summary = {a: float(np.mean(v)) if v else float("nan") for a, v in loo.items()}
    c = float(np.nanmedian(chosen)) if np.isfinite(chosen).any() else float(alphas[0])
    return LinearProbe(mean, std, coef, intercept, c, summary, sorted(untrainable))


def _fit_ridge_patterns(z, y, known, alphas, coef, intercept, chosen, untrainable, loo) -> None:
    """:func:`fit_ridge_probe`'s fits, one SVD per pattern of known labels (fills the arrays)."""
    k = y.shape[1]
    for pattern in {known[:, j].tobytes() for j in range(k)}:
        rows = np.frombuffer(pattern, dtype=bool)
        cols = [j for j in range(k) if known[:, j].tobytes() == pattern]
        zk = z[rows] - z[rows].mean(axis=0)
        u, s, vt = np.linalg.svd(zk, full_matrices=False)
        keep = s > s.max(initial=0.0) * 1e-10
        u, s, vt = u[:, keep], s[keep], vt[keep]
        n = int(rows.sum())
        for j in cols:
            yj = y[rows, j]
            if yj.size == 0 or yj.min() == yj.max():
                prev = float(np.clip(yj.mean() if yj.size else 0.5, 1e-3, 1 - 1e-3))
                intercept[j] = prev
                untrainable.append(j)
                continue
            yc = yj - yj.mean()
            scores = {a: _loo_auroc(u, s * s, yc, a * n) for a in alphas}
            for a, v in scores.items():
                loo[a].append(v)
            best = max(alphas, key=lambda a: (scores[a], a))  # ties: the stronger ridge
            chosen[j] = best
            coef[j] = vt.T @ ((s / (s * s + best * n)) * (u.T @ yc))
            intercept[j] = yj.mean() - coef[j] @ z[rows].mean(axis=0)


def fit_probe(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
              config: EvalConfig) -> LinearProbe:
    """The kit's linear probe: :func:`fit_linear_probe` with ``eval.probe_cs`` and
    ``eval.probe_max_iter`` (the evaluation pipeline, Grad-CAM's classifier)."""
    return fit_linear_probe(x_train, y_train, x_val, y_val, Cs=config.probe_cs,
                            max_iter=config.probe_max_iter)

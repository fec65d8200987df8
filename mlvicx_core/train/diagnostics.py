"""Collapse diagnostics of a batch of embeddings ``z`` of shape (N, D).

With ``zc = z - mean_n(z)``, the covariance ``C = zc^T zc / (N - 1)`` (D x D) and ``s_j = sqrt(C_jj)``:

- ``std_min``, ``std_mean``: min and mean over dimensions of ``s_j``. VICReg's variance term pushes
  every ``s_j`` up to 1; ``std_min`` near 0 means some dimensions collapsed.
- ``corr_offdiag``: mean over the ``D (D - 1)`` ordered pairs ``i != j`` of ``|C_ij / (s_i s_j)|``,
  the mean absolute off-diagonal correlation (0: decorrelated, 1: all dimensions redundant). A pair
  involving a dimension with ``s = 0`` counts as 0 (its correlation is undefined).
- ``eff_rank``: the effective rank of ``C`` (Roy & Vetterli, 2007): with the eigenvalues
  ``lambda_k >= 0`` of ``C`` and ``p_k = lambda_k / sum_k lambda_k``,
  ``eff_rank = exp(-sum_k p_k log p_k)`` (``0 log 0 = 0``). It is D for an isotropic covariance, 1
  when all variance lies along one direction, and at most ``min(D, N - 1)``: a batch of N samples
  cannot show more than N - 1 directions. The eigenvalues come from the singular values of ``zc``
  (``lambda_k = sigma_k^2 / (N - 1)``), which is cheaper than an eigendecomposition when N < D.

Computed in float64 without gradient; returns Python floats.
"""
from __future__ import annotations

import torch


@torch.no_grad()
def embedding_diagnostics(z: torch.Tensor) -> dict[str, float]:
    """``std_min``, ``std_mean``, ``corr_offdiag`` and ``eff_rank`` of embeddings ``z`` (N, D)."""
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"expected embeddings of shape (N >= 2, D), got {tuple(z.shape)}")
    z = z.detach().double()
    n, d = z.shape
    zc = z - z.mean(dim=0)
    cov = zc.T @ zc / (n - 1)
    std = cov.diagonal().clamp_min(0).sqrt()
    outer = std[:, None] * std[None, :]
    corr = torch.where(outer > 0, cov / torch.where(outer > 0, outer, torch.ones_like(outer)),
                       torch.zeros_like(cov))
    off = corr.abs().sum() - corr.diagonal().abs().sum()
    corr_offdiag = off / (d * (d - 1)) if d > 1 else torch.zeros(())

    eig = torch.linalg.svdvals(zc).pow(2) / (n - 1)
    total = eig.sum()
    if total > 0:
        p = eig / total
        p = p[p > 0]
        eff_rank = torch.exp(-(p * p.log()).sum())
    else:
        eff_rank = torch.zeros(())  # every sample identical: no direction at all
    return {
        "std_min": float(std.min()),
        "std_mean": float(std.mean()),
        "corr_offdiag": float(corr_offdiag),
        "eff_rank": float(eff_rank),
    }

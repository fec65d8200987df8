"""Collapse diagnostics on embeddings whose covariance is known exactly."""
import math

import numpy as np
import pytest
import torch

from mlvicx_core.train.diagnostics import embedding_diagnostics


def whitened(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """(n, d) with covariance exactly I: orthonormal centred columns times sqrt(n - 1)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(a - a.mean(0))  # columns in the span of centred vectors -> centred
    return q * math.sqrt(n - 1)


def test_identity_covariance_has_full_rank_and_no_correlation():
    out = embedding_diagnostics(whitened(64, 16))
    assert out["std_min"] == pytest.approx(1.0, abs=1e-9)
    assert out["std_mean"] == pytest.approx(1.0, abs=1e-9)
    assert out["corr_offdiag"] == pytest.approx(0.0, abs=1e-9)
    assert out["eff_rank"] == pytest.approx(16.0, abs=1e-6)


def test_rank_one_embeddings():
    g = torch.Generator().manual_seed(1)
    u = torch.randn(32, 1, generator=g)
    v = torch.tensor([[1.0, -2.0, 0.5, 3.0]])
    out = embedding_diagnostics(u @ v)
    assert out["eff_rank"] == pytest.approx(1.0, abs=1e-5)
    assert out["corr_offdiag"] == pytest.approx(1.0, abs=1e-6)  # |corr| = 1 for every pair
    std_u = u.double().std().item()
    assert out["std_min"] == pytest.approx(0.5 * std_u, rel=1e-6)
    assert out["std_mean"] == pytest.approx(np.mean([1, 2, 0.5, 3]) * std_u, rel=1e-6)


def test_known_correlation_and_scales():
    w = whitened(50, 2, seed=2)
    rho = 0.6
    z = torch.stack([2.0 * w[:, 0], rho * w[:, 0] + math.sqrt(1 - rho**2) * w[:, 1]], dim=1)
    out = embedding_diagnostics(z)
    assert out["std_min"] == pytest.approx(1.0, abs=1e-9)
    assert out["std_mean"] == pytest.approx(1.5, abs=1e-9)
    assert out["corr_offdiag"] == pytest.approx(rho, abs=1e-9)
    # covariance [[4, 2 rho], [2 rho, 1]]: eigenvalues by the quadratic formula
    tr, det = 5.0, 4.0 - (2 * rho) ** 2
    lam = np.array([tr / 2 + math.sqrt(tr**2 / 4 - det), tr / 2 - math.sqrt(tr**2 / 4 - det)])
    p = lam / lam.sum()
    assert out["eff_rank"] == pytest.approx(math.exp(-(p * np.log(p)).sum()), abs=1e-9)


def test_dead_dimension_counts_as_uncorrelated():
    z = whitened(40, 3).clone()
    z[:, 2] = 5.0  # constant: std 0, correlation undefined -> 0
    out = embedding_diagnostics(z)
    assert out["std_min"] == 0.0
    # only the pair (0, 1) is defined and it is 0; the 6 ordered pairs average to 0
    assert out["corr_offdiag"] == pytest.approx(0.0, abs=1e-9)
    assert out["eff_rank"] == pytest.approx(2.0, abs=1e-6)


def test_rank_is_bounded_by_batch():
    out = embedding_diagnostics(torch.randn(8, 64))
    assert out["eff_rank"] <= 7 + 1e-6


def test_bad_shape():
    with pytest.raises(ValueError, match=r"\(N >= 2, D\)"):
        embedding_diagnostics(torch.randn(1, 4))

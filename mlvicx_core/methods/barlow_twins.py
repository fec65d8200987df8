"""Barlow Twins (Zbontar, Jing, Misra, LeCun, Deny 2021) on the global embedding.

With every embedding dimension batch-normalised over the N samples (mean 0, biased variance 1, as
``BatchNorm1d(affine=False)`` in training mode: ``(z - mean) / sqrt(var + eps)``, eps = 1e-5),
the cross-correlation of the two views is ``C = z_a^T z_b / N`` (D x D), and

    loss = sum_i (1 - C_ii)^2  +  lambda * sum_{i != j} C_ij^2,     lambda = loss.offdiag_coeff

(the paper's default lambda is 0.0051). ``on_diagonal`` makes the views agree dimension by
dimension (invariance), ``off_diagonal`` decorrelates the dimensions (redundancy reduction). Under
DistributedDataParallel both embeddings are gathered first, so N is the global batch. Computed in
float32 or wider, outside autocast.
"""
from __future__ import annotations

import torch

from ..loss import _check_pair, _float32, _no_autocast
from .base import Method

TERMS = ("on_diagonal", "off_diagonal")


def batch_normalise(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Every column of (N, D) ``z`` to mean 0 and biased variance 1: ``(z - mean) / sqrt(var + eps)``."""
    z = _float32(z)
    return (z - z.mean(dim=0)) / torch.sqrt(z.var(dim=0, unbiased=False) + eps)


def cross_correlation(z_a: torch.Tensor, z_b: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``C = bn(z_a)^T bn(z_b) / N`` (D x D) of two (N, D) embeddings."""
    return batch_normalise(z_a, eps).T @ batch_normalise(z_b, eps) / z_a.shape[0]


def on_diagonal(c: torch.Tensor) -> torch.Tensor:
    """``sum_i (1 - C_ii)^2``."""
    return (1 - torch.diagonal(c)).pow(2).sum()


def off_diagonal(c: torch.Tensor) -> torch.Tensor:
    """``sum_{i != j} C_ij^2``: the full sum of squares minus the diagonal's."""
    return c.pow(2).sum() - torch.diagonal(c).pow(2).sum()


def barlow_twins_loss(z_a: torch.Tensor, z_b: torch.Tensor, offdiag_coeff: float = 0.0051,
                      gather=None, eps: float = 1e-5) -> dict[str, torch.Tensor]:
    """``loss``, ``on_diagonal``, ``off_diagonal`` of two (N, D) embeddings (module docstring);
    ``gather`` concatenates every rank's embeddings under DistributedDataParallel."""
    _check_pair(z_a, z_b)
    with _no_autocast(z_a.device.type):
        if gather is not None:
            z_a, z_b = gather(z_a), gather(z_b)
        c = cross_correlation(z_a, z_b, eps)
        on, off = on_diagonal(c), off_diagonal(c)
        return {"loss": on + offdiag_coeff * off, "on_diagonal": on, "off_diagonal": off}


def loss(za, zb, cfg, gather=None) -> dict:
    g = barlow_twins_loss(za.global_, zb.global_, cfg.offdiag_coeff, gather)
    return {"loss": g["loss"], **{f"global/{k}": v for k, v in g.items()}}


def weights(cfg) -> dict[str, float]:
    return {"global/on_diagonal": 1.0, "global/off_diagonal": cfg.offdiag_coeff}


METHOD = Method(name="barlow_twins", heads=("global",), terms=TERMS, loss=loss, weights=weights,
                summary="Barlow Twins: the cross-correlation of the two views' global embeddings "
                        "pushed to the identity")

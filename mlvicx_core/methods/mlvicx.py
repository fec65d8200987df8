"""MLVICX: VICReg on the global embedding plus ``loss.lam`` times VICReg on the multi-level one.

``L = l(z_global, z'_global) + lam * l(z_multi, z'_multi)`` (METHOD.md section 3), computed by
:func:`mlvicx_core.loss.mlvicx_loss`.
"""
from __future__ import annotations

from ..loss import mlvicx_loss
from .base import Method
from .vicreg import TERMS, term_weights


def loss(za, zb, cfg, gather=None) -> dict:
    return mlvicx_loss(za.global_, zb.global_, za.multi, zb.multi, lam=cfg.lam,
                       sim_coeff=cfg.sim_coeff, std_coeff=cfg.std_coeff, cov_coeff=cfg.cov_coeff,
                       gamma=cfg.gamma, eps=cfg.eps, check_finite=False, gather=gather)


def weights(cfg) -> dict[str, float]:
    return {**term_weights(cfg, "global"), **term_weights(cfg, "multi", cfg.lam)}


METHOD = Method(name="mlvicx", heads=("global", "multi"), terms=TERMS, loss=loss, weights=weights,
                summary="MLVICX: VICReg on the global embedding + loss.lam x VICReg on the "
                        "multi-level embedding")

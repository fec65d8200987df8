"""VICReg (Bardes, Ponce, LeCun 2022) on the global embedding: the baseline MLVICX extends.

``loss = sim_coeff * s + std_coeff * (v(z) + v(z')) / 2 + cov_coeff * (c(z) + c(z'))`` on the
projector outputs, terms from :mod:`mlvicx_core.loss` (METHOD.md section 3).
"""
from __future__ import annotations

from ..loss import vicreg_loss
from .base import Method

TERMS = ("invariance", "variance", "covariance")


def branch_loss(z_a, z_b, cfg, gather=None) -> dict:
    """:func:`~mlvicx_core.loss.vicreg_loss` with the ``loss.*`` weights, unchecked (the step
    checks every term): ``loss``, ``invariance``, ``variance``, ``covariance``."""
    return vicreg_loss(z_a, z_b, sim_coeff=cfg.sim_coeff, std_coeff=cfg.std_coeff,
                       cov_coeff=cfg.cov_coeff, gamma=cfg.gamma, eps=cfg.eps, check_finite=False,
                       gather=gather)


def term_weights(cfg, head: str = "global", scale: float = 1.0) -> dict[str, float]:
    """The weight of each VICReg term of ``head`` in the total, times ``scale``."""
    return {f"{head}/invariance": scale * cfg.sim_coeff, f"{head}/variance": scale * cfg.std_coeff,
            f"{head}/covariance": scale * cfg.cov_coeff}


def loss(za, zb, cfg, gather=None) -> dict:
    g = branch_loss(za.global_, zb.global_, cfg, gather)
    return {"loss": g["loss"], **{f"global/{k}": v for k, v in g.items()}}


METHOD = Method(name="vicreg", heads=("global",), terms=TERMS, loss=loss, weights=term_weights,
                summary="VICReg: invariance, variance and covariance of the global embedding")

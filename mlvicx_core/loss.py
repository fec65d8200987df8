"""VICReg and MLVICX losses as small pure functions (METHOD.md section 3).

Shapes: embeddings ``z``, ``z_a``, ``z_b`` are (N, D): N samples (the batch, or the global batch
under DistributedDataParallel once gathered), D embedding dimensions. Every function computes in
float32 or wider (half-precision inputs are promoted, also under autocast) and returns 0-dim tensors.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F


def _float32(z: torch.Tensor) -> torch.Tensor:
    """Half-precision embeddings (autocast) are promoted; float32 and float64 stay as they are."""
    return z.float() if z.dtype in (torch.float16, torch.bfloat16) else z


def _no_autocast(device_type: str):
    if device_type in ("cuda", "cpu", "mps", "xpu"):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def invariance(z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the views: ``s = 1/(N D) sum_{n,d} (z_a - z_b)^2``."""
    return F.mse_loss(_float32(z_a), _float32(z_b))


def variance(z: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """Hinge on each dimension's std: ``v = 1/D sum_j relu(gamma - sqrt(Var_j(z) + eps))``.

    ``Var_j`` is the unbiased (N - 1) variance over the batch; needs N >= 2.
    """
    z = _float32(z)
    std = torch.sqrt(z.var(dim=0, unbiased=True) + eps)
    return F.relu(gamma - std).mean()


COVARIANCE_FORMS = ("auto", "dxd", "gram")


def choose_covariance_form(n: int, d: int) -> str:
    """The cheaper exact form for N samples of D dimensions: ``"gram"`` if N < D, else ``"dxd"``.

    ``"dxd"`` costs N D^2 multiply-adds and two D x D tensors (forward and backward); ``"gram"``
    costs N^2 D and two N x N tensors. At VICReg sizes (N = 16..128 per view, D = 4096) the Gram
    matrix is 32x to 256x smaller.
    """
    return "gram" if n < d else "dxd"


def _offdiag_sq_dxd(zc: torch.Tensor, diag: torch.Tensor) -> torch.Tensor:
    """``sum_{i != j} C_ij^2`` from the D x D covariance ``C = zc^T zc / (N - 1)``."""
    cov = (zc.T @ zc) / (zc.shape[0] - 1)
    return cov.pow(2).sum() - diag.pow(2).sum()


def _offdiag_sq_gram(zc: torch.Tensor, diag: torch.Tensor) -> torch.Tensor:
    """``sum_{i != j} C_ij^2`` from the N x N Gram matrix ``G = zc zc^T``.

    ``||C||_F^2 = tr(C^T C) = tr(zc^T zc zc^T zc) / (N - 1)^2 = tr(G G) / (N - 1)^2 = ||G||_F^2 /
    (N - 1)^2`` (cyclic trace; G is symmetric), so the full sum of squares needs no D x D matrix.
    """
    gram = (zc @ zc.T) / (zc.shape[0] - 1)
    return gram.pow(2).sum() - diag.pow(2).sum()


def covariance(z: torch.Tensor, form: str = "auto") -> torch.Tensor:
    """Sum of squared off-diagonal covariances over D: ``c = 1/D sum_{i != j} C_ij^2``.

    ``C = (z - mean)^T (z - mean) / (N - 1)`` (D x D). The off-diagonal sum is the full sum of
    squares minus the squared diagonal (the per-dimension variances ``C_jj``, computed directly),
    and the full sum of squares has two exact forms:

    - ``"dxd"``:  ``sum_ij C_ij^2``, from the D x D matrix C;
    - ``"gram"``: ``||Z_c Z_c^T||_F^2 / (N - 1)^2``, from the N x N Gram matrix of the centred
      ``Z_c`` (the same value: ``||Z_c^T Z_c||_F = ||Z_c Z_c^T||_F``);

    so ``c = (||Z_c Z_c^T||_F^2 / (N - 1)^2 - sum_j C_jj^2) / D``. ``form="auto"`` (default) takes
    the cheaper one, :func:`choose_covariance_form` (Gram when N < D). Under DistributedDataParallel
    ``z`` is the gathered global batch, so N, and the choice, are global. Both forms agree to float
    rounding.
    """
    if form not in COVARIANCE_FORMS:
        raise ValueError(f"form={form!r}: expected one of {COVARIANCE_FORMS}")
    z = _float32(z)
    n, d = z.shape
    zc = z - z.mean(dim=0)
    diag = zc.pow(2).sum(dim=0) / (n - 1)
    if form == "auto":
        form = choose_covariance_form(n, d)
    offdiag = _offdiag_sq_gram(zc, diag) if form == "gram" else _offdiag_sq_dxd(zc, diag)
    return offdiag / d


def _check_pair(z_a: torch.Tensor, z_b: torch.Tensor) -> None:
    if z_a.ndim != 2 or z_b.ndim != 2:
        raise ValueError(
            f"embeddings must be 2-D (N, D); got z_a {tuple(z_a.shape)}, z_b {tuple(z_b.shape)}"
        )
    if z_a.shape != z_b.shape:
        raise ValueError(
            f"the two views' embeddings differ in shape: z_a {tuple(z_a.shape)} vs "
            f"z_b {tuple(z_b.shape)}"
        )
    if z_a.shape[0] < 2:
        raise ValueError(
            f"batch of {z_a.shape[0]}: the variance and covariance terms need at least 2 samples "
            "(the unbiased variance of one sample is undefined)"
        )


def _check_finite(terms: dict[str, torch.Tensor], prefix: str = "") -> None:
    values = torch.stack([t.detach() for t in terms.values()])
    if not bool(torch.isfinite(values).all()):  # one device sync for all terms
        bad = [k for k, v in zip(terms, values.tolist()) if not torch.isfinite(torch.tensor(v))]
        raise FloatingPointError(
            f"non-finite VICReg term(s) {[prefix + k for k in bad]}: "
            + ", ".join(f"{prefix}{k}={terms[k].item()}" for k in bad)
        )


def vicreg_loss(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
    check_finite: bool = True,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    covariance_form: str = "auto",
) -> dict[str, torch.Tensor]:
    """VICReg: ``l = sim_coeff * s + std_coeff * (v(z_a) + v(z_b)) / 2 + cov_coeff * (c(z_a) + c(z_b))``.

    Returns a dict of 0-dim float32 tensors:

    - ``loss``: the weighted total ``l``
    - ``invariance``: ``s(z_a, z_b)``
    - ``variance``: ``(v(z_a) + v(z_b)) / 2``
    - ``covariance``: ``c(z_a) + c(z_b)``

    (the three terms unweighted, exactly as they enter the total). With ``check_finite`` (default),
    non-finite embeddings or terms raise ``FloatingPointError`` naming the offending term.

    ``gather`` (DistributedDataParallel): a function that concatenates a rank's (n, D) embeddings
    with every other rank's, with gradient, into the global (N, D) batch. As in official VICReg the
    invariance term stays local and the variance and covariance terms see the global batch.

    ``covariance_form``: ``"auto"`` (default), ``"dxd"`` or ``"gram"``, see :func:`covariance`; the
    automatic choice is made from the gathered (global) N.
    """
    _check_pair(z_a, z_b)
    with _no_autocast(z_a.device.type):
        if check_finite:
            _check_finite({"embedding z_a": z_a.sum(), "embedding z_b": z_b.sum()})
        s = invariance(z_a, z_b)
        if gather is not None:
            z_a, z_b = gather(z_a), gather(z_b)
        v = (variance(z_a, gamma, eps) + variance(z_b, gamma, eps)) / 2
        c = covariance(z_a, covariance_form) + covariance(z_b, covariance_form)
        terms = {"invariance": s, "variance": v, "covariance": c}
        if check_finite:
            _check_finite(terms)
        loss = sim_coeff * s + std_coeff * v + cov_coeff * c
    return {"loss": loss, **terms}


def mlvicx_loss(
    global_a: torch.Tensor,
    global_b: torch.Tensor,
    multi_a: torch.Tensor | None = None,
    multi_b: torch.Tensor | None = None,
    lam: float = 1.0,
    **vicreg_kwargs,
) -> dict[str, torch.Tensor]:
    """MLVICX total ``L = l(z_global, z'_global) + lam * l(z_multi, z'_multi)``.

    Returns ``loss`` (the total) and every term per branch under ``global/<term>`` and
    ``multi/<term>`` (``<term>`` in ``loss, invariance, variance, covariance``). Without multi-level
    embeddings (``multi_a is None``) this is VICReg and only the ``global/*`` terms are present.
    """
    g = vicreg_loss(global_a, global_b, **vicreg_kwargs)
    out = {"loss": g["loss"], **{f"global/{k}": v for k, v in g.items()}}
    if (multi_a is None) != (multi_b is None):
        raise ValueError("multi_a and multi_b must both be given or both be None")
    if multi_a is not None:
        m = vicreg_loss(multi_a, multi_b, **vicreg_kwargs)
        out["loss"] = g["loss"] + lam * m["loss"]
        out.update({f"multi/{k}": v for k, v in m.items()})
    return out

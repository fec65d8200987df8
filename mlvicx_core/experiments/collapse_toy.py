"""Collapse in miniature: what the variance term prevents, in a second on a CPU.

A short pretraining run rarely collapses (the variance hinge ``max(0, 1 - std)`` is inactive while
every embedding dimension still has std >= 1, so switching it off changes nothing for a while). This
toy makes the mechanism visible at once: a small MLP encoder, 256 fixed random "images" in R^32 whose
two views are the image plus independent noise, trained with Adam on

- the full VICReg loss (``std_coeff=25``), and
- the same loss without the variance term (``std_coeff=0``).

Without the variance term, invariance (views agree) and covariance (a shrinking embedding also has a
shrinking covariance) both reward shrinking every embedding towards one point: ``std`` falls to 0 and
the loss falls with it, which looks like success. With it, ``std`` stays near 1 and the views still
agree. The encoder ends in a Linear layer (no BatchNorm), so the scale is free to collapse quickly.
``mlvicx_core.viz.training.plot_collapse_demo`` draws the result.
"""
from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from ..loss import vicreg_loss
from ..train.diagnostics import embedding_diagnostics


def toy_encoder(in_dim: int = 32, hidden: int = 64, out_dim: int = 16) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, out_dim))


def collapse_demo(std_coeffs: tuple[float, ...] = (25.0, 0.0), steps: int = 200, n: int = 256,
                  batch: int = 128, noise: float = 0.5, lr: float = 1e-2, seed: int = 0
                  ) -> pd.DataFrame:
    """Train the toy encoder once per ``std_coeff``; one row per (std_coeff, step).

    Columns: ``std_coeff``, ``step``, ``loss``, ``invariance``, ``variance``, ``covariance`` (the
    unweighted terms of :func:`~mlvicx_core.loss.vicreg_loss`) and the collapse diagnostics
    ``std_min``, ``std_mean``, ``eff_rank``, ``corr_offdiag`` of the first view's embeddings.
    Deterministic given ``seed`` (same data, initial weights and noise for every ``std_coeff``).
    """
    rows = []
    for std_coeff in std_coeffs:
        g = torch.Generator().manual_seed(seed)
        data = torch.randn(n, 32, generator=g)
        torch.manual_seed(seed)
        net = toy_encoder()
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        for step in range(1, steps + 1):
            idx = torch.randint(0, n, (batch,), generator=g)
            x = data[idx]
            za = net(x + noise * torch.randn(x.shape, generator=g))
            zb = net(x + noise * torch.randn(x.shape, generator=g))
            terms = vicreg_loss(za, zb, std_coeff=std_coeff)
            opt.zero_grad()
            terms["loss"].backward()
            opt.step()
            rows.append({"std_coeff": std_coeff, "step": step,
                         **{k: float(v.detach()) for k, v in terms.items()},
                         **embedding_diagnostics(za)})
    return pd.DataFrame(rows)

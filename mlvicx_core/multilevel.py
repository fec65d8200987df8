"""The multi-level branch: every gated tap, fused into one embedding.

Definition (METHOD.md section 2), for taps ``X_l`` of shape (B, C_l, H_l, W_l)::

    F = sum_l conv1x1_l( resize_bilinear(X_l, S x S) )          (B, K, S, S)   S = fusion_size
    f = flatten( adaptive_avg_pool(F, P x P) )                  (B, K * P * P) P = pool_size
    z = MLP(f)

Resizing (bilinear, ``align_corners=False``), the 1x1 convs, the sum and the pooling are all linear, and
resizing and pooling act on rows and columns separately. So with ``A_H = pool_P(resize_S(I_H))``, the
(P, H) matrix that resizes a column of length H to S and averages it into P cells,

    pool(resize(X_l)) = A_H X_l A_W^T            and         f = sum_l W_l (A_H X_l A_W^T) + sum_l b_l

which is what :class:`MultiLevelFusion` computes with ``impl="pooled"``: no (B, K, S, S) map is ever
built. ``impl="literal"`` is the definition itself, kept for the tests and the benchmark.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mlp(in_dim: int, widths: tuple[int, ...], last_bn: bool = True) -> nn.Sequential:
    """Linear + BatchNorm1d for every width, ReLU between them (not after the last BN).

    ``last_bn=False`` ends in a plain Linear layer (official VICReg's projector); the released
    MLVICX code, and the default here, puts a BatchNorm after the last Linear too.
    """
    layers: list[nn.Module] = []
    for i, width in enumerate(widths):
        last = i == len(widths) - 1
        layers.append(nn.Linear(in_dim, width))
        if not last or last_bn:
            layers.append(nn.BatchNorm1d(width))
        if not last:
            layers.append(nn.ReLU(inplace=True))
        in_dim = width
    return nn.Sequential(*layers)


def resize_pool_matrix(size: int, fusion_size: int, pool_size: int) -> torch.Tensor:
    """The (pool_size, size) matrix ``A`` with ``A @ v == pool(resize(v))`` for a length-``size`` axis.

    Built by pushing the identity through the very operations it replaces (``F.interpolate`` in
    bilinear mode and ``F.adaptive_avg_pool2d``), so it matches them by construction.
    """
    eye = torch.eye(size, dtype=torch.float64).reshape(size, 1, size, 1)
    resized = F.interpolate(eye, size=(fusion_size, 1), mode="bilinear", align_corners=False)
    pooled = F.adaptive_avg_pool2d(resized, (pool_size, 1))  # (size, 1, pool, 1)
    return pooled.reshape(size, pool_size).T.contiguous()


class MultiLevelFusion(nn.Module):
    """Lateral 1x1 convs + sum + pool over the selected taps: maps -> (B, K * P * P).

    Parameters
    ----------
    channels: channel count of each tap, in the order the maps will be passed.
    fusion_channels: K, output channels of every lateral conv.
    fusion_size: S, the side every tap is resized to.
    pool_size: P, the side of the pooled grid.
    impl: ``"pooled"`` (default, exact and cheap) or ``"literal"``.
    """

    def __init__(
        self,
        channels: list[int],
        fusion_channels: int,
        fusion_size: int,
        pool_size: int,
        impl: str = "pooled",
    ) -> None:
        super().__init__()
        if impl not in ("pooled", "literal"):
            raise ValueError(f"impl={impl!r}: expected 'pooled' or 'literal'")
        self.lateral = nn.ModuleList(nn.Conv2d(c, fusion_channels, 1, bias=True) for c in channels)
        self.fusion_size = fusion_size
        self.pool_size = pool_size
        self.impl = impl
        self.out_features = fusion_channels * pool_size * pool_size
        self._matrices: dict[tuple, torch.Tensor] = {}

    def _matrix(self, size: int, like: torch.Tensor) -> torch.Tensor:
        key = (size, like.dtype, like.device)
        if key not in self._matrices:
            a = resize_pool_matrix(size, self.fusion_size, self.pool_size)
            self._matrices[key] = a.to(device=like.device, dtype=like.dtype)
        return self._matrices[key]

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        if len(maps) != len(self.lateral):
            raise ValueError(f"expected {len(self.lateral)} maps, got {len(maps)}")
        return (self._pooled(maps) if self.impl == "pooled" else self._literal(maps)).flatten(1)

    def _literal(self, maps: list[torch.Tensor]) -> torch.Tensor:
        size = (self.fusion_size, self.fusion_size)
        fused = sum(
            conv(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
            for conv, x in zip(self.lateral, maps)
        )
        return F.adaptive_avg_pool2d(fused, self.pool_size)

    def _pooled(self, maps: list[torch.Tensor]) -> torch.Tensor:
        fused = None
        for conv, x in zip(self.lateral, maps):
            a_h = self._matrix(x.shape[-2], x)
            a_w = self._matrix(x.shape[-1], x)
            pooled = a_h @ (x @ a_w.T)  # (B, C, P, P)
            # 1x1 conv on the P x P grid; bias passes through the averaging unchanged.
            out = F.conv2d(pooled, conv.weight, conv.bias)
            fused = out if fused is None else fused + out
        return fused

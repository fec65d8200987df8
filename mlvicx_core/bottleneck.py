"""Context bottleneck: the attention gate MLVICX places after every backbone tap.

Channel attention, then spatial attention, both multiplicative, no residual (METHOD.md section 2)::

    M_c = sigmoid(W2 relu(W1 avgpool(X)) + W2 relu(W1 maxpool(X)))     W1: C -> C/2, W2: C/2 -> C
    X'  = M_c * X
    M_s = sigmoid(conv7x7([mean_c X'; max_c X']))                       2 -> 1 channels
    X'' = M_s * X'

W1, W2 and the 7x7 conv have no bias; W1/W2 are 1x1 convs shared by the average and max paths.
"""
from __future__ import annotations

import torch
from torch import nn


class ChannelAttention(nn.Module):
    """``M_c``: a (B, C, 1, 1) gate from globally pooled statistics."""

    def __init__(self, channels: int, reduction: int = 2) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        mx = self.mlp(x.amax(dim=(2, 3), keepdim=True))
        return torch.sigmoid(avg + mx)


class SpatialAttention(nn.Module):
    """``M_s``: a (B, 1, H, W) gate from the channel mean and max."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stats = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(stats))


class ContextBottleneck(nn.Module):
    """``X'' = M_s(M_c(X) * X) * (M_c(X) * X)``; shape-preserving (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int, reduction: int = 2, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.channel(x) * x
        return self.spatial(x) * x

"""The transferable part of a pretrained network: the ResNet trunk, with or without its gates.

METHOD.md section 5: downstream tasks transfer the trunk; the released code drops the context
bottlenecks (CB) and the projectors, which is the default here (``keep_gates=False``); both are
allowed. A :class:`Trunk` is an ordinary ``nn.Module`` that owns a *copy* of the weights, so fine-tuning
it never alters the pretrained model.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..config import LEVELS
from ..model import MLVICX, GatedTrunk


class Trunk(GatedTrunk):
    """ResNet trunk taking [0, 1] images (B, 1 or 3, H, W).

    ``forward(x)`` -> global-average-pooled layer4 features (B, feature_dim);
    ``taps(x)`` -> {"stem": (B, C0, H/2, W/2), "layer1": H/4, "layer2": H/8, "layer3": H/16,
    "layer4": H/32}; ``tap_module(level)`` is the module whose output is that tap (a Grad-CAM target).
    """

    def __init__(self, model: MLVICX, keep_gates: bool = False) -> None:
        super().__init__()
        self.backbone = copy.deepcopy(model.backbone)
        self.keep_gates = keep_gates
        # Identity "gates" still give every tap its own module, so Grad-CAM can hook any level.
        self.gates = nn.ModuleDict({
            lv: copy.deepcopy(model.gates[lv]) if keep_gates else nn.Identity() for lv in LEVELS
        })
        self.tap_channels = dict(model.tap_channels)
        self.feature_dim = model.feature_dim
        self.register_buffer("mean", model.mean.clone(), persistent=False)
        self.register_buffer("std", model.std.clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)

    def tap_module(self, level: str) -> nn.Module:
        if level not in LEVELS:
            raise ValueError(f"tap {level!r}: expected one of {LEVELS}")
        return self.gates[level]

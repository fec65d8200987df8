"""The reference encoders every pretrained encoder is compared with: random init and ImageNet.

Built from the compared encoders' own :class:`~mlvicx_core.config.ModelConfig`, so the architecture is
the same and only the weights differ.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..config import ModelConfig
from ..model import MLVICX

BASELINES = ("random", "imagenet")


class BaselineUnavailable(RuntimeError):
    """A reference encoder cannot be built here (e.g. ImageNet weights not available offline)."""


def reference_encoder(kind: str, config: ModelConfig, seed: int = 0) -> MLVICX:
    """The baselines every pretrained encoder is compared to, built from ``config``'s trunk.

    ``"random"``: random initialisation (seeded); ``"imagenet"``: torchvision's ImageNet-supervised
    weights, only when they are already in the local torch hub cache (raises
    :class:`BaselineUnavailable` otherwise, so an offline run reports the skip instead of failing).
    """
    if kind == "random":
        with torch.random.fork_rng(devices=[]):  # seeded, without touching the caller's RNG
            torch.manual_seed(seed)
            return MLVICX(dataclasses.replace(config, pretrained=None)).eval()
    if kind == "imagenet":
        import torchvision

        weights = torchvision.models.get_model_weights(config.backbone).IMAGENET1K_V1
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        if not cached.is_file():
            raise BaselineUnavailable(
                f"ImageNet weights for {config.backbone} not found at {cached} "
                f"(download {weights.url} there to enable this baseline)"
            )
        return MLVICX(dataclasses.replace(config, pretrained="imagenet")).eval()
    raise ValueError(f"reference encoder {kind!r}: expected 'random' or 'imagenet'")

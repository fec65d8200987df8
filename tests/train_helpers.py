"""Shared fixtures of the training tests: a tiny model config, a tiny dataset, a simple augmenter."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from mlvicx_core.config import Config, apply_overrides, get_preset, load_config
from mlvicx_core.data.base import CXRDataset

# `make test` runs two pytest workers on two cores: one intra-op thread per worker avoids the
# oversubscription that made these tests ~5x slower on a loaded machine.
torch.set_num_threads(1)

# the teaching network (width 32) with tiny heads; the projectors end in BatchNorm as the paper's
# (the teaching recipe's Linear end is tested where it matters: tests/test_model.py)
TINY_MODEL = get_preset("teaching", projector=(32, 32), ml_projector=(32, 32),
                        fusion_size=8, fusion_channels=16, pool_size=2, projector_last_bn=True)


class TinyCXR(CXRDataset):
    """``length`` deterministic 32 x 32 images (a smooth blob per index plus noise)."""

    findings = ("blob",)

    def __init__(self, length: int = 32, image_size: int = 32) -> None:
        super().__init__(image_size=image_size)
        self.labels = np.zeros((length, 1), dtype=np.float32)
        self.patient_ids = np.array([f"p{i}" for i in range(length)], dtype=object)

    def load_image(self, index: int) -> np.ndarray:
        rng = np.random.default_rng(index)
        s = self.image_size
        y, x = np.mgrid[0:s, 0:s] / s
        cx, cy = rng.random(2)
        img = 0.2 + 0.6 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 0.05)
        return np.clip(img + 0.05 * rng.standard_normal((s, s)), 0, 1).astype(np.float32)


def simple_augment(images: torch.Tensor, generator: torch.Generator | None = None):
    """Two views: a random gain per image, and a horizontal flip plus noise (uses ``generator``)."""
    b = images.shape[0]
    gain = 0.8 + 0.4 * torch.rand(b, 1, 1, 1, generator=generator, device=images.device)
    noise = 0.05 * torch.randn(images.shape, generator=generator, device=images.device)
    return (images * gain).clamp(0, 1), (images.flip(-1) + noise).clamp(0, 1)


def tiny_config(tmp_path, **overrides) -> Config:
    """Teaching preset with the tiny model, batch 8, no progress bar or TensorBoard, in tmp_path."""
    base = {
        "train.batch_size": 8, "train.epochs": 2, "train.progress": False,
        "train.tensorboard": False, "train.out_dir": str(tmp_path), "train.diag_every": 2,
        "train.ckpt_every": 100, "optim.warmup_epochs": 1, "data.length": 32,
        "data.view_size": 32, "data.stored_size": None,
        # the preset's online probe and read-out are the teaching recipe's; these tests set them
        "train.eval_every": 0, "eval.features": "trunk",
        "train.threads": 0,  # the suite's one thread per worker, not the preset's two
    }
    base.update(overrides)
    cfg = load_config("teaching")
    cfg = dataclasses.replace(cfg, model=TINY_MODEL)
    return apply_overrides(cfg, base)

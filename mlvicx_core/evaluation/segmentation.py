"""Segmentation transfer: a U-Net whose encoder is the pretrained trunk, scored by per-image Dice.

Why our own decoder rather than segmentation-models-pytorch: smp is not a dependency of the kit
(installing it also pulls timm, huggingface-hub and safetensors), while the trunk already exposes the
five taps a U-Net needs. The decoder below is the standard U-Net/smp layout: starting from layer4
(S/32), each block upsamples x2 (nearest), concatenates the skip tap of that resolution
(layer3 S/16, layer2 S/8, layer1 S/4, stem S/2) and applies two 3x3 conv-BN-ReLU; a last block brings
the map to S/1 without a skip, and a 1x1 conv gives one logit map per mask channel. The default
decoder widths (256, 128, 64, 32, 16) are smp's. The encoder's weights are the pretrained trunk's
(:class:`~.trunk.Trunk`, gates dropped by default), so this is exactly "U-Net with a pretrained
ResNet encoder".

Training: BCE + soft Dice, AdamW, cosine schedule, the best epoch by mean validation Dice is kept.
Dice is computed per image and channel with SIIM-ACR's empty-mask convention (see
:func:`~.metrics.dice`), then averaged.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..config import LEVELS
from .embeddings import check_images, loader, resolve_device
from .metrics import dice
from .trunk import Trunk


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class DecoderBlock(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv(cin + cskip, cout), _conv(cout, cout))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, size) -> torch.Tensor:
        x = F.interpolate(x, size=size, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.body(x)


class UNet(nn.Module):
    """images (B, 1, S, S) in [0, 1] -> mask logits (B, n_classes, S, S); S divisible by 32."""

    def __init__(self, trunk: Trunk, n_classes: int,
                 decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)) -> None:
        super().__init__()
        if len(decoder_channels) != 5:
            raise ValueError(f"decoder_channels={decoder_channels}: expected 5 widths")
        self.encoder = trunk
        skips = [trunk.tap_channels[lv] for lv in reversed(LEVELS[:-1])] + [0]
        cin = trunk.tap_channels["layer4"]
        blocks = []
        for cskip, cout in zip(skips, decoder_channels):
            blocks.append(DecoderBlock(cin, cskip, cout))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(cin, n_classes, 1)
        # Masks are sparse (a lesion covers a few % of the film): start the logits at that prior,
        # sigmoid(-3) ~ 5 %, instead of 50 %, so the first epochs are not spent unlearning "all on".
        nn.init.constant_(self.head.bias, -3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        if size[0] % 32 or size[1] % 32:
            raise ValueError(f"image size {tuple(size)}: the U-Net needs sides divisible by 32")
        taps = self.encoder.taps(x)
        h = taps["layer4"]
        for level, block in zip(list(reversed(LEVELS[:-1])) + [None], self.blocks):
            skip = taps[level] if level is not None else None
            h = block(h, skip, skip.shape[-2:] if skip is not None else size)
        return self.head(h)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - (2 sum(p t) + eps) / (sum p + sum t + eps), per image and channel, averaged."""
    p = torch.sigmoid(logits).flatten(2)
    t = target.float().flatten(2)
    return (1 - (2 * (p * t).sum(-1) + eps) / (p.sum(-1) + t.sum(-1) + eps)).mean()


def _masks(batch: dict, channels: list[int] | None, where: str) -> torch.Tensor:
    if "mask" not in batch:
        raise ValueError(f"{where}: segmentation needs samples with 'mask' (dataset.has_masks)")
    m = batch["mask"]
    return m[:, channels] if channels is not None else m


@torch.no_grad()
def predict_dice(unet: nn.Module, dataset: Dataset, channels: list[int] | None = None,
                 batch_size: int = 16, threshold: float = 0.5,
                 device: str | torch.device | None = None) -> np.ndarray:
    """Per-image, per-channel Dice (N, C) of thresholded sigmoid predictions."""
    dev = resolve_device(device)
    unet = unet.to(dev).eval()
    out = []
    for batch in loader(dataset, batch_size):
        check_images(batch["image"], type(dataset).__name__)
        target = _masks(batch, channels, type(dataset).__name__).numpy()
        pred = (torch.sigmoid(unet(batch["image"].to(dev))) > threshold).cpu().numpy()
        out.append(dice(pred, target))
    return np.concatenate(out)


@dataclass
class SegmentationResult:
    model: UNet
    best_epoch: int
    history: list[dict] = field(default_factory=list)


def train_segmentation(trunk: Trunk, train: Dataset, val: Dataset, *,
                       channels: list[int] | None = None, epochs: int = 20, lr: float = 1e-3,
                       weight_decay: float = 1e-4, batch_size: int = 16,
                       decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16),
                       freeze_encoder: bool = False, device: str | torch.device | None = None, seed: int = 0,
                       ) -> SegmentationResult:
    """Fine-tune a U-Net on ``trunk`` (copied) with the masks of ``channels`` (all when None).

    ``freeze_encoder=True`` trains the decoder only (the trunk, BatchNorm statistics included, stays
    as pretrained): a cheaper read-out of what the frozen taps already encode.
    """
    torch.manual_seed(seed)
    dev = resolve_device(device)
    first = train[0]
    if "mask" not in first:
        raise ValueError(f"{type(train).__name__}: segmentation needs a dataset with masks")
    n_classes = len(channels) if channels is not None else first["mask"].shape[0]
    unet = UNet(copy.deepcopy(trunk), n_classes, decoder_channels).to(dev)
    if freeze_encoder:
        unet.encoder.requires_grad_(False)
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    train_loader = loader(train, batch_size, shuffle=True, seed=seed)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * len(train_loader))
    best_state, best_dice, best_epoch, history = None, -1.0, -1, []
    for epoch in range(epochs):
        unet.train()
        if freeze_encoder:
            unet.encoder.eval()  # frozen means frozen BatchNorm statistics too
        losses = []
        for batch in train_loader:
            check_images(batch["image"], type(train).__name__)
            target = _masks(batch, channels, type(train).__name__).to(dev)
            logits = unet(batch["image"].to(dev))
            loss = (F.binary_cross_entropy_with_logits(logits, target.float())
                    + soft_dice_loss(logits, target))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        val_dice = float(predict_dice(unet, val, channels, batch_size, device=dev).mean())
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val_dice": val_dice})
        if val_dice > best_dice:
            best_state, best_dice, best_epoch = copy.deepcopy(unet.state_dict()), val_dice, epoch
    unet.load_state_dict(best_state)
    return SegmentationResult(unet.eval(), best_epoch, history)

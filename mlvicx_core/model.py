"""The MLVICX network: a ResNet trunk with gated taps, a global projector and a multi-level branch.

Input convention (documented once, used everywhere in the kit): images are float tensors in [0, 1]
of shape (B, 1, H, W) (grey radiographs) or (B, 3, H, W). A 1-channel image is repeated to three
channels and every channel is normalised with the ImageNet mean and std inside the model, so callers
never normalise and ImageNet-initialised trunks see the statistics they were trained on.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from .bottleneck import ContextBottleneck
from .config import LEVELS, ModelConfig, get_preset
from .multilevel import MultiLevelFusion, mlp

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Embeddings(NamedTuple):
    """Projector outputs for one view: ``global_`` (B, D) and ``multi`` (B, D_ml) or ``None``."""

    global_: torch.Tensor
    multi: torch.Tensor | None


#: Block type and blocks per stage of each torchvision ResNet the kit builds.
RESNETS = {"resnet18": (BasicBlock, (2, 2, 2, 2)), "resnet34": (BasicBlock, (3, 4, 6, 3)),
           "resnet50": (Bottleneck, (3, 4, 6, 3))}


class ScaledResNet(ResNet):
    """torchvision's ResNet with base width ``width`` (stages ``width * (1, 2, 4, 8)``) and a stem
    of choice: ``imagenet`` (7x7 stride-2 conv, 3x3 stride-2 max-pool) or ``cifar`` (3x3 stride-1
    conv, no max-pool). Blocks, initialisation and parameter names are torchvision's, so the state
    dict of a width-64 ImageNet-stem network is that of ``torchvision.models.resnet18()``."""

    def __init__(self, block, layers, width: int = 64, stem: str = "imagenet") -> None:
        self._width = width
        super().__init__(block, list(layers))
        if stem == "cifar":
            self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        elif width != 64:
            self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = self._norm_layer(width) if width != 64 else self.bn1
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        if planes == 64:  # the first stage reads the stem's output
            self.inplanes = self._width
        return super()._make_layer(block, planes * self._width // 64, blocks, stride, dilate)


def build_backbone(name: str, pretrained: str | None, width: int = 64,
                   stem: str = "imagenet") -> nn.Module:
    """A torchvision ResNet with ``fc`` removed: exactly ``torchvision.models.<name>()`` at width 64
    with the ImageNet stem (``pretrained="imagenet"`` loads its weights), else :class:`ScaledResNet`."""
    if name not in RESNETS:
        raise ValueError(f"model.backbone={name!r}: expected one of {sorted(RESNETS)}")
    builder = getattr(torchvision.models, name)
    weights = None
    if pretrained == "imagenet":
        weights = torchvision.models.get_model_weights(name).IMAGENET1K_V1
        try:
            net = builder(weights=weights)
        except Exception as err:  # offline machines raise URLError / OSError / RuntimeError
            raise RuntimeError(
                f"could not load ImageNet weights for {name} ({type(err).__name__}: {err}). "
                f"Without internet, download {weights.url} elsewhere and place it in "
                f"{torch.hub.get_dir()}/checkpoints/, or use pretrained=None (random init)."
            ) from err
    elif width == 64 and stem == "imagenet":
        net = builder(weights=None)
    else:
        net = ScaledResNet(*RESNETS[name], width=width, stem=stem)
    net.fc = nn.Identity()
    return net


def normalize_images(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """[0, 1] images (B, 1 or 3, H, W) -> 3-channel tensors normalised with ``mean``/``std``."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (B, 1 or 3, H, W), got {tuple(x.shape)}")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return (x - mean) / std


def gated_taps(backbone: nn.Module, gates: nn.ModuleDict, x: torch.Tensor
               ) -> dict[str, torch.Tensor]:
    """Run a ResNet trunk on normalised ``x``, gating every tap: the five gated maps by level.

    The stem tap is taken after conv1-bn1-relu, before the max-pool; each gated map is what the
    next stage consumes (METHOD.md section 2).
    """
    h = gates["stem"](backbone.relu(backbone.bn1(backbone.conv1(x))))
    out = {"stem": h}
    h = backbone.maxpool(h)
    for level in LEVELS[1:]:
        h = gates[level](getattr(backbone, level)(h))
        out[level] = h
    return out


def _stage_channels(stage: nn.Sequential) -> int:
    """Output channels of a ResNet stage (BasicBlock or Bottleneck)."""
    bns = [m for m in stage[-1].modules() if isinstance(m, nn.BatchNorm2d)]
    return bns[-1].num_features


class GatedTrunk(nn.Module):
    """A ResNet trunk with a gate after every tap (a context bottleneck or the identity), taking
    [0, 1] images: what the MLVICX network and the transferable trunk
    (``mlvicx_core.evaluation.trunk.Trunk``) share. Subclasses hold ``backbone``, ``gates`` and
    the ``mean`` / ``std`` buffers."""

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images with 1 or 3 channels -> ImageNet-normalised 3-channel tensors."""
        return normalize_images(x, self.mean, self.std)

    def taps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Gated maps of all five levels (stem before maxpool, layer1..layer4)."""
        return gated_taps(self.backbone, self.gates, self.normalize(x))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled gated layer4 features, (B, feature_dim)."""
        return self.taps(x)["layer4"].mean(dim=(2, 3))


class MLVICX(GatedTrunk):
    """MLVICX (or, with ``multilevel=False, context_bottleneck=False``, VICReg) encoder + projectors.

    ``forward(x)`` returns :class:`Embeddings` (the heads ``model.method`` trains:
    ``mlvicx_core.methods``); :meth:`taps` returns the gated maps of all five levels; :meth:`encode`
    returns the pooled gated layer4 features (B, C). What is transferred downstream is the trunk
    without the gates by default (``mlvicx_core.evaluation.trunk.Trunk``, ``eval.keep_gates``;
    :meth:`trunk_state_dict`), as the released code transfers it.
    """

    def __init__(self, config: ModelConfig | str) -> None:
        super().__init__()
        if isinstance(config, str):
            config = get_preset(config)
        self.config = config
        self.backbone = build_backbone(config.backbone, config.pretrained, config.width,
                                       config.stem)
        b = self.backbone
        self.tap_channels = {"stem": b.conv1.out_channels}
        for i in range(1, 5):
            self.tap_channels[f"layer{i}"] = _stage_channels(getattr(b, f"layer{i}"))

        self.gates = nn.ModuleDict(
            {
                level: ContextBottleneck(c) if config.context_bottleneck else nn.Identity()
                for level, c in self.tap_channels.items()
            }
        )
        self.feature_dim = self.tap_channels["layer4"]
        self.projector = mlp(self.feature_dim, config.projector, config.projector_last_bn)

        self.fusion: MultiLevelFusion | None = None
        self.ml_projector: nn.Sequential | None = None
        if config.multilevel:
            self.fusion = MultiLevelFusion(
                [self.tap_channels[lv] for lv in config.levels],
                config.fusion_channels,
                config.fusion_size,
                config.pool_size,
                impl=config.multilevel_impl,
            )
            self.ml_projector = mlp(self.fusion.out_features, config.ml_projector,
                                    config.projector_last_bn)
            if config.freeze_lateral:
                self.fusion.lateral.requires_grad_(False)

        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> Embeddings:
        maps = self.taps(x)
        z = self.projector(maps["layer4"].mean(dim=(2, 3)))
        zm = None
        if self.fusion is not None:
            zm = self.ml_projector(self.fusion([maps[lv] for lv in self.config.levels]))
        return Embeddings(z, zm)

    def trunk_state_dict(self, with_gates: bool = False) -> dict[str, torch.Tensor]:
        """The trunk as a plain torchvision ResNet state dict (no ``fc.*`` keys).

        ``torchvision.models.<backbone>().load_state_dict(sd, strict=False)`` accepts it and reports
        only ``fc.*`` missing. With ``with_gates=True`` the context-bottleneck weights are added under
        ``gates.<level>.*`` (a plain ResNet then reports them as unexpected keys).
        """
        sd = {k: v.detach().clone() for k, v in self.backbone.state_dict().items()}
        if with_gates:
            sd.update({f"gates.{k}": v.detach().clone() for k, v in self.gates.state_dict().items()})
        return sd

"""Model configuration and the named presets.

A preset is a plain :class:`ModelConfig`; every field can be overridden with
``dataclasses.replace(get_preset("paper"), lam=0.5)`` or ``get_preset("paper", lam=0.5)``.

Presets
-------
``paper``
    METHOD.md section 2: ResNet-18 at 224 px, context bottlenecks after all five taps,
    global projector 512-4096-4096-4096, multi-level branch fusing the five taps at 64x64x512,
    pooled to 4x4 (8192 features) and projected 8192-4096-4096-4096, lambda = 1.
``teaching``
    The same architecture at 64 px with narrow heads (projectors 1024-1024-1024, fusion 16x16x256
    pooled to 4x4), so that one training step on a batch of 64 two-view images runs in about a
    second on a 2-core CPU (numbers in ``benchmarks/results/step_time.json``).
``vicreg``
    The baseline: the ``paper`` trunk and global projector, no context bottlenecks, no multi-level
    branch (lambda is irrelevant).
``vicreg-teaching``
    The baseline at ``teaching`` size.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

#: Names of the five backbone taps, in trunk order.
LEVELS: tuple[str, ...] = ("stem", "layer1", "layer2", "layer3", "layer4")

BACKBONES = ("resnet18", "resnet34", "resnet50")


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines an MLVICX (or VICReg) network.

    Attributes
    ----------
    backbone: torchvision ResNet name (``resnet18``, ``resnet34`` or ``resnet50``).
    image_size: nominal square input size in pixels (the model accepts other sizes too).
    in_channels: channels of the input images (1 for radiographs; repeated to 3 inside the model).
    pretrained: ``"imagenet"`` to start from torchvision's ImageNet weights, ``None`` for random init.
    context_bottleneck: gate every tap with a context bottleneck (channel + spatial attention).
    multilevel: build the multi-level branch (``False`` gives VICReg).
    levels: which taps feed the multi-level branch.
    projector: widths of the global projector's Linear layers (input width is the trunk's).
    ml_projector: widths of the multi-level MLP's Linear layers.
    fusion_size: side of the grid the taps are resized to before the 1x1 convs (64 in the paper).
    fusion_channels: output channels of every lateral 1x1 conv (512 in the paper).
    pool_size: side of the adaptive-average-pool grid after the sum (4 in the paper).
    freeze_lateral: keep the lateral 1x1 convs at their random init (the released code's behaviour).
    lam: weight of the multi-level VICReg term in the total loss.
    sim_coeff, std_coeff, cov_coeff: VICReg weights (25, 25, 1).
    multilevel_impl: ``"pooled"`` (fast, exact) or ``"literal"`` (materialises the fusion maps;
        kept for tests and the benchmark).
    """

    backbone: str = "resnet18"
    image_size: int = 224
    in_channels: int = 1
    pretrained: str | None = None
    context_bottleneck: bool = True
    multilevel: bool = True
    levels: tuple[str, ...] = LEVELS
    projector: tuple[int, ...] = (4096, 4096, 4096)
    ml_projector: tuple[int, ...] = (4096, 4096, 4096)
    fusion_size: int = 64
    fusion_channels: int = 512
    pool_size: int = 4
    freeze_lateral: bool = False
    lam: float = 1.0
    sim_coeff: float = 25.0
    std_coeff: float = 25.0
    cov_coeff: float = 1.0
    multilevel_impl: str = "pooled"

    def __post_init__(self) -> None:
        # Accept lists (YAML, CLI) but store tuples so configs stay hashable.
        for name in ("levels", "projector", "ml_projector"):
            value = getattr(self, name)
            if not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone={self.backbone!r}: expected one of {BACKBONES}")
        unknown = [lv for lv in self.levels if lv not in LEVELS]
        if unknown or (self.multilevel and not self.levels):
            raise ValueError(
                f"levels={self.levels!r}: expected a non-empty subset of {LEVELS}"
            )
        if self.multilevel_impl not in ("pooled", "literal"):
            raise ValueError(
                f"multilevel_impl={self.multilevel_impl!r}: expected 'pooled' or 'literal'"
            )
        if self.pretrained not in (None, "imagenet"):
            raise ValueError(f"pretrained={self.pretrained!r}: expected None or 'imagenet'")
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels={self.in_channels}: expected 1 or 3")
        for name in ("image_size", "fusion_size", "fusion_channels", "pool_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected a positive integer")
        if self.fusion_size % self.pool_size:
            raise ValueError(
                f"fusion_size={self.fusion_size} must be divisible by pool_size={self.pool_size}"
            )
        if not self.projector or (self.multilevel and not self.ml_projector):
            raise ValueError("projector and ml_projector need at least one layer width")

    @property
    def variant(self) -> str:
        """``"mlvicx"`` or ``"vicreg"``."""
        return "mlvicx" if self.multilevel else "vicreg"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_PRESETS: dict[str, ModelConfig] = {
    "paper": ModelConfig(),
    "teaching": ModelConfig(
        image_size=64,
        projector=(1024, 1024, 1024),
        ml_projector=(1024, 1024, 1024),
        fusion_size=16,
        fusion_channels=256,
        pool_size=4,
    ),
}
_PRESETS["vicreg"] = dataclasses.replace(
    _PRESETS["paper"], multilevel=False, context_bottleneck=False
)
_PRESETS["vicreg-teaching"] = dataclasses.replace(
    _PRESETS["teaching"], multilevel=False, context_bottleneck=False
)

PRESETS: tuple[str, ...] = tuple(_PRESETS)


def get_preset(name: str, **overrides) -> ModelConfig:
    """Return the named preset, with any field overridden by keyword."""
    if name not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}: expected one of {PRESETS}")
    cfg = _PRESETS[name]
    valid = {f.name for f in dataclasses.fields(ModelConfig)}
    bad = sorted(set(overrides) - valid)
    if bad:
        raise ValueError(f"unknown model option(s) {bad}: valid options are {sorted(valid)}")
    return dataclasses.replace(cfg, **overrides)

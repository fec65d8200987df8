"""The one configuration tree of the kit: every setting of pretraining and evaluation, with presets.

A :class:`Config` nests seven frozen sections, addressed by dotted keys (``--set section.key=value``
on every command, a dict of dotted keys in Python and in notebook parameters, nested YAML in files)::

    model.*   ModelConfig   the method (mlvicx_core/methods) and its network
    loss.*    LossConfig    the methods' loss weights (METHOD.md section 3)
    aug.*     AugConfig     the two views (crop, flip, jitter, blur, solarize, rotation, shift)
    data.*    DataConfig    dataset name, root, split, image size, loading
    optim.*   OptimConfig   LARS / AdamW / SGD, learning-rate schedule, clipping
    train.*   LoopConfig    epochs, batch, seed, device, precision, logging, checkpoints, online probe
    eval.*    EvalConfig    read-outs of ``mlvicx evaluate``, the notebooks and the results experiment

Types. Every field's *annotation* is its type, checked on every assignment (YAML, ``--set``, Python):
``int``, ``float`` (finite unless the field says otherwise; ``1e-3`` written in YAML 1.1 style is
accepted), ``bool``, ``str``, ``Literal[...]`` choices, ``X | None``, ``tuple[T, ...]`` and
``tuple[T, T]``. Field metadata adds bounds (``ge``, ``gt``, ``le``, ``lt``) and a one-line ``doc``
(``mlvicx pretrain --keys`` lists them all). A wrong value raises :class:`ConfigError` naming the key,
the value and what was expected.

Presets are YAML files in ``mlvicx_core/presets/`` (``paper``, ``teaching``, ``vicreg``,
``vicreg-teaching``; any other YAML file by path). A file may name a ``base`` preset to start from
and a ``variant`` (:data:`VARIANTS`, ``mlvicx_core/variants.yaml``) to apply before its own sections.

:func:`config_hash` is a content hash of everything that changes the trained weights (model, loss,
aug, data, optim, train minus output and logging keys, eval not at all), so renaming a run,
silencing its progress bar or changing the online probe reuses it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePath, PureWindowsPath
from typing import Any, Literal

import yaml

# The choices of the keys that several modules list: each written once, here, as the key's type.
Level = Literal["stem", "layer1", "layer2", "layer3", "layer4"]
Task = Literal["probe", "knn", "factors", "finetune", "segmentation", "gradcam", "umap"]
FeatureKind = Literal["trunk", "layer3+layer4", "global", "multi"]
#: Names of the five backbone taps, in trunk order.
LEVELS: tuple[str, ...] = typing.get_args(Level)
#: The read-outs of the evaluation, in the order they run (probe before gradcam).
TASKS: tuple[str, ...] = typing.get_args(Task)
#: What probe, kNN and UMAP read (``eval.features``; ``mlvicx_core.evaluation.embeddings``).
FEATURE_KINDS: tuple[str, ...] = typing.get_args(FeatureKind)


class ConfigError(ValueError):
    """A configuration key or value that cannot be used (the message says what was expected)."""


def opt(default: Any, doc: str, **bounds: float) -> Any:
    """A config field: its default, a one-line doc and optional bounds (``ge``, ``gt``, ``le``,
    ``lt``) checked on every element of a number or tuple of numbers."""
    unknown = set(bounds) - {"ge", "gt", "le", "lt"}
    if unknown:
        raise TypeError(f"unknown bound(s) {sorted(unknown)}")
    return field(default=default, metadata={"doc": doc, **bounds})


# -- typed values ----------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a)
                           for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        return f"a list of {len(args)} values [{', '.join(_type_name(a) for a in args)}]"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp)))


class _Mismatch(Exception):
    pass


def _convert(tp: Any, value: Any) -> Any:
    """``value`` as type ``tp`` or :class:`_Mismatch` (no silent truncation, no NaN)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise _Mismatch
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v) for v in value)
        if len(value) != len(args):
            raise _Mismatch
        return tuple(_convert(a, v) for a, v in zip(args, value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 and 1.0e6 as strings
            try:
                value = float(value)
            except ValueError:
                raise _Mismatch from None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
            if math.isnan(value):
                raise _Mismatch
            return value
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    raise TypeError(f"unsupported config annotation {tp!r}")


def _numbers(value: Any):
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, tuple):
        return [x for v in value for x in _numbers(v)]
    return []


def check_value(key: str, f: dataclasses.Field, tp: Any, value: Any) -> Any:
    """``value`` converted to the field's annotation ``tp`` and checked against its bounds."""
    try:
        out = _convert(tp, value)
    except _Mismatch:
        raise ConfigError(f"{key}={value!r}: expected {_type_name(tp)}") from None
    md = f.metadata
    for x in _numbers(out):
        if math.isinf(x) and not md.get("allow_inf"):
            raise ConfigError(f"{key}={value!r}: expected a finite number")
        for bound, ok, word in (("ge", x >= md.get("ge", -math.inf), ">="),
                                ("gt", x > md.get("gt", -math.inf), ">"),
                                ("le", x <= md.get("le", math.inf), "<="),
                                ("lt", x < md.get("lt", math.inf), "<")):
            if bound in md and not ok:
                raise ConfigError(f"{key}={value!r}: expected every value {word} {md[bound]}")
    return out


class Section:
    """Base of every config section: fields are type-checked from their annotations on creation.

    Subclasses are frozen dataclasses; :meth:`validate` adds checks that involve several fields.
    """

    _name = "section"

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = check_value(f"{self._name}.{f.name}", f, hints[f.name], getattr(self, f.name))
            object.__setattr__(self, f.name, value)
        self.validate()

    def validate(self) -> None:
        """Cross-field checks (raise :class:`ConfigError` naming the keys)."""

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self._name}.{key}={getattr(self, key)!r}: {message}")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)


# -- the sections ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelConfig(Section):
    """The self-supervised method (``mlvicx_core.methods``) and the network it trains (METHOD.md
    section 2). The paper's method and network are the default; ``get_preset("teaching")`` is the
    small network.
    """

    _name = "model"
    method: str = opt("mlvicx", "self-supervised method: a name in mlvicx_core.methods.METHODS "
                                "(mlvicx, vicreg, barlow_twins)")
    backbone: Literal["resnet18", "resnet34", "resnet50"] = opt("resnet18", "torchvision ResNet")
    in_channels: Literal[1, 3] = opt(1, "image channels (1 = grey, repeated to 3 in the model)")
    width: int = opt(64, "base width of the ResNet (channels of the stem and layer1; the stages "
                         "double it): 64 is torchvision's network and the paper's", ge=4)
    stem: Literal["imagenet", "cifar"] = opt(
        "imagenet", "imagenet: 7x7 stride-2 conv + max-pool (torchvision); cifar: 3x3 stride-1 "
                    "conv, no max-pool (small images, e.g. MedMNIST's 28 px ResNet-18)")
    pretrained: Literal["imagenet"] | None = opt(None, "start from torchvision ImageNet weights")
    context_bottleneck: bool = opt(True, "gate every tap with channel + spatial attention")
    multilevel: bool = opt(True, "build the multi-level branch (false = VICReg)")
    levels: tuple[Level, ...] = opt(LEVELS, "taps that feed the multi-level branch")
    projector: tuple[int, ...] = opt((4096, 4096, 4096), "global projector widths", ge=1)
    ml_projector: tuple[int, ...] = opt((4096, 4096, 4096), "multi-level MLP widths", ge=1)
    projector_last_bn: bool = opt(True, "BatchNorm after the projectors' last Linear (the "
                                        "released code); false = plain Linear (official VICReg)")
    fusion_size: int = opt(64, "side of the grid the taps are resized to", ge=1)
    fusion_channels: int = opt(512, "output channels of every lateral 1x1 conv", ge=1)
    pool_size: int = opt(4, "side of the pooled grid after the sum", ge=1)
    freeze_lateral: bool = opt(False, "keep the lateral 1x1 convs at init (the released code)")
    multilevel_impl: Literal["pooled", "literal"] = opt("pooled", "fast exact form, or the "
                                                                  "literal definition")

    def validate(self) -> None:
        from .methods import METHODS

        if self.method not in METHODS:
            raise self.error("method", f"expected one of {sorted(METHODS)} (mlvicx_core/methods)")
        if self.pretrained and (self.width != 64 or self.stem != "imagenet"):
            raise self.error("pretrained", "ImageNet weights exist only for model.width=64 with "
                                           "model.stem=imagenet")
        if self.multilevel and not self.levels:
            raise self.error("levels", "expected at least one tap for the multi-level branch")
        if len(set(self.levels)) != len(self.levels):
            raise self.error("levels", "expected each tap at most once")
        if not self.projector:
            raise self.error("projector", "expected at least one layer width")
        if self.multilevel and not self.ml_projector:
            raise self.error("ml_projector", "expected at least one layer width")
        if self.fusion_size % self.pool_size:
            raise self.error("fusion_size", f"must be divisible by model.pool_size="
                                            f"{self.pool_size}")


@dataclass(frozen=True)
class LossConfig(Section):
    """The loss weights of the methods (``mlvicx_core.methods``). VICReg and MLVICX:
    ``L = l(z, z') + lam * l(m, m')``, ``l = sim * s + std * (v + v') / 2 + cov * (c + c')``;
    Barlow Twins: ``sum_i (1 - C_ii)^2 + offdiag_coeff * sum_{i != j} C_ij^2``."""

    _name = "loss"
    lam: float = opt(1.0, "weight of the multi-level VICReg term", ge=0)
    sim_coeff: float = opt(25.0, "invariance weight", ge=0)
    std_coeff: float = opt(25.0, "variance weight (0 lets the embeddings collapse)", ge=0)
    cov_coeff: float = opt(1.0, "covariance weight", ge=0)
    gamma: float = opt(1.0, "target standard deviation of the variance hinge", gt=0)
    eps: float = opt(1e-4, "added to the variance under the square root", gt=0)
    offdiag_coeff: float = opt(0.0051, "Barlow Twins: weight of the off-diagonal cross-correlation "
                                       "terms (lambda)", ge=0)


@dataclass(frozen=True)
class AugConfig(Section):
    """The two views (METHOD.md section 4; the ops and their order in ``mlvicx_core.data.augment``).

    Knobs shared by both views are single values; the two the paper makes asymmetric are pairs
    ``[view 1, view 2]``. The defaults are the paper's ImageNet-style recipe.
    """

    _name = "aug"
    crop_scale: tuple[float, float] = opt((0.08, 1.0), "random resized crop area range",
                                          gt=0, le=1)
    crop_ratio: tuple[float, float] = opt((3 / 4, 4 / 3), "crop aspect-ratio range", gt=0)
    flip_p: float = opt(0.5, "horizontal flip probability", ge=0, le=1)
    jitter_p: float = opt(0.8, "brightness/contrast jitter probability", ge=0, le=1)
    brightness: float = opt(0.4, "brightness factor range 1 +- b", ge=0, lt=1)
    contrast: float = opt(0.4, "contrast factor range 1 +- c", ge=0, lt=1)
    blur_p: tuple[float, float] = opt((1.0, 0.1), "Gaussian blur probability [view 1, view 2]",
                                      ge=0, le=1)
    blur_sigma: tuple[float, float] = opt((0.1, 2.0), "blur sigma range in pixels", gt=0)
    blur_kernel: int | None = opt(None, "blur kernel side (odd; null = 23 px scaled to the "
                                        "image size)", ge=1)
    solarize_p: tuple[float, float] = opt((0.0, 0.2), "solarize probability [view 1, view 2]",
                                          ge=0, le=1)
    solarize_threshold: float = opt(0.5, "solarize pixels at or above this value", ge=0, le=1)

    def validate(self) -> None:
        for key in ("crop_scale", "crop_ratio", "blur_sigma"):
            lo, hi = getattr(self, key)
            if lo > hi:
                raise self.error(key, "expected [min, max] with min <= max")
        if self.blur_kernel is not None and self.blur_kernel % 2 == 0:
            raise self.error("blur_kernel", "expected an odd kernel side")


@dataclass(frozen=True)
class DataConfig(Section):
    """Which images, where, at what size. ``dataset`` names an entry of
    :data:`mlvicx_core.data.registry.DATASETS` (``synthetic``, ``folder``, ``nih``,
    ``pneumoniamnist``, ``chestmnist``, ``rsna``, ``siim``, ``vindr``)."""

    _name = "data"
    dataset: str = opt("synthetic", "registered dataset name")
    root: str | None = opt(None, "data folder (not needed for synthetic)")
    split: Literal["train", "val", "test", "all"] = opt("train", "split used for pretraining")
    split_fractions: tuple[float, float, float] = opt(
        (0.7, 0.1, 0.2), "patient fractions (train, val, test) where a dataset has no official "
                         "split", ge=0, le=1)
    length: int | None = opt(2048, "images (synthetic: rendered; others: a seeded subset; null "
                                   "= all)", ge=1)
    seed: int = opt(0, "seed of the synthetic stream, of patient splits and of subsets", ge=0)
    view_size: int = opt(64, "side of the two views the model trains on, in pixels", ge=8)
    stored_size: int | None = opt(None, "side the images are stored at: read, cached, cropped into "
                                        "views and evaluated whole (null = data.view_size)", ge=8)
    num_workers: int = opt(0, "DataLoader worker processes", ge=0)
    in_memory: bool = opt(False, "read (synthetic: render) the pretraining images once into memory "
                                 "instead of every epoch (float32, length x stored_size^2 x 4 bytes)")
    cache: bool = opt(False, "decode and resize every file once into a memory-mapped uint8 cache "
                             "under data.cache_dir, rebuilt when the files change (pretraining "
                             "and evaluation; every dataset but synthetic)")
    cache_dir: str = opt("data/cache", "folder of the data.cache entries")
    on_error: Literal["raise", "skip"] = opt("raise", "unreadable files: stop, or skip them")
    bit_depth: int | None = opt(None, "significant bits of 16-bit PNG/TIFF files without an sBIT "
                                      "chunk, e.g. 12 (null: sBIT, else refuse unless 16-bit)",
                                ge=1, le=16)

    def validate(self) -> None:
        if abs(sum(self.split_fractions) - 1) > 1e-6:
            raise self.error("split_fractions", "expected three fractions summing to 1")
        if self.stored_size is not None and self.view_size > self.stored_size:
            raise self.error("view_size", f"larger than data.stored_size={self.stored_size}: every "
                                          f"view would be upsampled from {self.stored_size} px "
                                          "(blurred, no detail gained); expected data.view_size "
                                          f"<= data.stored_size: set data.stored_size to at least "
                                          f"{self.view_size}, or to null (images stored at "
                                          "data.view_size)")


@dataclass(frozen=True)
class OptimConfig(Section):
    """Optimiser and schedule (equations in ``mlvicx_core.train.optim``)."""

    _name = "optim"
    name: Literal["lars", "adamw", "sgd"] = opt("lars", "optimiser")
    base_lr: float = opt(0.2, "learning rate at batch 256; peak = base_lr * batch / 256", gt=0)
    weight_decay: float = opt(1e-6, "decay of weights (not biases or norm parameters)", ge=0)
    momentum: float = opt(0.9, "LARS / SGD momentum", ge=0, lt=1)
    trust_coefficient: float = opt(0.001, "LARS trust coefficient", gt=0)
    betas: tuple[float, float] = opt((0.9, 0.999), "AdamW betas", ge=0, lt=1)
    warmup_epochs: float = opt(2.0, "linear warmup length in epochs", ge=0)
    final_lr_ratio: float = opt(0.001, "cosine floor as a fraction of the peak", ge=0, le=1)
    grad_clip: float | None = opt(None, "clip the global gradient norm (null: no clipping)", gt=0)


@dataclass(frozen=True)
class LoopConfig(Section):
    """The training loop (``train.*``)."""

    _name = "train"
    epochs: int = opt(300, "epochs the schedule spans", ge=1)
    batch_size: int = opt(64, "global batch (all processes)", ge=2)
    seed: int = opt(0, "seed of weights, sampling and augmentation", ge=0)
    max_steps: int | None = opt(None, "stop after this many steps (the schedule still spans "
                                      "train.epochs)", ge=1)
    device: str = opt("auto", "auto, cpu, cuda, cuda:<n> or mps")
    threads: int = opt(0, "CPU math threads (0 = leave torch's setting)", ge=0)
    amp: bool = opt(True, "bfloat16 autocast on CUDA (the loss stays float32)")
    amp_cpu: bool = opt(False, "bfloat16 autocast on CPU too (needs train.amp; the loss stays "
                               "float32; faster where the CPU has bf16 units, results differ)")
    channels_last: bool = opt(True, "channels-last memory format")
    compile: bool = opt(False, "torch.compile the two-view forward")
    sync_batchnorm: bool = opt(True, "SyncBatchNorm under DDP on CUDA")
    log_every: int = opt(1, "steps between metric records", ge=1)
    diag_every: int = opt(50, "steps between collapse diagnostics", ge=1)
    eval_every: int = opt(0, "steps between online-probe read-outs (0 = off)", ge=0)
    probe_images: int = opt(1600, "training-split images the online probe's read-outs are "
                                   "fitted on (the held-out probe's 1600 for the synthetic data)",
                            ge=8)
    probe_val_images: int = opt(1024, "validation-split images the online probe scores", ge=8)
    ckpt_every: int = opt(1000, "steps between checkpoints (also at the end)", ge=1)
    keep_last: int = opt(3, "checkpoints kept", ge=1)
    out_dir: str = opt("runs", "parent folder of run folders")
    run_name: str | None = opt(None, "run folder name (null: <preset>-<hash>)")
    progress: bool = opt(True, "progress bar")
    tensorboard: bool = opt(True, "TensorBoard events next to metrics.jsonl")

    def validate(self) -> None:
        dev = self.device
        ok = dev in ("auto", "cpu", "cuda", "mps") or (
            dev.startswith("cuda:") and dev[5:].isdigit())
        if not ok:
            raise self.error("device", "expected auto, cpu, cuda, cuda:<n> or mps")
        name = self.run_name
        if name is not None and (not name.strip() or name in (".", "..") or "/" in name
                                 or "\\" in name or PurePath(name).is_absolute()
                                 or PureWindowsPath(name).is_absolute()):
            raise self.error("run_name", "expected a folder name inside train.out_dir (no '/' or "
                                         "'\\', not '.', '..' or an absolute path; null names it "
                                         "<preset>-<hash>); move the whole run with "
                                         "train.out_dir")
        if self.amp_cpu and not self.amp:
            raise self.error("amp_cpu", "needs train.amp=true (train.amp switches bf16 autocast "
                                        "on; train.amp_cpu extends it to the CPU)")


@dataclass(frozen=True)
class EvalConfig(Section):
    """Read-outs of frozen or fine-tuned encoders (``mlvicx_core.evaluation.pipeline``)."""

    _name = "eval"
    tasks: tuple[Task, ...] = opt(("probe", "knn"), "read-outs to run")
    fractions: tuple[float, ...] = opt((0.01, 0.1, 1.0), "label fractions of the training "
                                                         "patients", gt=0, le=1)
    split_sizes: tuple[int | None, int | None, int | None] | None = opt(
        None, "images per evaluation split (train, val, test): synthetic renders this many "
              "(null: 1600, 200, 400); other datasets a seeded subset (null: all)", ge=1)
    features: FeatureKind = opt(
        "trunk", "what probe, kNN and UMAP read")
    keep_gates: bool = opt(False, "transfer the context bottlenecks with the trunk")
    seed: int = opt(0, "seed of label fractions, bootstrap and baselines", ge=0)
    n_boot: int = opt(1000, "bootstrap resamples for the 95 % intervals", ge=1)
    batch_size: int = opt(64, "batch of feature extraction", ge=1)
    device: str | None = opt(None, "cuda / mps / cpu (null: best available)")
    cache_dir: str | None = opt(None, "cache extracted features here")
    probe_cs: tuple[float, ...] = opt((0.001, 0.01, 0.1, 1.0, 10.0), "probe C grid (chosen on "
                                                                     "val)", gt=0)
    probe_max_iter: int = opt(2000, "L-BFGS iterations of each probe", ge=1)
    knn_ks: tuple[int, ...] = opt((5, 10, 20, 50), "k grid of the kNN read-out (chosen on val)",
                                  ge=1)
    min_patients: int = opt(1, "skip a label fraction that leaves fewer training patients", ge=1)
    finetune_epochs: int = opt(5, "fine-tuning epochs", ge=1)
    finetune_lr: float = opt(1e-4, "fine-tuning learning rate", gt=0)
    seg_epochs: int = opt(10, "segmentation epochs", ge=1)
    seg_fraction: float = opt(1.0, "label fraction for segmentation", gt=0, le=1)
    gradcam_tap: Level = opt(
        "layer4", "tap Grad-CAM explains")
    gradcam_images: int = opt(64, "positive test images scored per finding", ge=1)
    tolerance: float = opt(0.0, "pointing-game tolerance in pixels", ge=0)
    colour_by: tuple[str, ...] = opt((), "UMAP colour columns (findings or metadata)")


SECTIONS: dict[str, type[Section]] = {
    "model": ModelConfig, "loss": LossConfig, "aug": AugConfig, "data": DataConfig,
    "optim": OptimConfig, "train": LoopConfig, "eval": EvalConfig,
}


@dataclass(frozen=True)
class Config:
    """Everything a run depends on; ``preset`` records where it came from (not hashed)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    preset: str = "custom"

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), suitable for YAML/JSON and :func:`from_dict`."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def set(self, overrides: list[str] | dict[str, Any]) -> Config:
        """:func:`apply_overrides` as a method."""
        return apply_overrides(self, overrides)


# -- building configs -----------------------------------------------------------------------------
def valid_keys() -> list[str]:
    """Every dotted key ``--set`` accepts."""
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def describe_keys() -> str:
    """One line per key: ``section.key  type  default  doc`` (``mlvicx pretrain --keys``)."""
    lines = []
    for s, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = json.dumps(json.loads(json.dumps(f.default)))
            lines.append(f"{s}.{f.name:20s} {_type_name(hints[f.name])}; default {default}. "
                         f"{f.metadata.get('doc', '')}")
    return "\n".join(lines)


def _unknown(key: str) -> ConfigError:
    return ConfigError(f"unknown config key {key!r}; valid keys are:\n  " + "\n  ".join(valid_keys()))


#: Former key names still read (presets, ``--set``, the configs of older checkpoints): old -> new.
RENAMED_KEYS = {"data.image_size": "data.view_size", "data.load_size": "data.stored_size"}


def _update_section(name: str, base: Section, updates: dict[str, Any], source: str = ""
                    ) -> Section:
    if not isinstance(updates, dict):
        raise ConfigError(f"{source}section {name!r}: expected a mapping of keys to values, got "
                          f"{updates!r}")
    for old, new in RENAMED_KEYS.items():
        section, _, key = old.partition(".")
        if section == name and key in updates:
            new_key = new.partition(".")[2]
            if new_key in updates:
                raise ConfigError(f"{source}{old} and {new} are one key ({old} is its former "
                                  f"name): give {new} only")
            updates = {new_key if k == key else k: v for k, v in updates.items()}
    names = {f.name for f in dataclasses.fields(SECTIONS[name])}
    for k in updates:
        if k not in names:
            raise _unknown(f"{name}.{k}")
    try:
        return dataclasses.replace(base, **updates)
    except ConfigError as err:
        raise ConfigError(f"{source}{err}") from None


def from_dict(d: dict[str, Any], preset: str | None = None, base: Config | None = None,
              source: str = "") -> Config:
    """A config from a nested dict (a YAML file or a checkpoint's ``config``), on top of ``base``."""
    if not isinstance(d, dict):
        raise ConfigError(f"{source}expected a mapping of sections (model, loss, aug, data, "
                          f"optim, train, eval), got {type(d).__name__}")
    extra = set(d) - set(SECTIONS) - {"preset"}
    if extra:
        raise _unknown(min(extra))
    config = base if base is not None else Config()
    sections = {name: _update_section(name, getattr(config, name), d.get(name) or {}, source)
                for name in SECTIONS}
    return Config(**sections, preset=preset or d.get("preset", config.preset))


def preset_names() -> list[str]:
    folder = resources.files("mlvicx_core") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _duplicate_keys(node: yaml.Node, source: str, where: tuple[str, ...] = ()) -> None:
    """Raise :class:`ConfigError` at the first mapping key given twice anywhere under ``node``
    (YAML keeps the last value silently; here it is an error naming the key and both lines)."""
    if isinstance(node, yaml.SequenceNode):
        for child in node.value:
            _duplicate_keys(child, source, where)
    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict[tuple[str, str], int] = {}
    for key, value in node.value:
        if key.tag == "tag:yaml.org,2002:merge" or not isinstance(key, yaml.ScalarNode):
            _duplicate_keys(value, source, where)
            continue
        dotted = ".".join((*where, str(key.value)))
        line = key.start_mark.line + 1
        if (key.tag, key.value) in seen:
            what = "section" if not where else "key"
            raise ConfigError(f"{source}: {what} {dotted!r} is given twice (lines "
                              f"{seen[key.tag, key.value]} and {line}); YAML would keep only the "
                              "last one, silently dropping the first: give each key once")
        seen[key.tag, key.value] = line
        _duplicate_keys(value, source, (*where, str(key.value)))


def load_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load(text)``, except that a key given twice in one mapping (at any depth) is a
    :class:`ConfigError` naming ``source``, the key and its two lines; invalid YAML is one too.
    Returns None for an empty document."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _duplicate_keys(node, source)
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML ({err})") from None
    finally:
        loader.dispose()


def _read_preset(name_or_path: str) -> tuple[dict, str, str]:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        text, name, source = path.read_text(), path.stem, str(path)
    else:
        res = resources.files("mlvicx_core") / "presets" / f"{name_or_path}.yaml"
        if not res.is_file():
            raise ConfigError(f"unknown preset {name_or_path!r}: expected one of {preset_names()} "
                              "or a path to a .yaml file")
        text, name, source = res.read_text(), name_or_path, f"preset {name_or_path}"
    data = load_yaml(text, source)
    if data is None:
        raise ConfigError(f"{source}: the file is empty; expected a mapping of sections ("
                          f"{', '.join(SECTIONS)}), optionally with 'base: <preset>' and "
                          "'variant: <name>' (an empty file is not read as 'all defaults')")
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level, got "
                          f"{type(data).__name__}")
    return data, name, source


def load_preset(name_or_path: str, _seen: tuple[str, ...] = ()) -> Config:
    """A packaged preset by name or any YAML file by path (``base`` and ``variant`` resolved)."""
    data, name, source = _read_preset(name_or_path)
    data = dict(data)
    base_name, variant = data.pop("base", None), data.pop("variant", None)
    if base_name is not None:
        if base_name in _seen or base_name == name:
            raise ConfigError(f"{source}: base preset {base_name!r} is circular")
        config = load_preset(str(base_name), (*_seen, name))
    else:
        config = Config()
    if variant is not None:
        config = apply_variant(config, str(variant))
    return from_dict(data, preset=name, base=config, source=f"{source}: ")


def package_yaml(name: str) -> dict[str, Any]:
    """A YAML mapping shipped in the package (``mlvicx_core/<name>``), e.g. ``variants.yaml``."""
    data = yaml.safe_load((resources.files("mlvicx_core") / name).read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"mlvicx_core/{name}: expected a mapping at the top level")
    return data


def _read_variants() -> dict[str, dict[str, Any]]:
    data = package_yaml("variants.yaml")
    bad = [k for k, v in data.items() if not isinstance(v, dict)]
    if bad:
        raise ConfigError(f"mlvicx_core/variants.yaml: variant(s) {bad}: expected a mapping of "
                          "dotted keys to values")
    return data


#: The named variants (``mlvicx_core/variants.yaml``): name -> ``{dotted key: value}`` overrides.
VARIANTS: dict[str, dict[str, Any]] = _read_variants()


def variant_overrides(name: str) -> dict[str, Any]:
    """The overrides of variant ``name`` (a clear error for an unknown name)."""
    if name not in VARIANTS:
        raise ConfigError(f"unknown variant {name!r}: expected one of {list(VARIANTS)}")
    return dict(VARIANTS[name])


def apply_variant(config: Config, name: str) -> Config:
    """``config`` with variant ``name`` switched on."""
    return apply_overrides(config, variant_overrides(name))


def parse_override(text: str) -> tuple[str, Any]:
    """``"section.key=value"`` -> ``(key, value)`` with the value parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. train.epochs=3")
    key, raw = text.split("=", 1)
    value = load_yaml(raw, f"override {text!r}: value") if raw.strip() else None
    return key.strip(), value


def apply_overrides(config: Config, overrides: list[str] | dict[str, Any] | None) -> Config:
    """Apply ``["section.key=value", ...]`` (values parsed as YAML) or a ``{dotted key: value}`` dict,
    in order."""
    if not overrides:
        return config
    items = (list(overrides.items()) if isinstance(overrides, dict)
             else [parse_override(t) for t in overrides])
    # one update per section, so that checks across keys (data.view_size <= data.stored_size) see
    # the final values whatever the order they were given in; a key given twice: the last wins
    updates: dict[str, dict[str, Any]] = {}
    for key, value in items:
        section, _, name = key.partition(".")
        if section not in SECTIONS or not name or "." in name:
            raise _unknown(key)
        updates.setdefault(section, {})[name] = value
    for section, changes in updates.items():
        new = _update_section(section, getattr(config, section), changes)
        config = dataclasses.replace(config, **{section: new})
    return config


def load_config(preset: str, overrides: list[str] | dict | None = None) -> Config:
    """The whole configuration of preset ``preset`` (a name or a YAML path), then
    :func:`apply_overrides`."""
    return apply_overrides(load_preset(preset), overrides)


def get_preset(name: str, **model_overrides: Any) -> ModelConfig:
    """Only the ``model`` section (a :class:`ModelConfig`) of preset ``name``, fields overridden by
    keyword: what ``MLVICX(...)`` takes. ``load_config(name)`` is the whole :class:`Config`."""
    model = load_preset(name).model
    try:
        return dataclasses.replace(model, **model_overrides)
    except TypeError:
        valid = sorted(f.name for f in dataclasses.fields(ModelConfig))
        bad = sorted(set(model_overrides) - set(valid))
        raise ConfigError(f"unknown model option(s) {bad}: valid options are {valid}") from None


# -- identity ---------------------------------------------------------------------------------------
#: Keys that do not change the trained weights (left out of :func:`config_hash`).
NON_RESULT_KEYS = frozenset({
    "preset", "data.num_workers", "data.in_memory", "data.cache_dir", "train.log_every",
    "train.diag_every", "train.eval_every", "train.ckpt_every", "train.keep_last", "train.out_dir",
    "train.run_name", "train.progress", "train.tensorboard", "train.threads", "train.max_steps",
    "train.probe_images", "train.probe_val_images",
})


def flat(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> ``{dotted key: value}``."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat(v, key + "."))
        else:
            out[key] = v
    return out


def config_hash(config: Config) -> str:
    """SHA-256 (hex) of the result-relevant content: every section but ``eval``, minus
    :data:`NON_RESULT_KEYS`. ``train.max_steps`` is left out because a run stopped early is the
    prefix of the longer one (resume continues it); ``done.json`` records the steps reached."""
    d = config.to_dict()
    d.pop("eval")
    items = {k: v for k, v in flat(d).items() if k not in NON_RESULT_KEYS}
    return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()


def diff_keys(a: Config, b: Config) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    fa, fb = flat(a.to_dict()), flat(b.to_dict())
    return sorted(k for k in fa if fa[k] != fb.get(k))

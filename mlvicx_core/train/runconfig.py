"""The full pretraining configuration: model, data, optimiser and loop, with presets and overrides.

A :class:`TrainConfig` nests four frozen dataclasses, addressed by dotted keys::

    model.<field>   ModelConfig (mlvicx_core.config): architecture and loss weights
    data.<field>    DataConfig: which dataset, where, how it is loaded
    optim.<field>   OptimConfig: LARS / AdamW, learning-rate schedule, clipping
    train.<field>   LoopConfig: epochs, batch, seed, device, precision, logging, checkpoints

Presets are YAML files in ``mlvicx_core/presets/`` (``paper``, ``teaching``); a path to any YAML file
of the same shape works too. In YAML the ``model`` section may name a model preset
(``model: {preset: teaching, lam: 0.5}``); the other keys override it. ``--set key=value`` overrides
are parsed as YAML scalars (``train.epochs=3``, ``model.projector=[256,256]``, ``optim.grad_clip=null``)
and applied in order. An unknown key raises :class:`ConfigError` listing the valid keys.

:func:`config_hash` is a content hash of everything that changes the trained weights: output paths,
logging and progress settings are left out, so renaming a run or silencing its progress bar reuses
it (see ``mlvicx_core.train.runs.train_or_load``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..config import ModelConfig, get_preset


class ConfigError(ValueError):
    """A configuration key or value that cannot be used (the message says what was expected)."""


@dataclass(frozen=True)
class DataConfig:
    """Pretraining data. ``dataset`` names an entry of ``mlvicx_core.train.pipeline.DATASETS``.

    dataset: ``"synthetic"`` (the embedded phantom, needs no files) or ``"folder"`` (every PNG/JPEG/TIFF
        below ``root``); more can be registered.
    root: data folder for file-based datasets (``None`` for ``synthetic``).
    length: number of synthetic radiographs.
    seed: seed of the synthetic dataset (which radiographs are drawn).
    image_size: side of the stored images before augmentation; ``None`` = ``model.image_size``.
    num_workers: DataLoader worker processes.
    on_error: ``"raise"`` or ``"skip"`` unreadable files (see ``mlvicx_core.data.base``).
    """

    dataset: str = "synthetic"
    root: str | None = None
    length: int = 2048
    seed: int = 0
    image_size: int | None = None
    num_workers: int = 0
    on_error: str = "raise"

    def __post_init__(self) -> None:
        if self.on_error not in ("raise", "skip"):
            raise ConfigError(f"data.on_error={self.on_error!r}: expected 'raise' or 'skip'")
        if self.length < 2 or self.num_workers < 0:
            raise ConfigError(f"data.length={self.length} (>= 2), data.num_workers="
                              f"{self.num_workers} (>= 0)")


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and schedule (METHOD.md section 4; equations in ``mlvicx_core.train.optim``).

    name: ``"lars"`` (the recipe) or ``"adamw"``.
    base_lr: learning rate at a global batch of 256; the peak is ``base_lr * batch_size / 256``.
    weight_decay: applied to weights only (not to biases or normalisation parameters).
    momentum, trust_coefficient: LARS only. betas: AdamW only.
    warmup_epochs: linear warmup length (may be fractional). final_lr_ratio: cosine floor / peak.
    grad_clip: clip the global gradient norm to this value (``None``: no clipping).
    """

    name: str = "lars"
    base_lr: float = 0.2
    weight_decay: float = 1e-6
    momentum: float = 0.9
    trust_coefficient: float = 0.001
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = 2.0
    final_lr_ratio: float = 0.001
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))
        if self.name not in ("lars", "adamw"):
            raise ConfigError(f"optim.name={self.name!r}: expected 'lars' or 'adamw'")
        if self.base_lr <= 0 or self.warmup_epochs < 0 or not 0 <= self.final_lr_ratio <= 1:
            raise ConfigError("optim: expected base_lr > 0, warmup_epochs >= 0, "
                              f"0 <= final_lr_ratio <= 1; got {self}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"optim.grad_clip={self.grad_clip}: expected a positive norm or null")


@dataclass(frozen=True)
class LoopConfig:
    """The training loop.

    epochs, batch_size (global, over all processes), seed.
    max_steps: stop after this many optimizer steps (the schedule still spans ``epochs``).
    device: ``"auto"`` (cuda, then mps, then cpu) or a torch device string.
    amp: bfloat16 autocast on CUDA (loss in float32); ignored elsewhere.
    channels_last, compile (``torch.compile``), sync_batchnorm (SyncBatchNorm under DDP on CUDA).
    log_every: steps between metric records; diag_every: steps between collapse diagnostics.
    ckpt_every: steps between checkpoints (also at every epoch end and at the end); keep_last: k.
    out_dir, run_name (``None``: ``<preset>-<hash>``), progress (tqdm bar), tensorboard.
    """

    epochs: int = 300
    batch_size: int = 64
    seed: int = 0
    max_steps: int | None = None
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    sync_batchnorm: bool = True
    log_every: int = 1
    diag_every: int = 50
    ckpt_every: int = 1000
    keep_last: int = 3
    out_dir: str = "runs"
    run_name: str | None = None
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "log_every", "diag_every", "ckpt_every", "keep_last"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}={getattr(self, name)}: expected a positive integer")
        if self.batch_size < 2:
            raise ConfigError(f"train.batch_size={self.batch_size}: VICReg needs at least 2")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"train.max_steps={self.max_steps}: expected >= 1 or null")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a pretraining run depends on. ``preset`` records where it came from."""

    model: ModelConfig = field(default_factory=lambda: get_preset("teaching"))
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    preset: str = "custom"

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), suitable for YAML/JSON and :func:`from_dict`."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig,
                             "train": LoopConfig}

#: Keys that do not change the trained weights (left out of :func:`config_hash`).
NON_RESULT_KEYS = frozenset({
    "preset", "data.num_workers", "train.log_every", "train.diag_every", "train.ckpt_every",
    "train.keep_last", "train.out_dir", "train.run_name", "train.progress", "train.tensorboard",
})


def valid_keys() -> list[str]:
    """Every dotted key ``--set`` accepts."""
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def _unknown(key: str) -> ConfigError:
    return ConfigError(f"unknown config key {key!r}; valid keys are:\n  " + "\n  ".join(valid_keys()))


def _coerce(key: str, current: Any, value: Any) -> Any:
    """Convert a YAML-parsed ``value`` to the type of the ``current`` one (int -> float, list -> tuple)."""
    if value is None or current is None:
        return tuple(value) if isinstance(value, list) else value
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected true or false")
        return value
    if isinstance(current, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, int) and isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(current, tuple) and isinstance(value, (list, tuple)):
        return tuple(value)
    if isinstance(current, str) and isinstance(value, str):
        return value
    if isinstance(current, str) and isinstance(value, (int, float)):
        return str(value)
    raise ConfigError(f"{key}={value!r}: expected a value like {current!r} "
                      f"({type(current).__name__})")


def _build_section(name: str, base: Any, updates: dict[str, Any]) -> Any:
    fields = {f.name for f in dataclasses.fields(SECTIONS[name])}
    for k in updates:
        if k not in fields:
            raise _unknown(f"{name}.{k}")
    values = {k: _coerce(f"{name}.{k}", getattr(base, k), v) for k, v in updates.items()}
    try:
        return dataclasses.replace(base, **values)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:  # ModelConfig validation
        raise ConfigError(f"{name}: {err}") from err


def from_dict(d: dict[str, Any], preset: str | None = None) -> TrainConfig:
    """Build a config from a nested dict (a preset file or a checkpoint's ``config``)."""
    d = dict(d or {})
    extra = set(d) - set(SECTIONS) - {"preset"}
    if extra:
        raise _unknown(min(extra))
    model_d = dict(d.get("model") or {})
    model_preset = model_d.pop("preset", None)
    try:
        base_model = get_preset(model_preset) if model_preset else ModelConfig()
    except ValueError as err:
        raise ConfigError(f"model.preset: {err}") from err
    sections = {"model": _build_section("model", base_model, model_d)}
    for name in ("data", "optim", "train"):
        sections[name] = _build_section(name, SECTIONS[name](), dict(d.get(name) or {}))
    return TrainConfig(**sections, preset=preset or d.get("preset", "custom"))


def preset_names() -> list[str]:
    folder = resources.files("mlvicx_core") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_preset(name_or_path: str) -> TrainConfig:
    """A packaged preset by name (``paper``, ``teaching``) or any YAML file by path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        text, name = path.read_text(), path.stem
    else:
        res = resources.files("mlvicx_core") / "presets" / f"{name_or_path}.yaml"
        if not res.is_file():
            raise ConfigError(f"unknown preset {name_or_path!r}: expected one of {preset_names()} "
                              "or a path to a .yaml file")
        text, name = res.read_text(), name_or_path
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"preset {name_or_path}: not valid YAML ({err})") from err
    return from_dict(data, preset=name)


def apply_overrides(config: TrainConfig, overrides: list[str] | dict[str, Any]) -> TrainConfig:
    """Apply ``["section.key=value", ...]`` (values parsed as YAML) or a ``{dotted key: value}`` dict."""
    if isinstance(overrides, dict):
        items = list(overrides.items())
    else:
        items = []
        for text in overrides:
            if "=" not in text:
                raise ConfigError(f"override {text!r}: expected key=value, e.g. train.epochs=3")
            key, raw = text.split("=", 1)
            try:
                value = yaml.safe_load(raw) if raw.strip() else None
            except yaml.YAMLError as err:
                raise ConfigError(f"override {text!r}: value is not valid YAML ({err})") from err
            items.append((key.strip(), value))
    for key, value in items:
        section, _, name = key.partition(".")
        if section not in SECTIONS or not name:
            raise _unknown(key)
        new = _build_section(section, getattr(config, section), {name: value})
        config = dataclasses.replace(config, **{section: new})
    return config


def load_config(preset: str = "teaching", overrides: list[str] | dict | None = None) -> TrainConfig:
    """``load_preset(preset)`` then :func:`apply_overrides`."""
    return apply_overrides(load_preset(preset), overrides or [])


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def config_hash(config: TrainConfig, ignore: frozenset[str] | set[str] = frozenset()) -> str:
    """SHA-256 (hex) of the result-relevant config content (see :data:`NON_RESULT_KEYS`)."""
    flat = {k: v for k, v in _flat(config.to_dict()).items()
            if k not in NON_RESULT_KEYS and k not in ignore}
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()


def diff_keys(a: TrainConfig, b: TrainConfig) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    fa, fb = _flat(a.to_dict()), _flat(b.to_dict())
    return sorted(k for k in fa if fa[k] != fb.get(k))

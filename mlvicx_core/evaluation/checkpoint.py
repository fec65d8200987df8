"""Loading a pretrained encoder from a checkpoint, and the reference encoders (baselines).

Checkpoint format assumed here (the training engine writes it): a ``torch.save``'d dict with

- ``"model"``: the :class:`~mlvicx_core.MLVICX` ``state_dict()``;
- ``"config"``: a dict whose ``"model"`` entry holds the :class:`~mlvicx_core.ModelConfig` fields.

Loading is strict: a missing or unexpected key is an error naming the file, never a silent fall
back to random weights (METHOD.md section 6 lists that trap in the released code).
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import torch

from ..config import ModelConfig
from ..model import MLVICX


def model_config_from_dict(fields: dict, source: str = "config") -> ModelConfig:
    """A :class:`ModelConfig` from a plain dict, rejecting unknown field names."""
    valid = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(fields) - valid)
    if unknown:
        raise ValueError(f"{source}: unknown model option(s) {unknown}; valid: {sorted(valid)}")
    return ModelConfig(**fields)


def load_encoder(checkpoint_path: str | Path, map_location: str | torch.device = "cpu") -> MLVICX:
    """Rebuild the network stored in ``checkpoint_path`` and load its weights (strictly).

    Returns the :class:`MLVICX` in eval mode. ``pretrained`` is forced to ``None`` before building so
    that loading a checkpoint never tries to download ImageNet weights (they are overwritten anyway).
    """
    path = Path(checkpoint_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path}: expected a dict with keys 'model' and 'config', found {keys}")
    config = ckpt["config"]
    if not isinstance(config, dict) or "model" not in config:
        raise ValueError(f"{path}: ckpt['config'] must be a dict with a 'model' entry")
    fields = dict(config["model"])
    fields["pretrained"] = None
    model = MLVICX(model_config_from_dict(fields, source=f"{path}: config['model']"))
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not match the configured network "
            f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''})"
        )
    return model.eval()


def save_encoder(model: MLVICX, path: str | Path, **extra) -> None:
    """Write ``model`` in the format :func:`load_encoder` reads (used by tests and baselines)."""
    torch.save({"model": model.state_dict(), "config": {"model": model.config.to_dict()}, **extra},
               Path(path))


def state_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 (16 hex digits) of every parameter and buffer: changes whenever any weight changes."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class BaselineUnavailable(RuntimeError):
    """A reference encoder cannot be built here (e.g. ImageNet weights not available offline)."""


def reference_encoder(kind: str, config: ModelConfig, seed: int = 0) -> MLVICX:
    """The baselines every pretrained encoder is compared to, built from ``config``'s trunk.

    ``"random"``: random initialisation (seeded); ``"imagenet"``: torchvision's ImageNet-supervised
    weights, only when they are already in the local torch hub cache (raises
    :class:`BaselineUnavailable` otherwise, so an offline run reports the skip instead of failing).
    """
    if kind == "random":
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

"""Grad-CAM heatmaps (the ``grad-cam`` package) for heads and for the self-supervised encoder.

- Heads: a :class:`~.finetune.Classifier` (fine-tuned, or a frozen trunk with the linear probe as
  head via :meth:`~.probe.LinearProbe.as_torch_head`); the target is one finding's logit.
- Encoder: an :class:`~mlvicx_core.MLVICX` (or :class:`~.trunk.Trunk`) without labels; the target is
  the cosine similarity between the image's embedding and a reference embedding
  (:class:`SimilarityTarget`), i.e. "which pixels make this image look like the reference".

Any tap can be the target layer: ``stem``, ``layer1`` ... ``layer4`` (the output of that level's
gate, which is the tap itself). Maps are (B, H, W) in [0, 1] at the input size (grad-cam applies a
ReLU, upsamples and min-max scales each map). Every call builds its CAM object inside a ``with``
block, so the forward hooks are removed and the stored activations dropped after each batch: memory
stays flat over any number of images. Drawing the maps is ``mlvicx_core.viz.figures``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from .localisation import localisation_scores, positive_examples


class SimilarityTarget:
    """Grad-CAM target: cosine similarity of one image's embedding (D,) to ``reference`` (D,)."""

    def __init__(self, reference: torch.Tensor) -> None:
        self.reference = reference.detach().flatten()

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        ref = self.reference.to(output.device, output.dtype)
        return F.cosine_similarity(output.reshape(-1, ref.numel()), ref[None], dim=1).sum()


class EmbeddingOf(nn.Module):
    """Wraps an MLVICX so that ``forward`` returns one embedding: ``global`` or ``multi`` (B, D)."""

    def __init__(self, model: nn.Module, embedding: str = "global") -> None:
        super().__init__()
        if embedding not in ("global", "multi"):
            raise ValueError(f"embedding={embedding!r}: expected 'global' or 'multi'")
        self.model, self.embedding = model, embedding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if self.embedding == "multi" and out.multi is None:
            raise ValueError("embedding='multi' needs an MLVICX with a multi-level branch")
        return out.global_ if self.embedding == "global" else out.multi


def cam_maps(model: nn.Module, images: torch.Tensor, target_layer: nn.Module,
             targets: list) -> np.ndarray:
    """Grad-CAM of ``model`` at ``target_layer`` for (B, C, H, W) images -> (B, H, W) in [0, 1]."""
    if images.ndim != 4:
        raise ValueError(f"images {tuple(images.shape)}: expected (B, C, H, W)")
    if len(targets) != len(images):
        raise ValueError(f"{len(targets)} targets for {len(images)} images: give one per image")
    device = next(model.parameters()).device
    # requires_grad on the input: the taps carry gradients even when the weights are frozen
    x = images.detach().to(device, torch.float32).requires_grad_(True)
    with GradCAM(model=model, target_layers=[target_layer]) as cam:
        maps = cam(input_tensor=x, targets=targets)
    model.zero_grad(set_to_none=True)
    return np.asarray(maps, dtype=np.float32)


def _tap_module(net: nn.Module, tap: str) -> nn.Module:
    gates = getattr(net, "gates", None)
    if gates is None or tap not in gates:
        raise ValueError(f"tap {tap!r}: expected one of stem, layer1, layer2, layer3, layer4")
    return gates[tap]


def finding_cams(classifier: nn.Module, images: torch.Tensor, finding: int,
                 tap: str = "layer4") -> np.ndarray:
    """Heatmaps of finding ``finding``'s logit for a Classifier (``.trunk`` + ``.head``)."""
    layer = _tap_module(classifier.trunk, tap)
    return cam_maps(classifier, images, layer, [ClassifierOutputTarget(finding)] * len(images))


def similarity_cams(model: nn.Module, images: torch.Tensor, reference: torch.Tensor,
                    tap: str = "layer4", embedding: str = "global") -> np.ndarray:
    """Heatmaps of the cosine similarity between each image's embedding and ``reference``.

    ``model`` is an MLVICX (``embedding`` picks the projector output) or a Trunk (pooled features);
    ``reference`` is one (D,) embedding, or (B, D) with one reference per image.
    """
    net = EmbeddingOf(model, embedding) if not hasattr(model, "tap_module") else model
    inner = model
    refs = reference if reference.ndim == 2 else reference[None].expand(len(images), -1)
    return cam_maps(net, images, _tap_module(inner, tap), [SimilarityTarget(r) for r in refs])


def localisation_eval(classifier: nn.Module, dataset, finding: int, *, tap: str = "layer4",
                      tolerance: float = 0.0, batch_size: int = 16, max_images: int | None = None,
                      ) -> dict[str, float]:
    """Pointing game and energy-inside of one finding's Grad-CAM on the dataset's positive images.

    The images and regions are :func:`~.localisation.positive_examples` (masks, else boxes;
    positives without a region left out), at most ``max_images``.
    Scores, counts and chance levels as in :func:`~.localisation.localisation_scores` (tie-aware
    pointing; constant maps, e.g. all-zero, are undefined and counted in ``n_constant``; the
    uniform-map chance levels are computed on the images scored).
    """
    # the positives with a region first: Grad-CAM is only run where it can be scored
    images, regions, _ = positive_examples(dataset, None, finding, max_images)
    if images is None:
        return {"pointing_game": float("nan"), "energy_inside": float("nan"), "n": 0,
                "n_energy": 0, "n_constant": 0,
                "chance_pointing": float("nan"), "chance_energy": float("nan")}
    maps = [finding_cams(classifier, images[s:s + batch_size], finding, tap)
            for s in range(0, len(images), batch_size)]
    return localisation_scores(np.concatenate(maps), regions, tolerance)

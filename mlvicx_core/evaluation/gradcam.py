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
stays flat over any number of images.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from .localisation import boxes_to_mask, localisation_scores


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


def overlay(image: np.ndarray | torch.Tensor, cam: np.ndarray, alpha: float = 0.4,
            cmap: str = "jet") -> np.ndarray:
    """RGB (H, W, 3) float in [0, 1]: the grey image as shown (0 black, 1 white) under the heatmap.

    ``image`` is (H, W) or (1, H, W) in [0, 1] (the kit's intensity contract; anything outside is an
    error rather than silently rescaled); ``cam`` is (H, W) in [0, 1].
    """
    import matplotlib

    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3 and img.shape[0] == 1:
        img = img[0]
    cam = np.asarray(cam, dtype=np.float32)
    if img.ndim != 2 or cam.shape != img.shape:
        raise ValueError(f"image {img.shape} and cam {cam.shape}: expected one shape (H, W)")
    if img.min() < 0 or img.max() > 1:
        raise ValueError(f"image values in [{img.min():.3g}, {img.max():.3g}]: expected [0, 1]")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha={alpha}: expected a value in [0, 1]")
    heat = matplotlib.colormaps[cmap](np.clip(cam, 0, 1))[..., :3]
    return (1 - alpha) * np.repeat(img[..., None], 3, axis=2) + alpha * heat


def localisation_eval(classifier: nn.Module, dataset, finding: int, *, tap: str = "layer4",
                      tolerance: float = 0.0, batch_size: int = 16, max_images: int | None = None,
                      ) -> dict[str, float]:
    """Pointing game and energy-inside of one finding's Grad-CAM on the dataset's positive images.

    Regions: ``sample["mask"][finding]`` when the dataset has masks, else ``dataset.boxes(i)`` boxes
    of that finding; positives without a region are left out, at most ``max_images`` are scored.
    Scores, counts and chance levels as in :func:`~.localisation.localisation_scores` (tie-aware
    pointing; constant maps, e.g. all-zero, are undefined and counted in ``n_constant``; the
    uniform-map chance levels are computed on the images scored).
    """
    name = dataset.findings[finding]
    positives = [i for i in range(len(dataset)) if dataset.labels[i, finding] == 1]
    # gather images whose region is non-empty first: Grad-CAM is only run where it can be scored
    images, regions = [], []
    for i in positives:
        if max_images is not None and len(images) >= max_images:
            break
        sample = dataset[i]
        if getattr(dataset, "has_masks", False):
            region = sample["mask"][finding].numpy()
        else:
            region = boxes_to_mask(dataset.boxes(i), tuple(sample["image"].shape[-2:]), name)
        if region.any():
            images.append(sample["image"])
            regions.append(region)
    if not images:
        return {"pointing_game": float("nan"), "energy_inside": float("nan"), "n": 0,
                "n_energy": 0, "n_constant": 0,
                "chance_pointing": float("nan"), "chance_energy": float("nan")}
    maps = [finding_cams(classifier, torch.stack(images[s:s + batch_size]), finding, tap)
            for s in range(0, len(images), batch_size)]
    return localisation_scores(np.concatenate(maps), np.stack(regions), tolerance)


def cam_gallery(classifier, images, findings: list[str], tap: str, path: str | Path):
    """Rows: findings; columns: ``images`` (N, 1, S, S); each cell the Grad-CAM of that finding's
    logit at ``tap`` over the image. Saved to ``path`` (PNG); returns the path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(len(findings), n, figsize=(2 * n, 2 * len(findings)), squeeze=False)
    for k, f in enumerate(findings):
        maps = finding_cams(classifier, images, k, tap)
        for j, ax in enumerate(axes[k]):
            ax.imshow(overlay(images[j, 0].numpy(), maps[j]))
            ax.set_axis_off()
            ax.set_title(f if j == 0 else "", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

"""Small contract datasets and models for the evaluation tests (no real data, no downloads)."""
from __future__ import annotations

import numpy as np

from mlvicx_core import MLVICX, ModelConfig
from mlvicx_core.data.base import CXRDataset

TINY = ModelConfig(projector=(64, 64), ml_projector=(64, 64), fusion_size=8,
                   fusion_channels=16, pool_size=4)


def tiny_model(seed: int = 0, **overrides) -> MLVICX:
    import dataclasses

    import torch

    torch.manual_seed(seed)
    return MLVICX(dataclasses.replace(TINY, **overrides)).eval()


class BlobCXR(CXRDataset):
    """Grey noise images with two findings at random places, with masks and boxes.

    ``disc``: a bright disc (radius S/8); ``bar``: a bright horizontal bar (S/2 x S/16). Two images
    per patient; labels drawn independently (p = 0.5). ``masks=False`` hides the masks (boxes stay).
    """

    findings = ["disc", "bar"]

    def __init__(self, n: int = 40, image_size: int = 32, seed: int = 0, masks: bool = True,
                 **kwargs) -> None:
        super().__init__(image_size=image_size, **kwargs)
        self.has_masks = masks
        rng = np.random.default_rng(seed)
        s = image_size
        self.labels = (rng.random((n, 2)) < 0.5).astype(np.float32)
        self.patient_ids = np.array([f"p{i // 2:03d}" for i in range(n)], dtype=object)
        self.noise = rng.random((n, s, s)).astype(np.float32) * 0.3
        self.centres = rng.integers(s // 8 + 1, s - s // 8 - 1, size=(n, 2))
        self.bar_pos = np.stack([rng.integers(2, s - s // 16 - 2, n),
                                 rng.integers(1, s // 2 - 1, n)], axis=1)  # (row, col)

    def load_mask(self, index: int) -> np.ndarray:
        s = self.image_size
        yy, xx = np.mgrid[:s, :s]
        cy, cx = self.centres[index]
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 <= (s // 8) ** 2) & bool(self.labels[index, 0])
        r, c = self.bar_pos[index]
        bar = np.zeros((s, s), dtype=bool)
        if self.labels[index, 1]:
            bar[r:r + max(1, s // 16), c:c + s // 2] = True
        return np.stack([disc, bar])

    def load_image(self, index: int) -> np.ndarray:
        img = self.noise[index].copy()
        m = self.load_mask(index)
        img[m.any(axis=0)] = 0.9
        return img

    def boxes(self, index: int):
        out = []
        for k, name in enumerate(self.findings):
            m = self.load_mask(index)[k]
            if m.any():
                rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
                out.append((name, float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1),
                            float(rows[-1] - rows[0] + 1)))
        return out


def make_blobs(image_size: int = 32, n: int = 40, seed: int = 0, masks: bool = True,
               split: str = "all", fractions=(0.7, 0.1, 0.2), length=None, **_) -> BlobCXR:
    """A registry builder (``--set data.dataset=eval_fakes:make_blobs``): ``n`` (or ``length``)
    blob images, split by patient with the registry's rule; the data seed is fixed (0) so every
    split comes from the same images."""
    from mlvicx_core.data.registry import split_subset

    return split_subset(BlobCXR(n=length or n, image_size=image_size, seed=0, masks=masks), split,
                        fractions, seed)




class UnlabelledBlobs(BlobCXR):
    """The blob images without findings (an unlabelled dataset that still has splits)."""

    findings = ()

    def __init__(self, **kwargs) -> None:
        super().__init__(masks=False, **kwargs)
        self.labels = np.zeros((len(self.labels), 0), dtype=np.float32)

    def load_image(self, index: int) -> np.ndarray:
        return self.noise[index].copy()

    def boxes(self, index: int):
        return []


def make_unlabelled(image_size: int = 32, n: int = 40, seed: int = 0, split: str = "all",
                    fractions=(0.7, 0.1, 0.2), length=None, **_) -> UnlabelledBlobs:
    """A registry builder (``eval_fakes:make_unlabelled``): :class:`UnlabelledBlobs` split by
    patient."""
    from mlvicx_core.data.registry import split_subset

    return split_subset(UnlabelledBlobs(n=length or n, image_size=image_size, seed=0), split,
                        fractions, seed)

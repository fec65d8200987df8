"""``SyntheticCXR``: the phantom generator behind the kit's dataset contract (see ``base.py``).

Index arithmetic. Images are grouped by patient: global image ``g`` belongs to patient
``g // images_per_patient`` (whose anatomy it shares). Splits are patient-disjoint by construction:
patients come in blocks of 20 whose slots are shuffled per block (hash of ``seed`` and the block);
14 slots go to ``"train"``, 3 to ``"val"``, 3 to ``"test"``. Dataset index ``i`` of a split maps to
its ``k = i // images_per_patient``-th patient, i.e. block ``k // n_split`` and slot ``k % n_split``,
so the map is O(1) and works for an unbounded stream (``length=None``).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from .base import CXRDataset
from .phantom import check_size, image_factors, render
from .phantom_findings import FINDINGS, check_prevalence, difficulty_params, finding_labels, hash_uniform

SPLITS: dict[str, tuple[int, int]] = {"train": (0, 14), "val": (14, 17), "test": (17, 20)}
_BLOCK = 20
_STREAM_SPLIT = 7
UNBOUNDED = 2 ** 31 - 1


class _LazyColumn:
    """A read-only column computed on demand: ``col[i]``, ``col[a:b]``, ``col[array]``, ``len(col)``."""

    def __init__(self, n: int, fn: Callable[[np.ndarray], np.ndarray]) -> None:
        self._n, self._fn = n, fn

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, key):
        if isinstance(key, slice):
            return self._fn(np.arange(*key.indices(self._n)))
        idx = np.asarray(key, dtype=np.int64)
        if ((idx < 0) | (idx >= self._n)).any():
            raise IndexError(f"index {key} out of range for length {self._n}")
        out = self._fn(np.atleast_1d(idx))
        return out[0] if idx.ndim == 0 else out


class SyntheticCXR(CXRDataset):
    """Procedural chest radiographs with multi-labels and pixel masks for ``FINDINGS``.

    Parameters
    ----------
    length: number of images; ``None`` = an effectively unbounded stream (2**31 - 1, rendered on
        the fly; ``labels`` and ``patient_ids`` are then lazy columns).
    image_size: side S in [64, 512]; images are *rendered* at S (no resize).
    seed: the stream; together with the index it fixes every image.
    difficulty: ``"easy" | "default" | "hard"`` or a float in [0, 1].
    prevalence: ``{finding: p}`` overriding ``DEFAULT_PREVALENCE`` for some findings.
    images_per_patient: consecutive images sharing one anatomy (different pose, exposure, findings).
    split: ``None`` (all patients) or ``"train" | "val" | "test"`` (70/15/15 % of patients, disjoint).
    labelled: ``False`` puts NaN (unknown) labels in the samples, for self-supervised pretraining;
        ``dataset.labels`` always holds the truth (the probe evaluation reads it).
    transform: callable on the (1, S, S) image tensor.

    Sample: ``image`` (1, S, S) float32 in [0, 1], ``labels`` (K,), ``mask`` (K, S, S) bool (empty for
    absent findings), ``index``, ``patient_id`` (``"p<number>"``).
    """

    findings = list(FINDINGS)
    has_masks = True

    def __init__(self, length: int | None = 2000, image_size: int = 128, seed: int = 0,
                 difficulty: str | float = "default", prevalence: dict[str, float] | None = None,
                 images_per_patient: int = 2, split: str | None = None, labelled: bool = True,
                 transform: Callable[[torch.Tensor], Any] | None = None) -> None:
        super().__init__(image_size=check_size(image_size), transform=transform)
        if length is None:
            length = UNBOUNDED
        if not isinstance(length, (int, np.integer)) or not 1 <= length <= UNBOUNDED:
            raise ValueError(f"length={length!r}: expected an integer in [1, 2**31 - 1] or None")
        if not isinstance(images_per_patient, (int, np.integer)) or images_per_patient < 1:
            raise ValueError(f"images_per_patient={images_per_patient!r}: expected an integer >= 1")
        if split is not None and split not in SPLITS:
            raise ValueError(f"split={split!r}: expected None or one of {list(SPLITS)}")
        self.length, self.seed, self.split = int(length), int(seed), split
        self.images_per_patient = int(images_per_patient)
        self.difficulty = difficulty_params(difficulty)
        self.prevalence = check_prevalence(prevalence)
        self.labelled = labelled
        self._metadata = None
        if self.length <= 2_000_000:
            g = self.global_index(np.arange(self.length))
            self.labels = finding_labels(self.seed, g, self.prevalence)
            self.patient_ids = np.array([f"p{p}" for p in g // self.images_per_patient], dtype=object)
        else:
            self.labels = _LazyColumn(self.length, lambda i: finding_labels(
                self.seed, self.global_index(i), self.prevalence))
            self.patient_ids = _LazyColumn(self.length, lambda i: np.array(
                [f"p{p}" for p in self.global_index(i) // self.images_per_patient], dtype=object))

    def __len__(self) -> int:
        return self.length

    @property
    def metadata(self):
        """One row per image: the label-free factors the phantom drew (``phantom.FACTORS``: pose,
        view, exposure, marker, collimation, anatomy), computed without rendering (~0.4 ms per
        image) on first use; for UMAP colours and the ``factors`` read-out."""
        if self._metadata is None:
            import pandas as pd

            if self.length > 1_000_000:
                raise ValueError(f"metadata of {self.length} images: take a finite subset first")
            g = self.global_index(np.arange(self.length))
            self._metadata = pd.DataFrame([image_factors(self.seed, int(i), self.difficulty,
                                                         self.images_per_patient) for i in g])
        return self._metadata

    @metadata.setter
    def metadata(self, table) -> None:
        """A table of one's own (one row per image) replaces the phantom's factors."""
        if table is not None and len(table) != self.length:
            raise ValueError(f"metadata has {len(table)} rows; expected one per image "
                             f"({self.length})")
        self._metadata = table

    def global_index(self, index) -> np.ndarray:
        """Image number(s) in the unsplit stream ``seed`` behind dataset index(es) ``index``."""
        i = np.asarray(index, dtype=np.int64)
        k, j = np.divmod(i, self.images_per_patient)
        if self.split is None:
            return i
        lo, hi = SPLITS[self.split]
        block, slot = np.divmod(k, hi - lo)
        # rank of each slot of a block after a per-block shuffle; the split owns ranks [lo, hi)
        keys = hash_uniform(self.seed, block[..., None] * _BLOCK + np.arange(_BLOCK), _STREAM_SPLIT)
        order = np.argsort(keys, axis=-1)
        patient = block * _BLOCK + np.take_along_axis(order, (lo + slot)[..., None], -1)[..., 0]
        return patient * self.images_per_patient + j

    def render(self, index: int):
        """``(image (S, S), masks (K, S, S), labels (K,))`` of dataset index ``index``."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for length {self.length}")
        return render(self.seed, int(self.global_index(index)), self.image_size, self.difficulty,
                      self.prevalence, self.images_per_patient)

    def load_image(self, index: int) -> np.ndarray:
        return self.render(index)[0]

    def load_mask(self, index: int) -> np.ndarray:
        return self.render(index)[1]

    def boxes(self, index: int) -> list[tuple[str, float, float, float, float]]:
        """Bounding boxes ``(finding, x, y, w, h)`` of the positive findings' masks, in pixels."""
        out = []
        for name, m in zip(FINDINGS, self.render(index)[1]):
            if m.any():
                rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
                out.append((name, float(cols[0]), float(rows[0]),
                            float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)))
        return out

    def _sample(self, i: int) -> dict[str, Any]:
        img, masks, labels = self.render(i)
        if not self.labelled:
            labels = np.full_like(labels, np.nan)
        image = torch.from_numpy(img)[None]
        return {
            "labels": torch.from_numpy(labels),
            "index": i,
            "patient_id": f"p{int(self.global_index(i)) // self.images_per_patient}",
            "mask": torch.from_numpy(masks),
            "image": self.transform(image) if self.transform is not None else image,
        }

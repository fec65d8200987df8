"""``Subset``: some images of a contract dataset, still a contract dataset.

Keeps what the evaluation needs of the source, row-aligned with the chosen indices: ``findings``,
``labels``, ``patient_ids``, pixel masks (``has_masks``), ``boxes(i)``, ``metadata`` (a pandas
DataFrame when the source has one) and ``image_size``. Sample ``i`` is the source's sample
``indices[i]`` with ``index`` renumbered to ``i`` (``source_index`` keeps the original).

``in_memory=True`` reads every chosen sample once and serves them from memory (float32 images,
masks): what an experiment wants when a dozen encoders read the same few thousand images.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .base import CXRDataset


class Subset(CXRDataset):
    """``Subset(base, indices=None, in_memory=False)``: ``base`` restricted to ``indices`` (all
    when ``None``), in the given order."""

    def __init__(self, base, indices=None, in_memory: bool = False) -> None:
        super().__init__(image_size=getattr(base, "image_size", None))
        n = len(base)
        idx = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"Subset of {type(base).__name__} (length {n}): index out of range")
        self.base = base
        self.indices = idx % n if n else idx
        self.findings = list(base.findings)
        self.has_masks = bool(getattr(base, "has_masks", False))
        self.labels = np.asarray(base.labels[self.indices] if len(self.indices) else
                                 np.zeros((0, len(self.findings))), dtype=np.float32)
        self.patient_ids = np.asarray(
            [str(p) for p in np.asarray(base.patient_ids[self.indices], dtype=object)]
            if len(self.indices) else [], dtype=object)
        meta = getattr(base, "metadata", None)
        self.metadata = (meta.iloc[self.indices].reset_index(drop=True)
                         if meta is not None else None)
        self.skipped = getattr(base, "skipped", [])
        self._memory: list[dict[str, Any]] | None = None
        if in_memory:
            self._memory = [self._read(i) for i in range(len(self.indices))]

    def __len__(self) -> int:
        return len(self.indices)

    def _read(self, i: int) -> dict[str, Any]:
        sample = dict(self.base[int(self.indices[i])])
        sample["source_index"] = int(sample.get("index", self.indices[i]))
        sample["index"] = i
        return sample

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a Subset of length {len(self)}")
        i = int(i) % len(self)
        if self._memory is not None:
            return dict(self._memory[i])
        return self._read(i)

    @property
    def images(self) -> torch.Tensor:
        """All images stacked, (N, 1, S, S) float32 (read now unless held in memory)."""
        return torch.stack([self[i]["image"] for i in range(len(self))])

    @property
    def masks(self) -> torch.Tensor | None:
        """All masks stacked, (N, K, S, S) bool, or ``None`` without masks."""
        if not self.has_masks:
            return None
        return torch.stack([self[i]["mask"] for i in range(len(self))])

    def boxes(self, i: int) -> list[tuple[str, float, float, float, float]]:
        fn = getattr(self.base, "boxes", None)
        return list(fn(int(self.indices[i]))) if fn is not None else []

    def describe(self, i: int) -> str:
        fn = getattr(self.base, "describe", None)
        return fn(int(self.indices[i])) if fn is not None else f"{type(self.base).__name__}[{i}]"


def seeded_subset(dataset, length: int | None, seed: int = 0, in_memory: bool = False):
    """``dataset`` itself, or a Subset of ``length`` images drawn with ``seed`` (in dataset order)."""
    if length is None or length >= len(dataset):
        return Subset(dataset, in_memory=True) if in_memory else dataset
    order = np.sort(np.random.default_rng(seed).permutation(len(dataset))[:length])
    return Subset(dataset, order, in_memory=in_memory)

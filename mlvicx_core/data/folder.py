"""A plain folder of radiographs (PNG/JPEG/TIFF/DICOM, recursive) for unlabelled pretraining.

No findings (K = 0: ``labels`` has shape (N, 0)). Without patient information each file is its own
patient; ``patient_id`` is its path relative to the root without the suffix. Reading follows
:func:`~mlvicx_core.data.files.read_radiograph`.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .files import RADIOGRAPH_SUFFIXES, FileDataset, list_images


class ImageFolderDataset(FileDataset):
    """Every radiograph under ``root`` (sorted by path).

    Parameters
    ----------
    root: folder to search.
    suffixes: file suffixes to include (case-insensitive).
    recursive: also search sub-folders.
    image_size, transform, on_error: as in :class:`CXRDataset`.
    bit_depth: bits used by 16-bit PNG/TIFF files without an sBIT chunk (e.g. 12); see
        :class:`~mlvicx_core.data.files.FileDataset`.
    """

    findings: list[str] = []

    def __init__(self, root: str | os.PathLike, suffixes: tuple[str, ...] = RADIOGRAPH_SUFFIXES,
                 recursive: bool = True, image_size: int | None = 224, transform=None,
                 on_error: str = "raise", bit_depth: int | None = None) -> None:
        super().__init__(image_size=image_size, transform=transform, on_error=on_error,
                         bit_depth=bit_depth)
        root = Path(root)
        self.paths = list_images(root, suffixes, recursive)
        if not self.paths:
            raise FileNotFoundError(f"{root}: no images with suffixes {list(suffixes)} "
                                    f"({'recursive' if recursive else 'top level only'}); "
                                    "expected at least one radiograph")
        self.labels = np.zeros((len(self.paths), 0), dtype=np.float32)
        self.patient_ids = np.array([str(p.relative_to(root).with_suffix("")) for p in self.paths],
                                    dtype=object)

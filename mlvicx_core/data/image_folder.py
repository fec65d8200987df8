"""A plain folder of radiographs (PNG, JPEG, TIFF, BMP) as an unlabelled dataset for pretraining.

Every file with one of :data:`EXTENSIONS` below ``root`` (recursively, sorted by relative path) is one
sample. Colour (RGB/RGBA) files are reduced to one grey channel with PIL's luminance conversion (alpha
dropped); 8-bit images are divided by 255, 16-bit ones by 65535. No labels (``findings`` is empty, the
label vector has length 0); ``patient_id`` is the file name without extension.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .base import CXRDataset

EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class ImageFolderCXR(CXRDataset):
    """All images below ``root``; see the module docstring. Other arguments as :class:`CXRDataset`."""

    def __init__(self, root: str | Path, image_size: int | None = 224, transform=None,
                 on_error: str = "raise") -> None:
        super().__init__(image_size=image_size, transform=transform, on_error=on_error)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"data root {self.root} does not exist or is not a folder: expected a folder "
                f"containing radiographs ({', '.join(EXTENSIONS)}), searched recursively"
            )
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in EXTENSIONS)
        if not self.files:
            raise FileNotFoundError(
                f"data root {self.root} contains no images: expected files ending in "
                f"{', '.join(EXTENSIONS)} (searched recursively)"
            )
        self.labels = np.zeros((len(self.files), 0), dtype=np.float32)
        self.patient_ids = np.array([p.stem for p in self.files], dtype=object)

    def describe(self, index: int) -> str:
        return str(self.files[index])

    def load_image(self, index: int) -> np.ndarray:
        path = self.files[index]
        try:
            with Image.open(path) as im:
                if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                    arr = np.asarray(im, dtype=np.float32) / 65535.0
                else:
                    arr = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
        except OSError as err:
            raise OSError(f"cannot read image {path}: {err}") from err
        return np.clip(arr, 0.0, 1.0)

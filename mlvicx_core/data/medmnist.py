"""MedMNIST chest sets (Yang et al. 2023) through the ``medmnist`` package.

``ChestMNIST`` (NIH ChestX-ray14, 14 findings in the NIH order, official patient-level split) and
``PneumoniaMNIST`` (paediatric CXRs, Kermany et al. 2018; one finding ``Pneumonia``), as
``<root>/<flag>[_<size>].npz`` (uint8 images (N, size, size), labels (N, K)).

Files are never fetched unless ``download=True``; with ``download=False`` and no file, a
``FileNotFoundError`` names the expected path. MD5 sums are not checked when a file is present
(``medmnist`` checks them only while downloading, and a present file is never re-downloaded here,
since torchvision's downloader would otherwise replace a valid copy whose MD5 differs from the
record, as the shared ``pneumoniamnist.npz`` does).

Each split's size is compared with the count the ``medmnist`` package records
(``medmnist.INFO[flag]["n_samples"]``): a file whose split differs (the shared
``pneumoniamnist.npz`` has 3,882 training images where MedMNIST v2 has 4,708) loads with a
:class:`MedMNISTSizeWarning` naming the file and both counts, every time it is loaded.

MedMNIST carries no patient ids: ``patient_id`` is ``"<flag>/<split>/<i>"`` and patient-disjointness
rests on MedMNIST's own split. Images are square already, so ``image_size=None`` (the default here)
keeps the stored size.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from .base import CXRDataset
from .nih import NIH_FINDINGS
from .paths import default_data_root

MEDMNIST_CHEST = {"chestmnist": ("ChestMNIST", NIH_FINDINGS),
                  "pneumoniamnist": ("PneumoniaMNIST", ["Pneumonia"])}
SIZES = (28, 64, 128, 224)


class MedMNISTSizeWarning(UserWarning):
    """A MedMNIST file whose split does not have the size the ``medmnist`` package records."""


def check_split_size(flag: str, split: str, n: int, path, medmnist=None) -> int | None:
    """Compare a split's image count with ``medmnist.INFO[flag]["n_samples"][split]``; warn
    (:class:`MedMNISTSizeWarning`) naming the file and both counts when they differ. Returns the
    recorded count (None where the package records none)."""
    if medmnist is None:
        import medmnist
    expected = getattr(medmnist, "INFO", {}).get(flag, {}).get("n_samples", {}).get(split)
    if expected is not None and n != expected:
        warnings.warn(
            f"{path}: the {split} split has {n} images, but MedMNIST (medmnist "
            f"{getattr(medmnist, '__version__', '?')}) records {expected} for {flag}: this is not "
            f"the official file ({'short' if n < expected else 'long'} by {abs(n - expected)} "
            f"images); results from it are not comparable with published {flag} numbers",
            MedMNISTSizeWarning, stacklevel=3)
    return expected


class MedMNISTChest(CXRDataset):
    """A MedMNIST chest set behind the :class:`~mlvicx_core.data.base.CXRDataset` contract.

    Parameters
    ----------
    flag: ``"chestmnist"`` or ``"pneumoniamnist"``.
    root: folder with the ``.npz``; default ``default_data_root() / "medmnist"``.
    split: ``"train"``, ``"val"`` or ``"test"`` (MedMNIST's official split).
    download: fetch the file with ``medmnist`` when it is missing (needs internet).
    size: stored resolution of the MedMNIST file (28, 64, 128 or 224).
    image_size, transform, on_error: as in :class:`CXRDataset` (default: keep ``size``).
    """

    def __init__(self, flag: str = "pneumoniamnist", root: str | os.PathLike | None = None,
                 split: str = "train", download: bool = False, size: int = 28,
                 image_size: int | None = None, transform=None, on_error: str = "raise") -> None:
        super().__init__(image_size=image_size, transform=transform, on_error=on_error)
        if flag not in MEDMNIST_CHEST:
            raise ValueError(f"flag={flag!r}: expected one of {list(MEDMNIST_CHEST)}")
        if split not in ("train", "val", "test"):
            raise ValueError(f"split={split!r}: expected 'train', 'val' or 'test'")
        if size not in SIZES:
            raise ValueError(f"size={size!r}: expected one of {SIZES}")
        cls_name, self.findings = MEDMNIST_CHEST[flag]
        root = Path(root) if root is not None else default_data_root() / "medmnist"
        path = root / f"{flag}{'' if size == 28 else f'_{size}'}.npz"
        if not path.is_file():
            if not download:
                raise FileNotFoundError(f"{path}: MedMNIST file not found; download it (see "
                                        "data/README.md) or pass download=True")
            root.mkdir(parents=True, exist_ok=True)
        import medmnist  # imported here: it creates ~/.medmnist on import

        # download only when missing: see the module docstring on MD5s.
        data = getattr(medmnist, cls_name)(split=split, root=str(root), size=size,
                                           download=download and not path.is_file())
        imgs, labels = np.asarray(data.imgs), np.asarray(data.labels)
        k = len(self.findings)
        if imgs.ndim != 3 or imgs.shape[1:] != (size, size) or imgs.dtype != np.uint8:
            raise ValueError(f"{path}: {split}_images has shape {imgs.shape} dtype {imgs.dtype}; "
                             f"expected uint8 (N, {size}, {size})")
        if labels.shape != (len(imgs), k) or not np.isin(labels, (0, 1)).all():
            raise ValueError(f"{path}: {split}_labels has shape {labels.shape}; expected 0/1 "
                             f"values of shape ({len(imgs)}, {k})")
        check_split_size(flag, split, len(imgs), path, medmnist)
        self.flag, self.split, self.path = flag, split, path
        self.images = imgs
        self.labels = labels.astype(np.float32)
        self.patient_ids = np.array([f"{flag}/{split}/{i}" for i in range(len(imgs))], object)

    def load_image(self, index: int) -> np.ndarray:
        return self.images[index].astype(np.float32) / 255.0

    def describe(self, index: int) -> str:
        return f"{self.path}[{self.split}][{index}]"

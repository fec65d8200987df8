"""SIIM-ACR Pneumothorax Segmentation (2019): DICOMs with run-length-encoded masks.

Layout (the SIIM/Kaggle release): ``train-rle.csv`` with header ``ImageId, EncodedPixels`` (note the
space before the second name; names are stripped) and DICOMs ``<ImageId>.dcm`` nested as
``dicom-images-train/<study>/<series>/<ImageId>.dcm`` (found recursively). An image with several
pneumothorax regions has several rows: its mask is their union. ``-1`` = no pneumothorax. The RLE
format is described in :mod:`mlvicx_core.data.rle`; masks are decoded at the DICOM's own
``Rows x Columns`` (1024 x 1024 in the release).

Sample: ``labels`` = [1] if any region, else [0]; ``mask`` bool (1, S, S) (``has_masks``).
Patient id: the DICOM ``PatientID`` (read from the headers when the dataset is built; the image id
when a header cannot be read, the file then fails, or is skipped, when it is loaded).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .dicom import dicom_header, dicom_shape
from .files import (
    FileDataset,
    index_images,
    kaggle_layout,
    match_listed,
)
from .imageio import ImageReadError
from .rle import rle_decode, rle_encode, rle_runs
from .splits import select_split
from .tables import read_table, row_ref

__all__ = ["SIIMPneumothorax", "rle_decode", "rle_encode"]


class SIIMPneumothorax(FileDataset):
    """SIIM-ACR Pneumothorax behind the :class:`~mlvicx_core.data.base.CXRDataset` contract.

    Parameters
    ----------
    root: dataset folder; default ``default_data_root() / "siim-acr-pneumothorax"``.
    csv: RLE table; default ``root / "train-rle.csv"`` if present, else the copy
        bundled with torchxrayvision (``siim-pneumothorax-train-rle.csv.gz``).
    image_dir: DICOM folder (recursive); default ``root / "dicom-images-train"`` if it exists,
        else ``root``.
    split, fractions, seed: patient-disjoint split (by DICOM PatientID).
    missing: ``"exclude"`` (default) or ``"raise"`` for listed images not on disk.
    image_size, transform, on_error: as in :class:`CXRDataset`.
    """

    findings = ["Pneumothorax"]
    has_masks = True

    def __init__(self, root: str | os.PathLike | None = None, csv=None, image_dir=None,
                 split: str = "all", fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0,
                 missing: str = "exclude", image_size: int | None = 224, transform=None,
                 on_error: str = "raise") -> None:
        super().__init__(image_size=image_size, transform=transform, on_error=on_error)
        root, csv, image_dir = kaggle_layout(
            root, csv, image_dir, folder="siim-acr-pneumothorax", table="train-rle.csv",
            bundled="siim-pneumothorax-train-rle.csv.gz", images="dicom-images-train")
        df = read_table(csv, ["ImageId", "EncodedPixels"], dtype=str, keep_default_na=False)
        rles: dict[str, list[str]] = {}
        for r, (iid, rle) in enumerate(zip(df["ImageId"].str.strip(), df["EncodedPixels"])):
            rle = rle.strip()
            try:  # validate syntax now; bounds are checked against the DICOM size at load time
                rle_runs(rle)
            except ValueError as err:
                raise ValueError(f"{row_ref(csv, r)}: EncodedPixels: {err}") from err
            rles.setdefault(iid, [])
            if rle not in ("", "-1"):
                rles[iid].append(rle)

        ids = np.array(list(rles), dtype=object)
        found = index_images(image_dir, key="stem")
        keep, self.missing = match_listed(ids, found, missing=missing, source=str(csv),
                                          folder=image_dir)
        ids = ids[keep]
        pids = np.array([self._patient_id(found[i], i) for i in ids], dtype=object)
        rows = select_split(pids, split, fractions, seed)
        ids = ids[rows]
        self.image_ids = ids
        self.paths = [found[i] for i in ids]
        self.patient_ids = pids[rows]
        self.rles = [rles[i] for i in ids]
        self.labels = np.array([[1.0 if r else 0.0] for r in self.rles], np.float32).reshape(-1, 1)

    @staticmethod
    def _patient_id(path: Path, image_id: str) -> str:
        try:
            pid = str(dicom_header(path, ["PatientID"]).get("PatientID", "")).strip()
        except (ImageReadError, OSError):
            pid = ""
        return pid or image_id

    def load_mask(self, index: int) -> np.ndarray:
        """(1, H, W) bool: union of the image's regions at the DICOM's size."""
        shape = dicom_shape(self.paths[index])
        mask = np.zeros(shape, dtype=bool)
        for rle in self.rles[index]:
            try:
                mask |= rle_decode(rle, shape)
            except ValueError as err:
                raise ValueError(f"{self.paths[index]}: mask for {shape}: {err}") from err
        return mask[None]

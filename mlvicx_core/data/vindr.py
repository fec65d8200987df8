"""VinDr-CXR (Nguyen et al. 2022; Kaggle "VinBigData Chest X-ray Abnormalities Detection").

Layout (Kaggle): ``train.csv`` with ``image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max``
(one row per reader and finding; ``class_id`` 14 = ``No finding`` with empty box; three readers
``rad_id`` per image) and DICOMs ``train/<image_id>.dicom`` (found recursively by image id).

Image-level label rule: finding k is positive (1) when at least ``min_readers`` distinct readers
marked it on the image, else 0. ``min_readers=1`` (default) is the union of the readers (the usual
choice for classification); ``min_readers=2`` is a majority of the three. ``No finding`` sets
nothing. Labels are never NaN.

Boxes: ``boxes(i)`` returns every reader's box (not fused) for the findings that are positive under
the rule, as ``(finding, x, y, w, h)`` with ``w = x_max - x_min``, scaled from the DICOM frame to S.
The images are de-identified without a patient identifier, so each image id is its own patient id.

Checks (errors name ``file:line`` and the column): ``class_name`` is one of the 15 names;
``class_id``, when present, matches it; a finding row has a finite box with ``x_max > x_min`` and
``y_max > y_min``.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import pandas as pd

from .files import (
    FileDataset,
    box_scale,
    index_images,
    kaggle_layout,
    match_listed,
)
from .splits import select_split
from .tables import read_table, row_ref

#: class_id 0..13 in the VinDr order; class_id 14 is "No finding".
VINDR_FINDINGS = [
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD",
    "Infiltration", "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion",
    "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis",
]
NO_FINDING = "No finding"
VINDR_COLUMNS = ["image_id", "class_name", "rad_id", "x_min", "y_min", "x_max", "y_max"]


class VinDrCXR(FileDataset):
    """VinDr-CXR behind the :class:`~mlvicx_core.data.base.CXRDataset` contract.

    Parameters
    ----------
    root: dataset folder; default ``default_data_root() / "vindr-cxr"``.
    csv: annotations; default ``root / "train.csv"`` if present, else the copy
        bundled with torchxrayvision (``vinbigdata-train.csv.gz``).
    image_dir: DICOM folder (recursive); default ``root / "train"`` if it exists,
        else ``root``.
    min_readers: readers who must mark a finding for the image label to be 1 (>= 1).
    split, fractions, seed: image-level split (one image per patient id, see module docstring).
    missing: ``"exclude"`` (default) or ``"raise"`` for listed images not on disk.
    image_size, transform, on_error: as in :class:`CXRDataset`.
    """

    findings = VINDR_FINDINGS

    def __init__(self, root: str | os.PathLike | None = None, csv=None, image_dir=None,
                 min_readers: int = 1, split: str = "all",
                 fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0,
                 missing: str = "exclude", image_size: int | None = 224, transform=None,
                 on_error: str = "raise") -> None:
        super().__init__(image_size=image_size, transform=transform, on_error=on_error)
        if not (isinstance(min_readers, (int, np.integer)) and min_readers >= 1):
            raise ValueError(f"min_readers={min_readers!r}: expected an integer >= 1")
        root, csv, image_dir = kaggle_layout(
            root, csv, image_dir, folder="vindr-cxr", table="train.csv",
            bundled="vinbigdata-train.csv.gz", images="train")
        df = read_table(csv, VINDR_COLUMNS)
        col = {name: k for k, name in enumerate(VINDR_FINDINGS)} | {NO_FINDING: 14}
        image = df["image_id"].astype(str).str.strip().to_numpy()
        names = df["class_name"].astype(str).str.strip().to_numpy()
        rad = df["rad_id"].astype(str).str.strip().to_numpy()
        k_of = np.array([col.get(n, -1) for n in names], dtype=np.int64)
        xyxy = df[["x_min", "y_min", "x_max", "y_max"]].apply(lambda c: c.astype(float)).to_numpy()
        # Validate every row with array operations; report the first bad one.
        for r in np.flatnonzero(k_of < 0)[:1]:
            raise ValueError(f"{row_ref(csv, r)}: class_name {names[r]!r}; expected one of "
                             f"{VINDR_FINDINGS + [NO_FINDING]}")
        if "class_id" in df.columns:
            ids_given = df["class_id"].astype(str).str.strip().str.replace(r"\.0$", "", regex=True)
            for r in np.flatnonzero(ids_given.to_numpy() != k_of.astype(str))[:1]:
                raise ValueError(f"{row_ref(csv, r)}: class_id={df['class_id'].iloc[r]!r} but "
                                 f"class_name={names[r]!r}; expected class_id {k_of[r]}")
        is_box = k_of < 14
        with np.errstate(invalid="ignore"):
            ok = (np.isfinite(xyxy).all(1) & (xyxy[:, 2] > xyxy[:, 0])
                  & (xyxy[:, 3] > xyxy[:, 1]))
        for r in np.flatnonzero(is_box & ~ok)[:1]:
            raise ValueError(f"{row_ref(csv, r)}: {names[r]} box {xyxy[r].tolist()}; expected "
                             "finite x_min < x_max and y_min < y_max")

        readers: dict[tuple[str, int], set] = {}  # (image, finding) -> readers who marked it
        marks: dict[str, list] = {}
        for r in np.flatnonzero(is_box):
            k, (x0, y0, x1, y1) = int(k_of[r]), xyxy[r]
            readers.setdefault((image[r], k), set()).add(rad[r])
            marks.setdefault(image[r], []).append((k, x0, y0, x1 - x0, y1 - y0))

        ids = np.array(pd.unique(image), dtype=object)
        ids = ids[select_split(ids, split, fractions, seed)]
        found = index_images(image_dir, key="stem")
        keep, self.missing = match_listed(ids, found, missing=missing, source=str(csv),
                                          folder=image_dir)
        ids = ids[keep]
        self.min_readers = int(min_readers)
        self.paths = [found[i] for i in ids]
        self.patient_ids = ids
        self.labels = np.zeros((len(ids), len(VINDR_FINDINGS)), dtype=np.float32)
        row = {iid: n for n, iid in enumerate(ids)}
        for (iid, k), who in readers.items():
            if iid in row:
                self.labels[row[iid], k] = float(len(who) >= min_readers)
        self._boxes = [[(VINDR_FINDINGS[k], x, y, w, h) for k, x, y, w, h in marks.get(i, [])
                        if lab[k] == 1] for i, lab in zip(ids, self.labels)]

    def boxes(self, index: int) -> list[tuple[str, float, float, float, float]]:
        """Every reader's ``(finding, x, y, w, h)`` for positive findings, in pixels of the
        returned image."""
        if not self._boxes[index]:
            return []
        sx, sy = box_scale(self.paths[index], self.image_size)
        return [(f, float(x * sx), float(y * sy), float(w * sx), float(h * sy))
                for f, x, y, w, h in self._boxes[index]]

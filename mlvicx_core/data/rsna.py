"""RSNA Pneumonia Detection Challenge (Kaggle 2018): 26,684 DICOMs, one finding, boxes.

Layout (Kaggle ``rsna-pneumonia-detection-challenge``): ``stage_2_train_labels.csv`` with columns
``patientId,x,y,width,height,Target`` (one row per box; ``Target = 0`` rows have empty boxes) and
images ``stage_2_train_images/<patientId>.dcm`` (1024 x 1024, 8-bit MONOCHROME2). Each patientId
is one image of one patient, so it is also the patient id.

Checks when the table is read (errors name ``file:line`` and the column): ``Target`` is 0 or 1 and
the same on every row of a patientId; ``Target = 1`` rows carry a finite box with positive width
and height; ``Target = 0`` rows carry none. The finding is named ``Pneumonia`` as in NIH.

Boxes are in the pixel frame of the DICOM; ``boxes(i)`` scales them by ``S / Columns`` and
``S / Rows`` (header read, pixels not decoded).
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from .files import (
    FileDataset,
    box_scale,
    index_images,
    kaggle_layout,
    match_listed,
)
from .splits import select_split
from .tables import read_table, row_ref

RSNA_COLUMNS = ["patientId", "x", "y", "width", "height", "Target"]


class RSNAPneumonia(FileDataset):
    """RSNA Pneumonia behind the :class:`~mlvicx_core.data.base.CXRDataset` contract.

    Parameters
    ----------
    root: dataset folder; default ``default_data_root() / "rsna-pneumonia"``.
    csv: label table; default ``root / "stage_2_train_labels.csv"`` if present, else the copy
        bundled with torchxrayvision (``kaggle_stage_2_train_labels.csv.zip``).
    image_dir: DICOM folder (searched recursively by patientId); default
        ``root / "stage_2_train_images"`` if it exists, else ``root``.
    split, fractions, seed: patient-disjoint split (:mod:`mlvicx_core.data.splits`).
    missing: ``"exclude"`` (default) or ``"raise"`` for listed images not on disk.
    image_size, transform, on_error: as in :class:`CXRDataset`.
    """

    findings = ["Pneumonia"]

    def __init__(self, root: str | os.PathLike | None = None, csv=None, image_dir=None,
                 split: str = "all", fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0,
                 missing: str = "exclude", image_size: int | None = 224, transform=None,
                 on_error: str = "raise") -> None:
        super().__init__(image_size=image_size, transform=transform, on_error=on_error)
        root, csv, image_dir = kaggle_layout(
            root, csv, image_dir, folder="rsna-pneumonia", table="stage_2_train_labels.csv",
            bundled="kaggle_stage_2_train_labels.csv.zip", images="stage_2_train_images")
        df = read_table(csv, RSNA_COLUMNS)
        ids: list[str] = []
        target: dict[str, int] = {}
        boxes: dict[str, list] = {}
        xywh = df[["x", "y", "width", "height"]].apply(lambda c: c.astype(float)).to_numpy()
        for r, (pid, t) in enumerate(zip(df["patientId"].astype(str).str.strip(), df["Target"])):
            if t not in (0, 1):
                raise ValueError(f"{row_ref(csv, r)}: Target={t!r}; expected 0 or 1")
            if pid not in target:
                ids.append(pid)
                target[pid] = int(t)
                boxes[pid] = []
            elif target[pid] != int(t):
                raise ValueError(f"{row_ref(csv, r)}: Target={t} but an earlier row of patientId "
                                 f"{pid} has Target={target[pid]}; expected one value per image")
            box = xywh[r]
            if t == 1:
                if not np.isfinite(box).all() or box[2] <= 0 or box[3] <= 0:
                    raise ValueError(f"{row_ref(csv, r)}: Target=1 with box {box.tolist()}; "
                                     "expected finite x, y and positive width, height")
                boxes[pid].append(("Pneumonia", *map(float, box)))
            elif np.isfinite(box).any():
                raise ValueError(f"{row_ref(csv, r)}: Target=0 with box {box.tolist()}; "
                                 "expected empty x, y, width, height")

        ids_arr = np.array(ids, dtype=object)
        ids_arr = ids_arr[select_split(ids_arr, split, fractions, seed)]
        found = index_images(image_dir, key="stem")
        keep, self.missing = match_listed(ids_arr, found, missing=missing, source=str(csv),
                                          folder=image_dir)
        ids_arr = ids_arr[keep]
        self.paths = [found[p] for p in ids_arr]
        self.labels = np.array([[target[p]] for p in ids_arr], dtype=np.float32).reshape(-1, 1)
        self.patient_ids = ids_arr
        self._boxes = [boxes[p] for p in ids_arr]

    def boxes(self, index: int) -> list[tuple[str, float, float, float, float]]:
        """``("Pneumonia", x, y, w, h)`` in pixels of the returned image."""
        if not self._boxes[index]:
            return []
        sx, sy = box_scale(self.paths[index], self.image_size)
        return [(f, float(x * sx), float(y * sy), float(w * sx), float(h * sy))
                for f, x, y, w, h in self._boxes[index]]

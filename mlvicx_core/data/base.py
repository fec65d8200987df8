"""The one dataset contract every chest X-ray source in the kit follows.

Intensity contract (documented once): an image is a float32 tensor of shape (1, H, W) with values in
[0, 1], 0 = black (air, outside the body), 1 = white (bone, metal), i.e. how the radiograph is shown.
DICOM MONOCHROME1 files are inverted to follow it; 16-bit sources are scaled by their stored range.

Size policy: with ``image_size=S`` every image is resized to S x S (bilinear, antialiased), the
whole field of view is kept and the aspect ratio is not preserved (chest films are close to square).
An image smaller than :data:`MIN_IMAGE_SIDE` (8 px) a side is an error naming the file (an
:class:`~mlvicx_core.data.imageio.ImageReadError`, skipped with ``on_error="skip"``), not a
constant picture stretched to S.
With ``image_size=None`` images keep their native size (only useful with batch size 1 or a transform
that crops to a fixed size).

A sample (``dataset[i]``) is a dict:

- ``image``: float32 (1, S, S) in [0, 1] (or whatever ``transform`` returns, e.g. two views)
- ``labels``: float32 (K,) multi-label targets in the order of ``dataset.findings``; NaN = unknown
- ``index``: int, ``patient_id``: str
- ``mask``: bool (K, S, S), only for datasets with pixel masks (``dataset.has_masks``)

Boxes (variable in number) are not in the sample; ``dataset.boxes(i)`` returns them scaled to S.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .imageio import ImageReadError

#: Smallest side a stored image may have (the smallest ``data.image_size`` too): a 1 x 1 file
#: resized to the model's input is a constant picture, not a radiograph.
MIN_IMAGE_SIDE = 8


def resize_image(img: torch.Tensor, size: int | None) -> torch.Tensor:
    """(1, H, W) or (K, H, W) float -> (., size, size), bilinear with antialiasing; clamps to [0, 1]."""
    if size is None or img.shape[-2:] == (size, size):
        return img
    out = F.interpolate(img[None], size=(size, size), mode="bilinear", align_corners=False,
                        antialias=True)[0]
    return out.clamp_(0.0, 1.0)


class CXRDataset(Dataset):
    """Base class: subclasses fill ``findings``, ``labels``, ``patient_ids`` and ``load_image``.

    Parameters
    ----------
    image_size: side S of the square the images are resized to (see the module's size policy).
    transform: optional callable applied to the (1, S, S) image tensor (e.g. a two-view augmenter).
    on_error: ``"raise"`` (default): a bad file raises an error naming it; ``"skip"``: a warning,
        the sample is replaced by the next readable one, and ``skipped`` counts the files skipped.
    """

    findings: list[str] = []
    has_masks: bool = False

    def __init__(
        self,
        image_size: int | None = 224,
        transform: Callable[[torch.Tensor], Any] | None = None,
        on_error: str = "raise",
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error={on_error!r}: expected 'raise' or 'skip'")
        self.image_size = image_size
        self.transform = transform
        self.on_error = on_error
        self.skipped: list[str] = []
        self.labels = np.zeros((0, 0), dtype=np.float32)
        self.patient_ids = np.zeros(0, dtype=object)

    # -- to implement ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.labels)

    def load_image(self, index: int) -> np.ndarray:
        """The full-resolution image as float32 (H, W) in [0, 1]."""
        raise NotImplementedError

    def load_mask(self, index: int) -> np.ndarray | None:
        """Optional (K, H, W) bool masks at full resolution."""
        return None

    def boxes(self, index: int) -> list[tuple[str, float, float, float, float]]:
        """Optional ``(finding, x, y, w, h)`` boxes in pixels of the S x S image."""
        return []

    def describe(self, index: int) -> str:
        """Name of the file behind ``index`` (for error messages)."""
        return f"{type(self).__name__}[{index}]"

    # -- contract --------------------------------------------------------------------------------
    def __getitem__(self, index: int) -> dict[str, Any]:
        for attempt in range(len(self)):
            i = (index + attempt) % len(self)
            try:
                return self._sample(i)
            except (OSError, ValueError) as err:
                if self.on_error == "raise":
                    raise
                where = self.describe(i)
                text = str(err) if where in str(err) else f"{where}: {err}"
                warnings.warn(f"skipping {text}", stacklevel=2)
                self.skipped.append(self.describe(i))
        raise RuntimeError(f"{type(self).__name__}: no readable image left")

    def _sample(self, i: int) -> dict[str, Any]:
        raw = self.load_image(i)
        if min(np.shape(raw)[-2:], default=0) < MIN_IMAGE_SIDE:
            raise ImageReadError(f"{self.describe(i)}: image of {np.shape(raw)[-1]} x "
                                 f"{np.shape(raw)[-2]} px; expected a radiograph of at least "
                                 f"{MIN_IMAGE_SIDE} px a side (stretching it to "
                                 f"{self.image_size or 'its'} px would make a picture of nothing)")
        img = torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32))[None]
        img = resize_image(img, self.image_size)
        sample: dict[str, Any] = {
            "labels": torch.from_numpy(np.asarray(self.labels[i], dtype=np.float32)),
            "index": i,
            "patient_id": str(self.patient_ids[i]),
        }
        if self.has_masks:
            m = self.load_mask(i)
            m = torch.from_numpy(np.asarray(m, dtype=np.float32))
            sample["mask"] = resize_image(m, self.image_size) > 0.5
        sample["image"] = self.transform(img) if self.transform is not None else img
        return sample


def check_contract(dataset, n: int = 3) -> None:
    """Raise ``ValueError`` (naming the dataset, the sample and the field) unless the first ``n``
    samples of ``dataset`` follow the contract above: image float32 (1, S, S) in [0, 1]; labels
    float32 (K,) in {0, 1, NaN} equal to ``dataset.labels[i]``; ``index`` an int; ``patient_id``
    a str equal to ``dataset.patient_ids[i]``; a bool (K, S, S) mask when ``has_masks``;
    ``boxes(i)`` a list of ``(finding, x, y, w, h)`` with a known finding and w, h > 0."""
    name = type(dataset).__name__
    findings = list(dataset.findings)
    k = len(findings)
    labels = np.asarray(dataset.labels, dtype=np.float64) if len(dataset) <= 2_000_000 else None
    if labels is not None and labels.shape != (len(dataset), k):
        raise ValueError(f"{name}.labels has shape {labels.shape}; expected ({len(dataset)}, {k})")
    for i in range(min(n, len(dataset))):
        s = dataset[i]
        where = f"{name}[{i}]"
        img = s.get("image")
        if not (isinstance(img, torch.Tensor) and img.dtype == torch.float32 and img.ndim == 3
                and img.shape[0] == 1):
            raise ValueError(f"{where}['image']: expected float32 (1, S, S), got "
                             f"{getattr(img, 'dtype', type(img))} {tuple(getattr(img, 'shape', ()))}")
        if float(img.min()) < 0 or float(img.max()) > 1:
            raise ValueError(f"{where}['image']: values outside [0, 1]")
        lab = s.get("labels")
        if not (isinstance(lab, torch.Tensor) and lab.dtype == torch.float32 and lab.shape == (k,)):
            raise ValueError(f"{where}['labels']: expected float32 ({k},)")
        known = lab[~torch.isnan(lab)]
        if not bool(((known == 0) | (known == 1)).all()):
            raise ValueError(f"{where}['labels']: expected 0, 1 or NaN")
        if labels is not None:
            row = torch.as_tensor(labels[i], dtype=torch.float32)
            same = (row == lab) | (torch.isnan(row) & torch.isnan(lab)) | torch.isnan(lab)
            if not bool(same.all()):
                raise ValueError(f"{where}['labels'] differs from {name}.labels[{i}]")
        if not isinstance(s.get("index"), (int, np.integer)):
            raise ValueError(f"{where}['index']: expected an int")
        if not isinstance(s.get("patient_id"), str) or s["patient_id"] != str(
                dataset.patient_ids[i]):
            raise ValueError(f"{where}['patient_id']: expected the str {dataset.patient_ids[i]!r}")
        if getattr(dataset, "has_masks", False):
            m = s.get("mask")
            if not (isinstance(m, torch.Tensor) and m.dtype == torch.bool
                    and tuple(m.shape) == (k, *img.shape[-2:])):
                raise ValueError(f"{where}['mask']: expected bool ({k}, S, S)")
        boxes = dataset.boxes(i) if hasattr(dataset, "boxes") else []
        for box in boxes:
            if len(box) != 5 or box[0] not in findings or not (box[3] > 0 and box[4] > 0):
                raise ValueError(f"{where}: box {box}: expected (finding, x, y, w > 0, h > 0) "
                                 f"with finding in {findings}")

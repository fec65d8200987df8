"""Reading DICOM radiographs (via pydicom) into the kit's intensity contract.

``read_dicom(path) -> float32 (H, W) in [0, 1]``, 0 = black, 1 = white. The pipeline is the DICOM
grey-scale pipeline (PS3.3 C.11), in this order:

1. Decode the stored values ``s`` (uncompressed, RLE, JPEG baseline via Pillow, JPEG 2000 via
   pylibjpeg-openjpeg or Pillow: whatever pydicom has a decoder for). Only ``BitsStored`` bits are
   pixel data: for unsigned data higher bits (old overlay planes) are masked off.
2. Modality LUT: ``m = s * RescaleSlope + RescaleIntercept`` (or a ModalityLUTSequence).
3. VOI (if ``apply_voi`` and the file has one): the VOILUTSequence if present, else the window
   ``WindowCenter c``, ``WindowWidth w`` with the file's ``VOILUTFunction``:

   - LINEAR: ``y = clip((m - (c - 0.5)) / (w - 1) + 0.5, 0, 1)``
   - LINEAR_EXACT: ``y = clip((m - c) / w + 0.5, 0, 1)``
   - SIGMOID: ``y = 1 / (1 + exp(-4 (m - c) / w))``

   Without a VOI (or with ``apply_voi=False``) ``y = (m - m_lo) / (m_hi - m_lo)``, where
   ``[m_lo, m_hi]`` is the modality transform of the full stored range (``[0, 2**BitsStored - 1]``
   unsigned, ``[-2**(b-1), 2**(b-1) - 1]`` signed): a 12-bit image with values up to 4095 is scaled
   by 4095, not by 65535 and not by its own maximum (which would change with every image).
4. ``PhotometricInterpretation = MONOCHROME1`` (white = low values): ``y -> 1 - y``.

Unsupported files raise :class:`~mlvicx_core.data.imageio.ImageReadError` naming the file: not
DICOM, no pixel data, colour (``SamplesPerPixel != 1``), multi-frame, or a transfer syntax without
an installed decoder.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from .imageio import ImageReadError

DICOM_SUFFIXES = (".dcm", ".dicom")


def _read_dataset(path: Path, **kwargs) -> pydicom.Dataset:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such DICOM file")
    try:
        return pydicom.dcmread(path, **kwargs)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as err:
        raise ImageReadError(f"{path}: not a readable DICOM file ({type(err).__name__}: {err})") \
            from err


def dicom_header(path: str | os.PathLike, tags: list[str] | None = None) -> pydicom.Dataset:
    """The DICOM header without pixel data (cheap: for sizes, patient ids, view positions)."""
    return _read_dataset(Path(path), stop_before_pixels=True, specific_tags=tags)


def dicom_shape(path: str | os.PathLike) -> tuple[int, int]:
    """(rows, columns) of the image in ``path`` from its header."""
    ds = dicom_header(path, ["Rows", "Columns"])
    if "Rows" not in ds or "Columns" not in ds:
        raise ImageReadError(f"{path}: DICOM header has no Rows/Columns")
    return int(ds.Rows), int(ds.Columns)


def _first(value, index: int = 0) -> float:
    """WindowCenter/Width may be multi-valued (several presets); pick ``index``."""
    if isinstance(value, pydicom.multival.MultiValue):
        return float(value[min(index, len(value) - 1)])
    return float(value)


def window(m: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """DICOM VOI window (PS3.3 C.11.2.1.2) mapped to [0, 1]; equations in the module docstring."""
    function = (function or "LINEAR").upper()
    m = m.astype(np.float64)
    if function == "LINEAR":
        if width < 1:
            raise ValueError(f"WindowWidth={width}: LINEAR windows need width >= 1")
        if width == 1:  # degenerate: a threshold at c - 0.5
            return (m > center - 0.5).astype(np.float64)
        y = (m - (center - 0.5)) / (width - 1) + 0.5
    elif function == "LINEAR_EXACT":
        if width <= 0:
            raise ValueError(f"WindowWidth={width}: LINEAR_EXACT windows need width > 0")
        y = (m - center) / width + 0.5
    elif function == "SIGMOID":
        if width <= 0:
            raise ValueError(f"WindowWidth={width}: SIGMOID windows need width > 0")
        return 1.0 / (1.0 + np.exp(-4.0 * (m - center) / width))
    else:
        raise ValueError(f"VOILUTFunction={function!r}; expected LINEAR, LINEAR_EXACT or SIGMOID")
    return np.clip(y, 0.0, 1.0)


def _stored_range(ds: pydicom.Dataset) -> tuple[int, int]:
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def read_dicom(path: str | os.PathLike, *, apply_voi: bool = True,
               voi_index: int = 0) -> np.ndarray:
    """Read a single-frame grey DICOM as float32 (H, W) in [0, 1] (pipeline in module docstring).

    Parameters
    ----------
    apply_voi: use the file's VOI LUT / window when it has one (the view the radiologist saw).
    voi_index: which window / VOI LUT to use when the file lists several.
    """
    path = Path(path)
    ds = _read_dataset(path)
    if "PixelData" not in ds:
        raise ImageReadError(f"{path}: DICOM without pixel data (PixelData missing)")
    spp = int(ds.get("SamplesPerPixel", 1))
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if spp != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageReadError(
            f"{path}: colour DICOM (SamplesPerPixel={spp}, PhotometricInterpretation="
            f"{photometric}); expected a grey MONOCHROME1/MONOCHROME2 radiograph")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise ImageReadError(f"{path}: multi-frame DICOM ({frames} frames); expected one image")
    if "BitsStored" not in ds:
        raise ImageReadError(f"{path}: DICOM header has no BitsStored")
    try:
        stored = ds.pixel_array
    except Exception as err:  # decoders raise anything from RuntimeError to NotImplementedError
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax)
        raise ImageReadError(
            f"{path}: cannot decode pixel data (transfer syntax {name}): {err}. JPEG needs Pillow, "
            "JPEG 2000 needs pylibjpeg-openjpeg") from err
    if stored.ndim != 2:
        raise ImageReadError(f"{path}: pixel data of shape {stored.shape}; expected (rows, cols)")

    lo, hi = _stored_range(ds)
    s = stored.astype(np.int64)
    if lo == 0 and s.size and s.max() > hi:
        s &= hi  # bits above BitsStored are not pixel data (PS3.5 8.1.1)

    # Modality LUT.
    if "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut
        m = np.asarray(apply_modality_lut(s, ds), dtype=np.float64)
        lut = np.asarray(ds.ModalityLUTSequence[0].LUTData, dtype=np.float64)
        m_lo, m_hi = float(lut.min()), float(lut.max())
    else:
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        m = s * slope + intercept
        m_lo, m_hi = sorted((lo * slope + intercept, hi * slope + intercept))

    try:
        if apply_voi and "VOILUTSequence" in ds:
            from pydicom.pixels import apply_voi
            item = ds.VOILUTSequence[min(voi_index, len(ds.VOILUTSequence) - 1)]
            lut = np.asarray(item.LUTData, dtype=np.float64)
            # LUT inputs are integers (PS3.3 C.11.2.1.1): index with the rounded modality values.
            v = np.asarray(apply_voi(np.rint(m).astype(np.int64), ds, index=voi_index),
                           dtype=np.float64)
            span = lut.max() - lut.min()
            y = (v - lut.min()) / span if span > 0 else np.zeros_like(v)
        elif apply_voi and "WindowCenter" in ds and "WindowWidth" in ds:
            y = window(m, _first(ds.WindowCenter, voi_index), _first(ds.WindowWidth, voi_index),
                       str(ds.get("VOILUTFunction", "LINEAR")))
        else:
            y = (m - m_lo) / (m_hi - m_lo) if m_hi > m_lo else np.zeros_like(m)
    except ValueError as err:
        raise ImageReadError(f"{path}: invalid VOI ({err})") from err
    y = np.clip(y, 0.0, 1.0)
    if photometric == "MONOCHROME1":
        y = 1.0 - y
    return y.astype(np.float32)


def write_dicom(path: str | os.PathLike, stored: np.ndarray, *, bits_stored: int | None = None,
                photometric: str = "MONOCHROME2", patient_id: str = "anonymous",
                **elements) -> Path:
    """Write a minimal uncompressed single-frame grey DICOM (fixtures, demos, exporting phantoms).

    ``stored``: (H, W) integer array of stored values: uint8 -> 8 bits allocated, uint16/int16 ->
    16 (int16 sets PixelRepresentation = 1). ``bits_stored`` defaults to the allocated bits.
    Extra ``elements`` are set by keyword (e.g. ``RescaleSlope=2``, ``WindowCenter=100``,
    ``VOILUTFunction="SIGMOID"``).
    """
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    stored = np.asarray(stored)
    if stored.ndim != 2 or stored.dtype not in (np.uint8, np.uint16, np.int16):
        raise ValueError(f"stored: {stored.dtype} array of shape {stored.shape}; expected a 2-D "
                         "uint8, uint16 or int16 array")
    allocated = stored.dtype.itemsize * 8
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "CR", patient_id
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored = allocated, bits_stored or allocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(stored.dtype == np.int16)
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(stored.astype(stored.dtype.newbyteorder("<"))).tobytes()
    path = Path(path)
    ds.save_as(path, enforce_file_format=True)
    return path

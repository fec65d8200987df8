"""Finding radiograph files on disk and reading any of them by suffix.

The datasets look images up by *key* (NIH: the file name ``00000001_000.png``; RSNA, SIIM, VinDr:
the identifier in the CSV, i.e. the file stem), because the official archives nest the files in
different sub-folders (NIH ``images_001/images/...``, SIIM ``<study>/<series>/<id>.dcm``).

Missing-file policy (shared by every CSV-based dataset): rows whose image is not on disk are
excluded when the dataset is built, counted in ``dataset.missing`` (a list of the keys) and reported
in one warning; ``missing="raise"`` turns that into an error naming the first few keys. This lets a
partial download (one NIH tarball of twelve) be used as is, while no listed-but-absent file can ever
reach a training batch.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from .base import CXRDataset
from .dicom import DICOM_SUFFIXES, dicom_shape, read_dicom
from .imageio import IMAGE_SUFFIXES, ImageReadError, check_bit_depth, read_image

RADIOGRAPH_SUFFIXES = IMAGE_SUFFIXES + DICOM_SUFFIXES


def list_images(root: str | os.PathLike, suffixes: tuple[str, ...] = RADIOGRAPH_SUFFIXES,
                recursive: bool = True) -> list[Path]:
    """Sorted image files under ``root`` with one of ``suffixes`` (case-insensitive); hidden
    files and folders (``.ipynb_checkpoints``, ``._foo.png`` from macOS archives) are ignored."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: image folder does not exist")
    suffixes = tuple(s.lower() for s in suffixes)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in filenames
                  if not f.startswith(".") and f.lower().endswith(suffixes)]
        if not recursive:
            break
    return sorted(found)


def index_images(root: str | os.PathLike, key: str = "name",
                 suffixes: tuple[str, ...] = RADIOGRAPH_SUFFIXES) -> dict[str, Path]:
    """Map ``key`` (``"name"``: file name, ``"stem"``: name without suffix) -> path, recursively.

    Two files with the same key (e.g. ``a.png`` and ``a.dcm`` under ``key="stem"``) raise, since the
    label CSV cannot say which one it means.
    """
    out: dict[str, Path] = {}
    for p in list_images(root, suffixes):
        k = p.name if key == "name" else p.stem
        if k in out:
            raise ValueError(f"{root}: two files for {k!r}: {out[k]} and {p}; expected one")
        out[k] = p
    return out


def match_listed(keys, found: dict[str, Path], *, missing: str, source: str,
                 folder: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """Keep the listed ``keys`` present in ``found``; returns (mask of kept keys, missing keys).

    ``missing="exclude"`` warns once with the count, ``"raise"`` raises naming the first keys.
    """
    if missing not in ("exclude", "raise"):
        raise ValueError(f"missing={missing!r}: expected 'exclude' or 'raise'")
    keys = list(keys)
    keep = np.array([k in found for k in keys], dtype=bool)
    absent = [k for k, ok in zip(keys, keep) if not ok]
    if absent and missing == "raise":
        raise FileNotFoundError(
            f"{len(absent)} image(s) listed in {source} are not under {folder}, e.g. "
            f"{absent[:3]} (missing='exclude' indexes only the images present)")
    if not keep.any():
        raise FileNotFoundError(
            f"none of the {len(keys)} images listed in {source} is under {folder}; expected the "
            "dataset's image files there (see data/README.md for the layout)")
    if absent:
        warnings.warn(f"{len(absent)} of {len(keys)} images listed in {source} are not under "
                      f"{folder}; indexed the {int(keep.sum())} present", stacklevel=3)
    return keep, absent


def first_existing(*candidates: Path) -> Path | None:
    """The first of ``candidates`` that exists, else None (for default file locations)."""
    return next((c for c in candidates if c.exists()), None)


def default_image_dir(root: Path, name: str) -> Path:
    """``root / name`` when that folder exists (the official layout), else ``root`` itself (a folder
    that holds the images directly)."""
    return root / name if (root / name).is_dir() else root


def kaggle_layout(root, csv, image_dir, *, folder: str, table: str, bundled: str,
                  images: str) -> tuple[Path, Path, Path]:
    """``(root, csv, image_dir)`` of a Kaggle-style dataset, each defaulted when None: ``root`` is
    ``<default data root>/<folder>``; the label table is the user's ``root/<table>``, else the copy
    bundled with torchxrayvision (``bundled``), else ``root/<table>`` (named when missing);
    ``image_dir`` is ``root/<images>`` (or ``root`` itself when that folder does not exist)."""
    from .paths import default_data_root, torchxrayvision_data_file

    root = Path(root) if root is not None else default_data_root() / folder
    if csv is None:
        csv = first_existing(root / table) or torchxrayvision_data_file(bundled) or root / table
    image_dir = Path(image_dir) if image_dir is not None else default_image_dir(root, images)
    return root, Path(csv), image_dir


def is_dicom(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in DICOM_SUFFIXES


def read_radiograph(path: str | os.PathLike, *, bit_depth: int | None = None,
                    **kwargs) -> np.ndarray:
    """float32 (H, W) in [0, 1] from a DICOM (by suffix) or a PNG/JPEG/TIFF; kwargs go to
    :func:`~mlvicx_core.data.dicom.read_dicom` or :func:`~mlvicx_core.data.imageio.read_image`.
    ``bit_depth`` applies to 16-bit PNG/TIFF files only: a DICOM states its own ``BitsStored``."""
    if is_dicom(path):
        return read_dicom(path, **kwargs)
    return read_image(path, bit_depth=bit_depth, **kwargs)


def image_shape(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of a radiograph from its header only (for scaling boxes)."""
    if is_dicom(path):
        return dicom_shape(path)
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except OSError as err:
        raise ImageReadError(f"{path}: unreadable image header ({err})") from err


def box_scale(path: str | os.PathLike, image_size: int | None,
              reference: tuple[int, int] | None = None) -> tuple[float, float]:
    """(sx, sy) that map box coordinates to the S x S image the dataset returns.

    ``reference`` = (height, width) of the frame the boxes were drawn in; by default the file's own
    size. With ``image_size=None`` the returned image keeps the file's size.
    """
    h, w = image_shape(path) if (reference is None or image_size is None) else reference
    ref_h, ref_w = reference if reference is not None else (h, w)
    out_h, out_w = (image_size, image_size) if image_size is not None else (h, w)
    return out_w / ref_w, out_h / ref_h


class FileDataset(CXRDataset):
    """A :class:`CXRDataset` whose sample ``i`` is the radiograph file ``paths[i]``.

    Subclasses set ``paths``, ``labels`` and ``patient_ids`` (same length); ``missing`` lists the
    table entries whose file was not found (see the module docstring). ``bit_depth``: the bits
    used by 16-bit PNG/TIFF files (e.g. 12), for files without a PNG ``sBIT`` chunk; ``None``
    (default): the chunk, else 16 when an image's maximum needs 16 bits, else each such image
    raises (:mod:`~mlvicx_core.data.imageio`). 8-bit files and DICOM ignore it.
    """

    def __init__(self, image_size: int | None = 224, transform=None, on_error: str = "raise",
                 bit_depth: int | None = None):
        super().__init__(image_size=image_size, transform=transform, on_error=on_error)
        self.bit_depth = check_bit_depth(bit_depth, f"{type(self).__name__}: ")
        self.paths: list[Path] = []
        self.missing: list[str] = []

    def load_image(self, index: int) -> np.ndarray:
        return read_radiograph(self.paths[index], bit_depth=self.bit_depth)

    def describe(self, index: int) -> str:
        return str(self.paths[index])

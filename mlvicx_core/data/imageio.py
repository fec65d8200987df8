"""Reading PNG/JPEG radiographs (via Pillow) into the kit's intensity contract.

``read_image(path) -> float32 (H, W) in [0, 1]``, 0 = black, 1 = white.

Scaling by stored bit depth
    8-bit grey ``v / 255``; 16-bit grey ``v / (2**b - 1)`` where ``b`` is the bit depth actually
    used: the ``bit_depth`` argument if given, else the PNG ``sBIT`` chunk (significant bits) if
    the file has one, else 16 *only if the image's maximum is at least 2**15* (its top bit is used,
    so no smaller depth can hold it). A 16-bit file with neither ``bit_depth`` nor ``sBIT`` whose
    values all fit in 15 bits is ambiguous (scanner values of 10-14 bits stored without ``sBIT``,
    the common case, or a dark true 16-bit image): it raises :class:`ImageReadError` naming the
    value range and the ``bit_depth`` to pass, instead of guessing. Guessing either way is wrong for
    someone: dividing by 65535 turns a 12-bit film near-black, and inferring the depth per image
    from its maximum would scale images of one dataset differently. The choice is made once per
    dataset with ``bit_depth`` (``FileDataset``/``ImageFolderDataset`` take it too). A stored value
    above ``2**b - 1`` is an error, not a clip.

Colour channels
    RGB(A) files are reduced to one grey channel by ITU-R BT.601 luminance,
    ``Y = 0.299 R + 0.587 G + 0.114 B`` (computed in float, no rounding), the formula Pillow's
    ``convert("L")`` uses. Alpha is ignored (radiographs are opaque; the NIH RGBA copies have
    alpha = 255 everywhere). A radiograph stored as RGB normally has R = G = B (NIH: grey copied
    into three channels), and then ``Y`` equals that grey value. A file whose channels differ by
    more than ``COLOUR_TOLERANCE`` is a real colour picture (a photo, an annotated screenshot) and
    raises :class:`ImageReadError` unless ``allow_colour=True``: converting it silently would give
    a plausible-looking but wrong radiograph.

Errors
    Every failure (unreadable, corrupt, truncated, unsupported mode, out-of-range values) raises
    :class:`ImageReadError` (a ``ValueError``, which the dataset base class turns into a skip with
    ``on_error="skip"``) whose message starts with the path; a missing file raises
    ``FileNotFoundError`` naming it.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

#: Largest allowed difference between colour channels (as a fraction of full scale) for an RGB
#: file to count as a grey radiograph stored in colour; 4/255 absorbs JPEG chroma rounding.
COLOUR_TOLERANCE = 4.0 / 255.0

#: ITU-R BT.601 luma weights (R, G, B).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class ImageReadError(ValueError):
    """A file that cannot be turned into a valid grey radiograph; the message names it and why."""


def check_bit_depth(bit_depth, where: str = "") -> int | None:
    """``bit_depth`` if it is None or an integer 1..16, else ``ValueError`` (``where`` prefixes the
    message, e.g. the dataset)."""
    if bit_depth is None or (isinstance(bit_depth, (int, np.integer))
                             and not isinstance(bit_depth, bool) and 1 <= bit_depth <= 16):
        return None if bit_depth is None else int(bit_depth)
    raise ValueError(f"{where}bit_depth={bit_depth!r}: expected None (the PNG sBIT chunk, else 16 "
                     "when the image's maximum needs 16 bits) or an integer 1..16 (the bits used "
                     "by 16-bit PNG/TIFF files)")


def png_significant_bits(path: str | os.PathLike) -> int | None:
    """The grey sample depth recorded in a PNG ``sBIT`` chunk, or None (no chunk / not a PNG).

    Only chunks before the first ``IDAT`` are read (``sBIT`` must precede the image data).
    """
    with open(path, "rb") as fh:
        if fh.read(8) != b"\x89PNG\r\n\x1a\n":
            return None
        while True:
            head = fh.read(8)
            if len(head) < 8:
                return None
            length, ctype = struct.unpack(">I4s", head)
            if ctype in (b"IDAT", b"IEND"):
                return None
            data = fh.read(length)
            fh.read(4)  # CRC: Pillow checks it when the pixels are decoded
            if ctype == b"sBIT" and length >= 1:
                return int(data[0])


def _pil_open_checked(path: Path) -> Image.Image:
    """Open and fully decode ``path``; truncation raises even if a caller enabled
    ``ImageFile.LOAD_TRUNCATED_IMAGES`` (then Pillow would pad the missing rows with grey)."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        with Image.open(path) as probe:
            probe.verify()  # checks chunk CRCs and the end of a PNG without the lenient flag
    im = Image.open(path)
    try:
        im.load()
    except BaseException:
        im.close()  # the file handle Pillow opened would otherwise leak (ResourceWarning)
        raise
    return im


def pil_to_grey(im: Image.Image, *, name: str = "<image>", bit_depth: int | None = None,
                allow_colour: bool = False) -> np.ndarray:
    """Pillow image -> float32 (H, W) in [0, 1] by the module's rules (``name`` for errors)."""
    mode = im.mode
    if mode in ("P", "PA"):
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode == "1":
        return np.asarray(im, dtype=np.float32)
    if mode in ("L", "LA"):
        return np.asarray(im.getchannel(0), dtype=np.float32) / 255.0
    if mode in ("RGB", "RGBA", "CMYK", "YCbCr"):
        rgb = np.asarray(im.convert("RGB") if mode in ("CMYK", "YCbCr") else im, dtype=np.float32)
        rgb = rgb[..., :3] / 255.0
        spread = float((rgb.max(axis=-1) - rgb.min(axis=-1)).max()) if rgb.size else 0.0
        if spread > COLOUR_TOLERANCE and not allow_colour:
            raise ImageReadError(
                f"{name}: {mode} image with colour content (channels differ by up to "
                f"{spread * 255:.0f}/255); expected a grey radiograph. Pass allow_colour=True to "
                "convert it to luminance anyway")
        w = LUMA_WEIGHTS
        return (w[0] * rgb[..., 0] + w[1] * rgb[..., 1] + w[2] * rgb[..., 2]).astype(np.float32)
    if mode in _SIXTEEN_BIT_MODES:
        arr = np.asarray(im).astype(np.int64)
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if bit_depth is None and 0 <= hi < 1 << 15:
            need = max(1, hi.bit_length())
            usual = next(b for b in (8, 10, 12, 14, 16) if b >= need)
            raise ImageReadError(
                f"{name}: 16-bit image without an sBIT chunk, values in [{lo}, {hi}]: they fit in "
                f"{need} bits, so the bit depth is ambiguous (a {usual}-bit scanner image, or a "
                f"dark 16-bit one). Pass bit_depth={usual} if the scanner wrote {usual}-bit "
                "values, or bit_depth=16 for a true 16-bit image (read_image or the dataset's bit_depth)")
        bits = 16 if bit_depth is None else int(bit_depth)
        if not 1 <= bits <= 16:
            raise ImageReadError(f"{name}: bit_depth={bits}; expected 1..16")
        top = (1 << bits) - 1
        if lo < 0 or hi > top:
            raise ImageReadError(
                f"{name}: values span [{lo}, {hi}], outside the {bits}-bit range [0, {top}]")
        return (arr / top).astype(np.float32)
    raise ImageReadError(f"{name}: unsupported image mode {mode!r}; expected grey (L, I;16), "
                         "RGB or RGBA")


def read_image(path: str | os.PathLike, *, bit_depth: int | None = None,
               allow_colour: bool = False) -> np.ndarray:
    """Read a PNG/JPEG/TIFF radiograph as float32 (H, W) in [0, 1] (module docstring for rules).

    Parameters
    ----------
    bit_depth: bits actually used by a 16-bit file (e.g. 12); default from the PNG ``sBIT`` chunk,
        else 16 when the maximum needs 16 bits, else an error (module docstring). Ignored for
        8-bit files.
    allow_colour: convert genuinely coloured RGB files to luminance instead of raising.
    """
    path = Path(path)
    bit_depth = check_bit_depth(bit_depth, f"{path}: ")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    try:
        im = _pil_open_checked(path)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        # Pillow signals corrupt/truncated data with OSError or SyntaxError (bad PNG chunks).
        raise ImageReadError(f"{path}: unreadable or corrupt image ({err})") from err
    with im:
        if im.mode in _SIXTEEN_BIT_MODES and bit_depth is None:
            bit_depth = png_significant_bits(path)
        if getattr(im, "n_frames", 1) > 1:
            raise ImageReadError(f"{path}: {im.n_frames} frames; expected a single image")
        return pil_to_grey(im, name=str(path), bit_depth=bit_depth, allow_colour=allow_colour)

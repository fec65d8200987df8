"""SIIM-ACR run-length encoding of pneumothorax masks.

Format (SIIM-ACR Pneumothorax challenge, ``train-rle.csv``): the (H, W) mask is flattened in
column-major order (``mask.T.ravel()``: down the first column, then the second, ...). The string
lists pairs ``gap length``: the first run starts ``gap_1`` pixels after position 0, every later run
starts ``gap_k`` pixels after the end of the previous run, i.e. start_k = end_{k-1} + gap_k with
end_0 = 0 and end_k = start_k + length_k. ``-1`` (or an empty string) is an empty mask.
"""
from __future__ import annotations

import numpy as np

EMPTY = "-1"


def rle_runs(rle: str) -> tuple[np.ndarray, np.ndarray]:
    """RLE string -> (starts, ends) of the runs in the flattened column-major mask (end exclusive).

    Raises ValueError for non-integers, an odd count, negative gaps or non-positive lengths.
    """
    text = "" if rle is None else str(rle).strip()
    if text in ("", EMPTY):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    try:
        nums = np.array([int(t) for t in text.split()], dtype=np.int64)
    except ValueError as err:
        raise ValueError(f"RLE {text[:40]!r}: expected integers") from err
    if len(nums) % 2:
        raise ValueError(f"RLE with {len(nums)} numbers; expected (gap, length) pairs")
    gaps, lengths = nums[0::2], nums[1::2]
    if (gaps < 0).any() or (lengths <= 0).any():
        raise ValueError("RLE with a negative gap or a non-positive run length")
    ends = np.cumsum(gaps + lengths)
    return ends - lengths, ends


def rle_decode(rle: str, shape: tuple[int, int] = (1024, 1024)) -> np.ndarray:
    """RLE string -> bool mask of ``shape`` (H, W). Raises ValueError on malformed strings or runs
    past the end of the mask."""
    h, w = shape
    starts, ends = rle_runs(rle)
    if len(ends) and ends[-1] > h * w:
        raise ValueError(f"RLE runs reach pixel {ends[-1]}; beyond the {h}x{w} mask")
    flat = np.zeros(h * w, dtype=bool)
    for a, b in zip(starts, ends):  # runs are few (tens): slicing beats vectorised tricks
        flat[a:b] = True
    return flat.reshape(w, h).T  # column-major: row c of the (W, H) grid is image column c


def rle_encode(mask: np.ndarray) -> str:
    """bool (H, W) mask -> SIIM RLE string (``"-1"`` for an empty mask)."""
    flat = np.asarray(mask, dtype=bool).T.ravel()
    if not flat.any():
        return EMPTY
    padded = np.concatenate([[False], flat, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = edges[0::2], edges[1::2]
    prev_ends = np.concatenate([[0], ends[:-1]])
    pairs = np.stack([starts - prev_ends, ends - starts], axis=1).ravel()
    return " ".join(str(int(v)) for v in pairs)

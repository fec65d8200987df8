"""Localisation scores of a heatmap against a ground-truth region (PHANTOM.md, "Pointing game").

- Pointing game: a hit when the heatmap's maximum lies inside the region dilated by ``tolerance``
  pixels (Euclidean distance to the nearest region pixel <= tolerance; ~15 px at 224 px). When the
  maximum is attained at several pixels, the first in row-major order counts (numpy's argmax).
- Energy inside: the share of the positive heatmap energy inside the (undilated) region,
  sum(max(h, 0) * region) / sum(max(h, 0)); NaN when the map has no positive energy.

Regions come from the generator's masks directly, or from NIH boxes via :func:`boxes_to_mask`.
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import distance_transform_edt


def _check(heatmap: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h = np.asarray(heatmap, dtype=np.float64)
    r = np.asarray(region).astype(bool)
    if h.ndim != 2 or h.shape != r.shape:
        raise ValueError(f"heatmap {h.shape} and region {r.shape}: expected one 2-D shape (H, W)")
    return h, r


def pointing_hit(heatmap: np.ndarray, region: np.ndarray, tolerance: float = 0.0) -> float:
    """1.0 for a hit, 0.0 for a miss, NaN when the region is empty (nothing to point at)."""
    h, r = _check(heatmap, region)
    if not r.any():
        return float("nan")
    y, x = np.unravel_index(int(np.argmax(h)), h.shape)
    if r[y, x]:
        return 1.0
    if tolerance <= 0:
        return 0.0
    # distance of every pixel to the nearest region pixel
    dist = distance_transform_edt(~r)
    return float(dist[y, x] <= tolerance)


def energy_inside(heatmap: np.ndarray, region: np.ndarray) -> float:
    """Share of positive heatmap energy inside ``region`` (NaN if no positive energy or no region)."""
    h, r = _check(heatmap, region)
    pos = np.clip(h, 0, None)
    total = pos.sum()
    if total <= 0 or not r.any():
        return float("nan")
    return float(pos[r].sum() / total)


def boxes_to_mask(boxes: list[tuple[str, float, float, float, float]], size: int | tuple[int, int],
                  finding: str | None = None) -> np.ndarray:
    """Rasterise ``(finding, x, y, w, h)`` pixel boxes into a bool (H, W) mask.

    A pixel (row i, column j) covers [j, j+1) x [i, i+1); it is inside when its centre lies in the
    box. ``finding`` keeps only boxes of that finding.
    """
    hgt, wid = (size, size) if isinstance(size, int) else size
    mask = np.zeros((hgt, wid), dtype=bool)
    cols = np.arange(wid) + 0.5
    rows = np.arange(hgt) + 0.5
    for name, x, y, w, h in boxes:
        if finding is not None and name != finding:
            continue
        if w < 0 or h < 0:
            raise ValueError(f"box {(name, x, y, w, h)}: width and height must be >= 0")
        inside_c = (cols >= x) & (cols < x + w)
        inside_r = (rows >= y) & (rows < y + h)
        mask |= inside_r[:, None] & inside_c[None, :]
    return mask


def localisation_scores(heatmaps: np.ndarray, regions: np.ndarray,
                        tolerance: float = 0.0) -> dict[str, float]:
    """Mean pointing-game hit rate and mean energy inside over (N, H, W) maps and regions.

    Images with an empty region are left out; ``n`` counts the images scored.
    """
    heatmaps, regions = np.asarray(heatmaps), np.asarray(regions)
    if heatmaps.shape != regions.shape or heatmaps.ndim != 3:
        raise ValueError(f"heatmaps {heatmaps.shape} and regions {regions.shape}: expected (N, H, W)")
    hits = np.array([pointing_hit(h, r, tolerance) for h, r in zip(heatmaps, regions)])
    energy = np.array([energy_inside(h, r) for h, r in zip(heatmaps, regions)])
    scored = ~np.isnan(hits)
    return {
        "pointing_game": float(np.mean(hits[scored])) if scored.any() else float("nan"),
        "energy_inside": float(np.nanmean(energy)) if (~np.isnan(energy)).any() else float("nan"),
        "n": int(scored.sum()),
    }

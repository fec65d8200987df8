"""Localisation scores of a heatmap against a ground-truth region (PHANTOM.md, "Pointing game").

- Pointing game, tie-aware: the maximal pixels of the map are those exactly equal to its maximum
  (a Grad-CAM map upsampled from a coarse layer has plateaus: at 64 px, layer4's maximum is a
  16 x 16 block). A map scores the share of its maximal pixels that lie inside the region dilated
  by ``tolerance`` pixels (Euclidean distance to the nearest region pixel <= tolerance; ~15 px at
  224 px). With one maximal pixel this is the classic 1 (hit) or 0 (miss); with a plateau it is
  the expected hit when pointing at one of its pixels uniformly at random, so no pixel order
  (numpy's argmax took the first in row-major order) and no plateau shape decides.
- A constant map (maximum = minimum, e.g. the all-zero map Grad-CAM returns when the target's
  gradient vanishes) points nowhere: its pointing score is undefined (NaN), and
  :func:`localisation_scores` leaves it out of both means and counts it in ``n_constant``.
- Energy inside: the share of the positive heatmap energy inside the (undilated) region,
  sum(max(h, 0) * region) / sum(max(h, 0)); NaN (undefined) when the map has no positive energy.
- Chance levels, consistent with these rules and computed on the same images: a uniformly random
  pointer scores the share of the image covered by the dilated region (``chance_pointing``), a
  uniform map the region's share (``chance_energy``).

Regions come from the generator's masks directly, or from NIH boxes via :func:`boxes_to_mask`;
:func:`positive_examples` picks the positive images that have one (what every Grad-CAM score and
figure of the kit is computed on).
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import distance_transform_edt


def _check(heatmap: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h = np.asarray(heatmap, dtype=np.float64)
    r = np.asarray(region).astype(bool)
    if h.ndim != 2 or h.shape != r.shape:
        raise ValueError(f"heatmap {h.shape} and region {r.shape}: expected one 2-D shape (H, W)")
    if not np.isfinite(h).all():
        raise ValueError(f"heatmap has {int((~np.isfinite(h)).sum())} NaN/inf value(s); expected "
                         "finite values")
    return h, r


def is_constant(heatmap: np.ndarray) -> bool:
    """Whether a map has one value everywhere (it points nowhere: pointing is undefined)."""
    h = np.asarray(heatmap)
    return bool(h.size == 0 or h.max() == h.min())


def _dilate(region: np.ndarray, tolerance: float) -> np.ndarray:
    if tolerance <= 0:
        return region
    return distance_transform_edt(~region) <= tolerance  # distance to the nearest region pixel


def pointing_hit(heatmap: np.ndarray, region: np.ndarray, tolerance: float = 0.0) -> float:
    """Share of the map's maximal pixels inside the dilated region, in [0, 1] (1 / 0 for a single
    maximum); NaN when the region is empty (nothing to point at) or the map is constant (it points
    nowhere). Module docstring for the rule."""
    h, r = _check(heatmap, region)
    if not r.any() or is_constant(h):
        return float("nan")
    top = h == h.max()
    return float(_dilate(r, tolerance)[top].mean())


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


def positive_examples(dataset, indices, finding: int, n: int | None = None):
    """Up to ``n`` images (N, 1, S, S) of ``dataset`` (restricted to ``indices``, all when None),
    in order, that are positive for finding index ``finding`` and have a non-empty region; their
    regions (N, S, S) bool and their dataset indices. Regions: ``sample["mask"][finding]`` when the
    dataset has masks, else the finding's ``dataset.boxes(i)``. ``(None, None, [])`` when none."""
    import torch

    name = dataset.findings[finding]
    labels = np.asarray(dataset.labels)
    images, regions, picked = [], [], []
    for i in range(len(dataset)) if indices is None else indices:
        if n is not None and len(images) >= n:
            break
        if labels[i, finding] != 1:
            continue
        sample = dataset[int(i)]
        if getattr(dataset, "has_masks", False):
            region = sample["mask"][finding].numpy().astype(bool)
        else:
            region = boxes_to_mask(dataset.boxes(int(i)), tuple(sample["image"].shape[-2:]), name)
        if region.any():
            images.append(sample["image"])
            regions.append(region)
            picked.append(int(i))
    if not images:
        return None, None, []
    return torch.stack(images), np.stack(regions), picked


def localisation_scores(heatmaps: np.ndarray, regions: np.ndarray,
                        tolerance: float = 0.0) -> dict[str, float]:
    """Mean pointing game and energy inside over (N, H, W) maps and regions, with chance levels.

    Images with an empty region are left out; so are constant maps (counted in ``n_constant``).
    ``n``: images in the pointing-game mean and ``chance_pointing`` (mean share of the image in
    the dilated region); ``n_energy``: those of them whose map has positive energy, which enter
    ``energy_inside`` and ``chance_energy`` (mean region share). Means over no image are NaN.
    """
    heatmaps, regions = np.asarray(heatmaps), np.asarray(regions)
    if heatmaps.shape != regions.shape or heatmaps.ndim != 3:
        raise ValueError(f"heatmaps {heatmaps.shape} and regions {regions.shape}: expected (N, H, W)")
    hits, energy, chance_p, chance_e = [], [], [], []
    n_constant = 0
    for h, r in zip(heatmaps, regions):
        h, r = _check(h, r)
        if not r.any():
            continue
        if is_constant(h):
            n_constant += 1
            continue
        hits.append(pointing_hit(h, r, tolerance))
        chance_p.append(float(_dilate(r, tolerance).mean()))
        e = energy_inside(h, r)
        if not np.isnan(e):
            energy.append(e)
            chance_e.append(float(r.mean()))

    def mean(values: list[float]) -> float:
        return float(np.mean(values)) if values else float("nan")
    return {"pointing_game": mean(hits), "energy_inside": mean(energy), "n": len(hits),
            "n_energy": len(energy), "n_constant": n_constant,
            "chance_pointing": mean(chance_p), "chance_energy": mean(chance_e)}

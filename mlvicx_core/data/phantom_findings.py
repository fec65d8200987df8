"""Findings of the synthetic radiograph: labels, the difficulty knob, thickness maps and masks.

Labels are drawn *without rendering* from a counter-based hash of ``(seed, index, finding)``
(:func:`finding_labels`), so a dataset of any length knows its labels in O(1) per image and the
renderer uses exactly the same values. Each finding's shape parameters come from a fixed-size block
of uniforms of the per-image findings generator, so they do not depend on which other findings are
present.

Every finding acts in the attenuation domain (see :mod:`phantom_anatomy`):

- nodule: a sphere of soft tissue replacing lung, ``t = 2 sqrt(r^2 - d^2)`` times a density < 1;
- mass: a lumpy sum of three Gaussians clipped to the lung, with two air bronchograms;
- effusion: fluid replacing lung below a meniscus ``v_f(x)`` that rises laterally (blunts the angle);
- cardiomegaly: the heart ellipse widened to a cardiothoracic ratio above 0.5;
- pneumothorax: a crescent along the lateral/apical wall where lung (and every vessel) is replaced by
  air, bounded by a thin bright visceral pleural line.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .phantom_anatomy import CM_PER_UNIT, Anatomy, heart_geometry, heart_quad, lung_depth

FINDINGS: tuple[str, ...] = ("nodule", "mass", "effusion", "cardiomegaly", "pneumothorax")
DEFAULT_PREVALENCE: dict[str, float] = {
    "nodule": 0.3, "mass": 0.25, "effusion": 0.3, "cardiomegaly": 0.3, "pneumothorax": 0.25}

#: Named difficulty levels; ``"default"`` is the calibrated level (docs/PHANTOM_GENERATOR.md).
DIFFICULTY_PRESETS: dict[str, float] = {"easy": 0.0, "default": 0.5, "hard": 1.0}


@dataclass(frozen=True)
class Difficulty:
    """Finding sizes/contrasts and nuisance strength at one level in [0, 1] (0 easy, 1 hard)."""

    level: float
    nodule_r: tuple[float, float]     # sphere radius (units; 0.01 unit = 2 mm)
    nodule_density: float             # density relative to soft tissue (< 1 ground glass, > 1 calcified)
    mass_r: tuple[float, float]
    mass_cm: float
    effusion_h: tuple[float, float]   # fluid height at the lateral wall (units)
    ctr_pos: tuple[float, float]      # cardiothoracic ratio of cardiomegaly
    ptx_depth: tuple[float, float]    # rim width (units)
    ptx_line_cm: float
    nuisance: float                   # scales pose, exposure, density and display nuisances


def _lerp(e, h, t):
    if isinstance(e, tuple):
        return tuple(_lerp(a, b, t) for a, b in zip(e, h))
    return float(e + (h - e) * t)


_EASY = dict(nodule_r=(0.06, 0.09), nodule_density=3.0, mass_r=(0.14, 0.22), mass_cm=12.0,
             effusion_h=(0.22, 0.38), ctr_pos=(0.56, 0.66), ptx_depth=(0.08, 0.15),
             ptx_line_cm=2.0, nuisance=0.5)
_HARD = dict(nodule_r=(0.025, 0.045), nodule_density=1.0, mass_r=(0.08, 0.14), mass_cm=4.0,
             effusion_h=(0.08, 0.18), ctr_pos=(0.52, 0.58), ptx_depth=(0.03, 0.07),
             ptx_line_cm=0.8, nuisance=1.5)


def difficulty_params(difficulty: str | float) -> Difficulty:
    """Resolve ``"easy" | "default" | "hard"`` or a float in [0, 1] by linear interpolation."""
    if isinstance(difficulty, str):
        if difficulty not in DIFFICULTY_PRESETS:
            raise ValueError(f"difficulty={difficulty!r}: expected one of "
                             f"{sorted(DIFFICULTY_PRESETS)} or a float in [0, 1]")
        level = DIFFICULTY_PRESETS[difficulty]
    else:
        level = float(difficulty)
        if not 0.0 <= level <= 1.0:
            raise ValueError(f"difficulty={difficulty!r}: a float must lie in [0, 1]")
    return Difficulty(level=level, **{k: _lerp(_EASY[k], _HARD[k], level) for k in _EASY})


def check_prevalence(prevalence: dict[str, float] | None) -> np.ndarray:
    """(K,) prevalences in FINDINGS order; ``None`` gives the defaults; missing keys keep defaults."""
    p = dict(DEFAULT_PREVALENCE)
    if prevalence is not None:
        for k, val in prevalence.items():
            if k not in FINDINGS:
                raise ValueError(f"prevalence: unknown finding {k!r}; expected a subset of {FINDINGS}")
            if not (isinstance(val, (int, float, np.floating)) and 0.0 <= float(val) <= 1.0):
                raise ValueError(f"prevalence[{k!r}]={val!r}: expected a probability in [0, 1]")
            p[k] = float(val)
    return np.array([p[k] for k in FINDINGS], dtype=np.float64)


_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (a bijection on uint64 with good avalanche)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def hash_uniform(seed: int, index, stream: int) -> np.ndarray:
    """Uniform [0, 1) numbers keyed by ``(seed, index, stream)``; vectorised over ``index``."""
    idx = np.asarray(index, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        z = _mix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * _GOLD + np.uint64(stream + 1))
        z = _mix64(z ^ (idx * _GOLD + np.uint64(0x632BE59BD9B4E019)))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / 2 ** 53)


def finding_labels(seed: int, index, prevalence: np.ndarray) -> np.ndarray:
    """(N, K) float32 0/1 labels of images ``index`` (int or array); no rendering involved."""
    idx = np.atleast_1d(np.asarray(index, dtype=np.int64))
    u = hash_uniform(seed, idx[:, None] * len(FINDINGS) + np.arange(len(FINDINGS)), 0)
    return (u < prevalence).astype(np.float32)


def _place(a: Anatomy, heart, draws: np.ndarray, margin: float, side: float):
    """First of the candidate points (from ``draws`` (n, 2) uniforms) at least ``margin`` inside the
    lung of ``side`` and outside the heart; the deepest candidate if none qualifies."""
    x = 0.08 + draws[:, 0] * (a.lung_w - 0.08)
    v = a.apex_v + draws[:, 1] * (a.base_v - a.apex_v)
    u = x * side
    s, _ = lung_depth(a, u, v)
    ok = (s > margin) & (heart_quad(heart, u, v) > 1.15)
    i = int(np.argmax(ok)) if ok.any() else int(np.argmax(s))
    return float(u[i]), float(v[i])


def sample_findings(a: Anatomy, labels: np.ndarray, rng: np.random.Generator, diff: Difficulty,
                    ap_mag: float = 1.0) -> dict:
    """Shape parameters for every finding (drawn for all, used for the positive ones), plus the
    image's cardiothoracic ratio ``ctr`` and heart ellipse ``heart`` (see ``heart_geometry``)."""
    U = rng.random((len(FINDINGS), 8))
    lo, hi = diff.ctr_pos
    ctr = lo + (hi - lo) * U[3, 0] if labels[3] else a.ctr
    heart = heart_geometry(a, ctr, ap_mag)
    nod_draw, mass_draw = rng.random((32, 2)), rng.random((32, 2))
    lo, hi = diff.nodule_r
    r = lo + (hi - lo) * U[0, 0]
    side = 1.0 if U[0, 1] < 0.5 else -1.0
    out = {"nodule": dict(r=r, center=_place(a, heart, nod_draw, r + 0.01, side),
                          density=diff.nodule_density * (0.8 + 0.4 * U[0, 2]))}
    lo, hi = diff.mass_r
    R = lo + (hi - lo) * U[1, 0]
    side = 1.0 if U[1, 1] < 0.5 else -1.0
    out["mass"] = dict(R=R, center=_place(a, heart, mass_draw, 0.5 * R, side),
                       lumps=U[1, 2:8].reshape(3, 2), cm=diff.mass_cm)
    lo, hi = diff.effusion_h
    kind = U[2, 1]  # < 0.35 right, < 0.7 left, else bilateral
    out["effusion"] = dict(h=(lo + (hi - lo) * U[2, 0], lo + (hi - lo) * U[2, 2]),
                           sides=(kind < 0.35 or kind >= 0.7, kind >= 0.35))
    out["cardiomegaly"] = dict(ctr=ctr)
    lo, hi = diff.ptx_depth
    apical = U[4, 1] < 0.5
    reach = (0.3 + 0.2 * U[4, 2]) if apical else (0.6 + 0.25 * U[4, 2])
    out["pneumothorax"] = dict(depth=lo + (hi - lo) * U[4, 0], side=1.0 if U[4, 3] < 0.5 else -1.0,
                               v_end=a.apex_v + reach * (a.base_v - a.apex_v),
                               line_cm=diff.ptx_line_cm, apical=bool(apical))
    out["heart"], out["ctr"] = heart, ctr
    return out


def finding_maps(a: Anatomy, labels: np.ndarray, params: dict, u: np.ndarray, v: np.ndarray,
                 s: np.ndarray, d_lat: np.ndarray, heart_q: np.ndarray, pix: float) -> dict:
    """Maps of the positive findings on the (S, S) grid.

    Returns ``soft`` (cm of soft tissue added inside the lung), ``fluid`` (share of the lung space
    filled by fluid), ``parenchyma`` (share of the lung tissue and vessels still there; 0 in a
    pneumothorax, where the space holds pure air) and ``masks`` (K, S, S) bool.
    """
    S = u.shape
    soft = np.zeros(S, np.float32)
    fluid = np.zeros(S, np.float32)
    parenchyma = np.ones(S, np.float32)
    masks = np.zeros((len(FINDINGS),) + S, dtype=bool)
    in_lung = s > 0
    if labels[0]:
        p = params["nodule"]
        d2 = (u - p["center"][0]) ** 2 + (v - p["center"][1]) ** 2
        r = p["r"]
        soft += (2 * CM_PER_UNIT * p["density"]) * np.sqrt(np.maximum(r * r - d2, 0.0))
        masks[0] = d2 < max(r, 0.75 * pix) ** 2
    if labels[1]:
        p = params["mass"]
        cu, cv = p["center"]
        R = p["R"]
        dens = np.zeros(S, np.float32)
        for (ou, sg) in p["lumps"]:
            # lumps spread over half the radius, widths 0.35-0.65 R
            du, dv = u - (cu + (ou - 0.5) * R), v - (cv + (sg - 0.5) * 0.6 * R)
            dens += np.exp(-(du * du + dv * dv) / (2 * (R * (0.35 + 0.3 * sg)) ** 2))
        dens = np.minimum(dens / max(float(dens.max()), 1e-6), 1.0) * np.clip(s / 0.02, 0.0, 1.0)
        # air bronchograms: two thin dark lines through the patch, pointing at the hilum
        ang = np.arctan2(cv - a.hilum[1], abs(cu) - a.hilum[0])
        bron = np.zeros(S, np.float32)
        for da in (-0.25, 0.2):
            nx, ny = -np.sin(ang + da), np.cos(ang + da)
            d = (np.abs(u) - abs(cu)) * nx + (v - cv) * ny
            bron += np.exp(-(d / max(0.008, 0.5 * pix)) ** 2)
        soft += p["cm"] * dens * (1.0 - 0.6 * np.minimum(bron, 1.0))
        masks[1] = dens > 0.35
    if labels[2]:
        p = params["effusion"]
        x = np.abs(u)
        h = np.where(u > 0, p["h"][1], p["h"][0])
        on = np.where(u > 0, p["sides"][1], p["sides"][0])
        # meniscus: the fluid climbs the lateral chest wall
        level = a.base_v - h * (0.35 + 0.65 * np.clip(x / a.lung_w, 0.0, 1.0) ** 2)
        f = np.clip((v - level) / 0.04, 0.0, 1.0) * on
        fluid = 0.95 * f
        masks[2] = (f > 0.5) & in_lung
    if labels[4]:
        p = params["pneumothorax"]
        on_side = (u * p["side"]) > 0
        depth = p["depth"] * np.clip((p["v_end"] - v) / 0.15, 0.0, 1.0) * on_side
        rim = (d_lat < depth) & in_lung
        parenchyma = np.where(rim, 0.0, 1.0).astype(np.float32)
        w = max(0.006, 0.5 * pix)
        soft += p["line_cm"] * np.exp(-((d_lat - depth) / w) ** 2) * ((depth > 0.004) & in_lung)
        masks[4] = ((d_lat < depth + w) & in_lung & (depth > 0)) | rim
    if labels[3]:
        masks[3] = heart_q < 1.0
    return dict(soft=soft, fluid=fluid, parenchyma=parenchyma, masks=masks)

"""Procedural chest radiographs: the kit's embedded default dataset (no download).

One image is a pure function of ``(seed, index, size, difficulty, prevalence, images_per_patient)``:

- the patient ``index // images_per_patient`` fixes the anatomy (:mod:`phantom_anatomy`), so several
  images share a patient and splits can be patient-disjoint;
- the labels come from a counter-based hash (:func:`phantom_findings.finding_labels`), cheap enough
  to label two billion images lazily;
- findings (:mod:`phantom_findings`) and nuisances (pose, AP/PA view, body habitus, kVp, exposure,
  scatter, blur, windowing, gamma, edge enhancement, collimation, side marker) each have their own
  generator seeded by ``(seed, index, stream)``.

Imaging chain (per pixel, attenuation domain)::

    A = mu_s t_body - (mu_s - mu_l k) t_lung (1 - f) + (mu_s - mu_l) (t_vessel k (1 - f) + t_find)
        + (mu_b - mu_s) t_bone - mu_s t_airway
    I = exp(-A);  I_s = I + c * lowpass(I)                        (scatter)
    I_n = blur(I_s + sqrt(I_s / N0 + e^2) * n),  n ~ N(0, 1)       (quantum + electronic noise)
    L = -log(I_n);  y = clip((L - lo) / (hi - lo), 0, 1) ** gamma  (window from percentiles, display)

with ``k`` the lung parenchyma kept (0 in a pneumothorax) and ``f`` the fluid share (effusion).
The percentile window normalises every image, so findings that add density do not leak through the
global brightness (audited by ``benchmarks/phantom_calibration.py``).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.ndimage import gaussian_filter

from .phantom_anatomy import (Anatomy, airway_thickness, body_thickness, bone_thickness,
                              heart_geometry, heart_quad, lung_depth, pose_grid, sample_anatomy,
                              vessel_thickness)
from .phantom_findings import (FINDINGS, Difficulty, check_prevalence, difficulty_params,
                               finding_labels, finding_maps, sample_findings)

MU_SOFT = 0.20  # effective attenuation near 60 keV, 1/cm
MIN_SIZE, MAX_SIZE = 64, 512
_STREAM_ANATOMY, _STREAM_NUISANCE, _STREAM_FINDINGS = 0, 1, 2


def check_size(size: int) -> int:
    if not isinstance(size, (int, np.integer)) or not MIN_SIZE <= int(size) <= MAX_SIZE:
        raise ValueError(f"image_size={size!r}: expected an integer in [{MIN_SIZE}, {MAX_SIZE}]")
    return int(size)


@dataclass(frozen=True)
class Nuisance:
    """Label-independent acquisition and display settings of one image."""

    rot: float
    shift: tuple[float, float]
    scale: float
    ap_mag: float        # 1 for PA; AP films magnify the heart 6-14 %
    mu_bone: float       # varies with kVp
    mu_lung: float       # inspiration / lung density
    body_scale: float
    breast_cm: float
    counts: float        # photons per pixel at 128 px in unattenuated beam
    electronic: float
    scatter: float
    blur: float          # detector blur sigma in anatomy units
    gamma: float
    window: tuple[float, float]
    unsharp: float
    collimation: tuple[float, float, float, float]
    marker: int          # corner 0-3, or -1 for none


def sample_nuisance(rng: np.random.Generator, strength: float) -> Nuisance:
    """Draw a nuisance from 24 uniforms (a fixed count, so later draws stay aligned)."""
    U = rng.random(24).tolist()  # python floats: numpy float64 scalars would upcast the maps
    n = strength
    ap = U[3] < 0.25
    coll = [c * 0.08 * (U[20] < 0.3 * n) for c in U[16:20]]
    return Nuisance(
        rot=(U[0] - 0.5) * 0.14 * n, shift=((U[1] - 0.5) * 0.1 * n, (U[2] - 0.5) * 0.1 * n),
        scale=float(np.exp((U[4] - 0.6) * 0.16 * n)), ap_mag=1.06 + 0.08 * U[5] if ap else 1.0,
        mu_bone=0.38 + 0.22 * U[6], mu_lung=0.05 + (U[7] - 0.5) * 0.03 * n,
        body_scale=float(np.exp((U[8] - 0.5) * 0.25 * n)),
        breast_cm=(U[9] * 4.0 * n) if U[10] < 0.5 else 0.0,
        counts=float(10 ** (4.9 - 1.0 * n * U[11])), electronic=0.002 * U[12] * n,
        scatter=0.05 + 0.3 * U[13] * n, blur=0.003 + 0.007 * U[14],
        gamma=float(np.exp((U[15] - 0.5) * 0.5 * n)),
        window=(0.01 * U[21] * n, 1.0 - 0.02 * U[22] * n),
        unsharp=0.6 * U[23] * n if U[3] > 0.6 else 0.0,
        collimation=tuple(float(c) for c in coll), marker=int(U[20] * 8) if U[20] < 0.5 else -1,
    )


@lru_cache(maxsize=8)
def _lowpass_ops(size: int, m: int = 16):
    """(D, U): Gaussian downsampling S->m and linear upsampling m->S, so U D X D^T U^T is a cheap
    low-pass of an (S, S) image (scatter and unsharp masking) at O(m S^2) cost."""
    x = (np.arange(size) + 0.5) / size
    c = (np.arange(m) + 0.5) / m
    D = np.exp(-0.5 * ((x[None, :] - c[:, None]) * m) ** 2)
    D[D < 1e-6] = 0.0  # no float32 denormals: they make the matmuls ~1000x slower
    D /= D.sum(1, keepdims=True)
    Up = np.maximum(0.0, 1.0 - np.abs(x[:, None] - c[None, :]) * m)
    Up /= Up.sum(1, keepdims=True)
    return D.astype(np.float32), Up.astype(np.float32)


def _lowpass(img: np.ndarray) -> np.ndarray:
    D, Up = _lowpass_ops(img.shape[0])
    return Up @ (D @ img @ D.T) @ Up.T


_ANATOMY_CACHE: OrderedDict = OrderedDict()


def patient_anatomy(seed: int, patient: int) -> Anatomy:
    """The anatomy of patient ``patient`` (small LRU cache: images of a patient are consecutive)."""
    key = (seed, patient)
    a = _ANATOMY_CACHE.get(key)
    if a is None:
        a = sample_anatomy(np.random.default_rng([seed, patient, _STREAM_ANATOMY]))
        _ANATOMY_CACHE[key] = a
        if len(_ANATOMY_CACHE) > 64:
            _ANATOMY_CACHE.popitem(last=False)
    return a


def render(seed: int, index: int, size: int = 128, difficulty: str | float = "default",
           prevalence: dict[str, float] | None = None, images_per_patient: int = 1,
           anatomy: bool = False):
    """Render image ``index`` of the phantom stream ``seed``.

    Returns ``(image, masks, labels)``: image float32 (S, S) in [0, 1], masks bool (K, S, S) in
    ``FINDINGS`` order (all False for absent findings), labels float32 (K,). With ``anatomy=True`` a
    fourth item, a dict, holds the anatomy masks ``lung``, ``heart`` (bool (S, S)), the true
    ``ctr`` (before AP magnification), ``view`` ("PA"/"AP") and the finding parameters.
    """
    size = check_size(size)
    diff = difficulty if isinstance(difficulty, Difficulty) else difficulty_params(difficulty)
    prev = check_prevalence(prevalence) if not isinstance(prevalence, np.ndarray) else prevalence
    if images_per_patient < 1:
        raise ValueError(f"images_per_patient={images_per_patient!r}: expected an integer >= 1")
    labels = finding_labels(seed, index, prev)[0]
    a = patient_anatomy(seed, index // images_per_patient)
    nrng = np.random.default_rng([seed, index, _STREAM_NUISANCE])
    nz = sample_nuisance(nrng, diff.nuisance)
    frng = np.random.default_rng([seed, index, _STREAM_FINDINGS])
    fparams = sample_findings(a, labels, frng, diff, nz.ap_mag)
    heart, ctr = fparams["heart"], fparams["ctr"]

    u, v, pix = pose_grid(size, nz.rot, nz.shift, nz.scale)
    s, d_lat = lung_depth(a, u, v)
    q = heart_quad(heart, u, v)
    fm = finding_maps(a, labels, fparams, u, v, s, d_lat, q, pix)
    t_heart = 12.0 * np.sqrt(np.maximum(1.0 - q, 0.0))
    lung_frac = np.sqrt(np.clip(s * (1.0 / 0.1), 0.0, 1.0))
    t_lung = np.maximum(a.lung_cm * lung_frac - 1.1 * t_heart, 0.0) * (1.0 - fm["fluid"])
    keep = fm["parenchyma"]
    inside = s > 0  # vessels only matter inside the lungs: evaluate them there (~1/3 of pixels)
    t_vessel = np.zeros_like(u)
    t_vessel[inside] = vessel_thickness(a, u[inside], v[inside])
    t_vessel *= lung_frac * keep * (1.0 - fm["fluid"])
    t_body = body_thickness(a, u, v) * nz.body_scale
    if nz.breast_cm > 0:  # label-free extra density over the lower zones
        bx = (np.abs(u) - 0.6 * a.lung_w) / 0.3
        by = (v - a.base_v + 0.2) / 0.2
        t_body = t_body + nz.breast_cm * np.maximum(1.0 - bx * bx - by * by, 0.0)
    dmu = MU_SOFT - nz.mu_lung
    A = (MU_SOFT * t_body - (MU_SOFT - nz.mu_lung * keep) * t_lung
         + dmu * (t_vessel + fm["soft"])
         + (nz.mu_bone - MU_SOFT) * bone_thickness(a, u, v, d_lat)
         - MU_SOFT * airway_thickness(a, u, v) * (t_body > 1.0))
    img = _acquire(np.maximum(A, 0.0).astype(np.float32), nz, nrng, size)
    out = (img, fm["masks"], labels)
    if anatomy:
        info = dict(lung=(s > 0) & (q >= 1.0), heart=q < 1.0, ctr=ctr,
                    view="AP" if nz.ap_mag > 1.0 else "PA", ap_magnification=nz.ap_mag,
                    findings={k: fparams[k] for k, on in zip(FINDINGS, labels) if on})
        out = out + (info,)
    return out


#: The factors :func:`image_factors` reports: name -> what it is (the drawing's own parameters).
FACTORS: dict[str, str] = {
    "shift_x": "patient position, left-right (image x shift)",
    "shift_y": "patient position, up-down (image y shift)",
    "rotation": "patient rotation in the image plane (radians, signed)",
    "magnification": "zoom of the whole film",
    "body_size": "body width/thickness scale",
    "ap_view": "1 for an AP film (heart magnified 6-14 %), 0 for PA",
    "dose": "photon count (log10): high = less quantum noise",
    "bone_contrast": "bone attenuation (kVp): high = brighter ribs",
    "inspiration": "lung density (inspiration depth): high = denser lungs",
    "gamma": "display gamma",
    "marker": "1 when a lead side marker is burnt in",
    "marker_right": "1 when the marker is in a right-hand corner, 0 left, NaN without marker",
    "collimation": "1 when shutters cut a border",
    "heart_size": "the patient's normal cardiothoracic ratio (before any cardiomegaly)",
    "lung_width": "the patient's lung half-width",
}


def image_factors(seed: int, index: int, difficulty: str | float = "default",
                  images_per_patient: int = 1) -> dict[str, float]:
    """The label-free factors the phantom drew for image ``index`` of stream ``seed``
    (:data:`FACTORS`), without rendering: the same draws :func:`render` makes."""
    diff = difficulty if isinstance(difficulty, Difficulty) else difficulty_params(difficulty)
    a = patient_anatomy(seed, index // images_per_patient)
    nz = sample_nuisance(np.random.default_rng([seed, index, _STREAM_NUISANCE]), diff.nuisance)
    return {"shift_x": nz.shift[0], "shift_y": nz.shift[1], "rotation": nz.rot,
            "magnification": nz.scale, "body_size": nz.body_scale,
            "ap_view": float(nz.ap_mag > 1.0), "dose": float(np.log10(nz.counts)),
            "bone_contrast": nz.mu_bone, "inspiration": nz.mu_lung, "gamma": nz.gamma,
            "marker": float(nz.marker >= 0),
            "marker_right": float(nz.marker % 2) if nz.marker >= 0 else float("nan"),
            "collimation": float(any(c > 0 for c in nz.collimation)),
            "heart_size": a.ctr, "lung_width": a.lung_w}


def _acquire(A: np.ndarray, nz: Nuisance, rng: np.random.Generator, size: int) -> np.ndarray:
    """Detector and display chain: scatter, noise, blur, -log, percentile window, gamma, extras."""
    I = np.exp(-A)
    I = I + nz.scatter * _lowpass(I)
    counts = nz.counts * (128.0 / size) ** 2  # fixed dose per area: smaller pixels, more noise
    noise = rng.standard_normal(I.shape, dtype=np.float32)
    I = I + np.sqrt(I * (1.0 / counts) + nz.electronic ** 2) * noise
    sigma = nz.blur * size / 2.0
    if sigma > 0.3:
        I = gaussian_filter(I, sigma, truncate=2.5)
    L = -np.log(np.maximum(I, 1e-4))
    sub = L[::2, ::2].ravel() if size >= 128 else L.ravel()
    ks = [int(q * (sub.size - 1)) for q in (0.005, 0.3, 0.998)]
    part = np.partition(sub, ks)
    # black point half-way from the air to the 30th percentile (aerated lung in most films), as CR
    # processing does: the air is clipped and the lungs get more of the grey range
    lo, hi = 0.5 * float(part[ks[0]] + part[ks[1]]), float(part[ks[2]])
    span = max(hi - lo, 1e-3)
    lo, hi = lo + nz.window[0] * span, lo + nz.window[1] * span
    y = np.clip((L - lo) * (1.0 / (hi - lo)), 0.0, 1.0) ** nz.gamma
    if nz.unsharp > 0:  # CR-style edge enhancement
        y = np.clip(y + nz.unsharp * (y - _lowpass(y)), 0.0, 1.0)
    t, b, l_, r = (int(round(c * size)) for c in nz.collimation)
    if t or b or l_ or r:  # shuttered borders show as unexposed (white)
        y[:t] = 1.0
        y[size - b:] = 1.0
        y[:, :l_] = 1.0
        y[:, size - r:] = 1.0
    if nz.marker >= 0:  # a lead side marker: a bright "L" in one corner
        m = max(3, size // 20)
        r0 = size // 16 if nz.marker < 2 else size - size // 16 - m
        c0 = size // 16 if nz.marker % 2 == 0 else size - size // 16 - m
        y[r0:r0 + m, c0:c0 + max(1, m // 4)] = 1.0
        y[r0 + m - max(1, m // 4):r0 + m, c0:c0 + m * 2 // 3] = 1.0
    return y.astype(np.float32, copy=False)


_MASK_COLOURS = ("#ff3b30", "#ffcc00", "#34c7ff", "#ff2dff", "#4cd964")


def sample_grid(path: str | None = None, rows: int = 3, cols: int = 6, size: int = 160,
                seed: int = 0, difficulty: str | float = "default", dpi: int = 72):
    """A figure of ``rows x cols`` phantom images with their finding masks outlined (colour per
    finding, legend on top); saved to ``path`` if given. Returns the matplotlib figure."""
    import matplotlib.pyplot as plt  # plotting stays optional for the generator itself
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.0 * rows + 0.4))
    for i, ax in enumerate(np.atleast_1d(axes).flat):
        img, masks, labels, info = render(seed, i, size, difficulty, anatomy=True)
        ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        for k in np.flatnonzero(labels):
            ax.contour(masks[k], levels=[0.5], colors=_MASK_COLOURS[k], linewidths=0.7)
        names = ",".join(FINDINGS[k][:4] for k in np.flatnonzero(labels)) or "normal"
        ax.set_title(f"#{i} {info['view']}: {names}", fontsize=6.5)
        ax.axis("off")
    handles = [Line2D([], [], color=c, label=f) for f, c in zip(FINDINGS, _MASK_COLOURS)]
    fig.legend(handles=handles, loc="upper center", ncol=len(FINDINGS), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig

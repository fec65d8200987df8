"""Normal chest anatomy of the synthetic radiograph, as projected-thickness maps.

Geometry. Every structure is an analytic function of *anatomy coordinates* ``(u, v)``: before the
per-image pose, the frame spans ``[-1, 1]`` in both directions, ``u`` grows to the image right (the
patient's left in a PA film) and ``v`` grows downward. One unit is ``CM_PER_UNIT`` cm, so a frame is
about 40 cm wide. The pose (rotation, shift, magnification) only changes the map from pixels to
``(u, v)`` (see :func:`pose_grid`), so anatomy, findings and masks stay aligned for free.

Physics. Each structure returns a projected thickness ``t_k(u, v)`` in cm of its material (ellipsoids
project to ``2c sqrt(1 - (x/a)^2 - (y/b)^2)``, tubes to ring profiles); the renderer forms the line
integral ``A = sum_k mu_k t_k`` and ``I = exp(-A)``. Lungs are expressed as *air replacing soft tissue*
inside the body outline, so they subtract ``(mu_soft - mu_lung) t_lung`` from ``A``.

Both lungs are evaluated in one pass with the mirrored coordinate ``x = |u|`` (0 at the midline,
growing laterally); the few left/right differences (dome height, aortic knob, heart) enter through
``np.where(u > 0, left, right)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

CM_PER_UNIT = 20.0

#: Angular and radial resolution of the per-patient vessel field (per lung).
_VESSEL_NT, _VESSEL_NR = 96, 24


@dataclass(frozen=True)
class Anatomy:
    """Per-patient anatomy (all lengths in anatomy units, thicknesses in cm)."""

    body_w: float        # half-width of the body at the lung bases
    shoulder_w: float    # half-width over the shoulders
    body_cm: float       # antero-posterior body thickness at the midline
    lung_w: float        # lateral lung wall (inner rib margin) at the widest level
    apex_v: float        # lung apices
    base_v: float        # costophrenic angles
    dome_v: tuple[float, float]  # dome apex height (right lung, left lung); right is higher
    med_w: float         # half-width of the upper mediastinum
    knob: float          # aortic knob bulge into the left lung
    lung_cm: float       # maximal lung (air) thickness
    ctr: float           # normal cardiothoracic ratio of this patient
    heart_aspect: float  # heart minor/major axis
    heart_tilt: float    # radians, long axis down to the patient's left
    heart_gap: float     # right heart border lies this far right of the mediastinum
    spine_w: float
    vert_period: float
    rib_top: float
    rib_h: float
    rib_n: float
    rib_a1: float
    rib_a2: float
    rib_w: float         # share of one rib period covered by a rib
    rib_side: float      # small left/right vertical offset of the rib cage
    clav_v: float
    clav_len: float
    hilum: tuple[float, float]  # (x, v) of the hila
    carina_v: float
    vessel_field: np.ndarray    # (2 * _VESSEL_NT, _VESSEL_NR) float32, unit std


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient's anatomy; normal ranges follow the textbook proportions of a PA film."""
    U = rng.uniform
    body_w = U(0.80, 0.92)
    lung_w = body_w - U(0.06, 0.10)
    apex_v = U(-0.80, -0.68)
    base_v = U(0.32, 0.52)          # inspiration depth
    dome_r = base_v - U(0.16, 0.26)
    dome_l = dome_r + U(0.02, 0.08)
    field = rng.standard_normal((2 * _VESSEL_NT, _VESSEL_NR)).astype(np.float32)
    # long radial correlation makes the ridges run away from the hilum like vessels
    field = gaussian_filter(field, sigma=(1.5, 2.5), mode=("wrap", "nearest"))
    field /= field.std() + 1e-6
    return Anatomy(
        body_w=body_w, shoulder_w=body_w + U(0.02, 0.10), body_cm=U(19.0, 26.0), lung_w=lung_w,
        apex_v=apex_v, base_v=base_v, dome_v=(dome_r, dome_l), med_w=U(0.07, 0.10),
        knob=U(0.02, 0.05), lung_cm=U(13.0, 17.0), ctr=U(0.39, 0.47),
        heart_aspect=U(0.72, 0.86), heart_tilt=U(0.35, 0.6), heart_gap=U(0.01, 0.05),
        spine_w=U(0.06, 0.075), vert_period=U(0.085, 0.1),
        rib_top=apex_v - U(0.02, 0.08), rib_h=U(1.05, 1.25), rib_n=U(11.0, 12.5),
        rib_a1=U(0.2, 0.35), rib_a2=U(0.5, 0.7), rib_w=U(0.38, 0.5), rib_side=U(-0.02, 0.02),
        clav_v=apex_v + U(-0.04, 0.04), clav_len=U(0.5, 0.6),
        hilum=(U(0.17, 0.22), U(-0.15, -0.05)), carina_v=U(-0.3, -0.2), vessel_field=field,
    )


def pose_grid(size: int, rot: float, shift: tuple[float, float], scale: float):
    """Anatomy coordinates of the pixel centres: (u, v) float32 (S, S) and the pixel size in units.

    Pixel centre ``(x, y)`` in ``[-1, 1]`` maps to ``(u, v) = R(-rot) ((x, y) - shift) / scale``.
    """
    c = ((np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0)
    x = (c - shift[0])[None, :]
    y = (c - shift[1])[:, None]
    cr, sr = np.cos(rot) / scale, np.sin(rot) / scale
    u = (cr * x + sr * y).astype(np.float32)
    v = (-sr * x + cr * y).astype(np.float32)
    return u, v, 2.0 / size / scale


def _sqrt_pos(a: np.ndarray) -> np.ndarray:
    return np.sqrt(np.maximum(a, 0.0))


def body_thickness(a: Anatomy, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Soft tissue (cm): an elliptic cross-section whose half-width B(v) runs neck -> shoulders -> chest."""
    shoulders = 1.0 / (1.0 + np.exp((a.apex_v - 0.06 - v) * 30.0))
    chest = 1.0 / (1.0 + np.exp((a.apex_v + 0.25 - v) * 12.0))
    half = 0.2 + (a.shoulder_w - 0.2) * shoulders - (a.shoulder_w - a.body_w) * chest
    return a.body_cm * (0.55 + 0.45 * shoulders) * _sqrt_pos(1.0 - (u / half) ** 2)


def lung_depth(a: Anatomy, u: np.ndarray, v: np.ndarray):
    """How far inside the lung fields a point lies (units; negative outside), heart not included.

    Returns ``(s, d_lat)``: ``s = min(d_lat, d_base, d_med)`` with ``d_lat`` the depth below the
    lateral/apical wall (an ellipse quadrant centred at ``0.35 lung_w`` on the base level, vertical
    below it), ``d_base`` the height above the diaphragm dome and ``d_med`` the distance from the
    mediastinum. The dome reaches the lateral wall at ``base_v`` at a steep slope, which gives the
    sharp costophrenic angle.
    """
    x = np.abs(u)
    xc = 0.35 * a.lung_w
    al = a.lung_w - xc
    b = a.base_v - a.apex_v
    dv = np.minimum(v - a.base_v, 0.0)
    d_lat = (1.0 - np.sqrt(((x - xc) / al) ** 2 + (dv / b) ** 2)) * al
    dome_apex = np.where(u > 0, a.dome_v[1], a.dome_v[0])
    xd = 0.45 * a.lung_w
    t = (x - xd) / (a.lung_w - xd)
    dome = dome_apex + (a.base_v - dome_apex) * t * t * np.where(t > 0, 1.0, 0.6)
    med = a.med_w + np.where(u > 0, a.knob * np.exp(-((v + 0.32) / 0.07) ** 2), 0.0)
    s = np.minimum(np.minimum(d_lat, dome - v), x - med)
    return s, d_lat


def heart_geometry(a: Anatomy, ctr: float, magnification: float = 1.0):
    """Heart ellipse ``(uc, vc, semi-major, semi-minor, tilt)`` whose width is ``ctr * 2 lung_w``.

    The horizontal half-extent of a tilted ellipse is ``e_x = sqrt(A^2 cos^2 t + B^2 sin^2 t)``; we
    solve it for ``A`` so that the cardiothoracic ratio (heart width / inner thoracic width) equals
    ``ctr`` before the AP ``magnification``. The right border sits ``heart_gap`` right of the
    mediastinum, the lower edge on the left dome.
    """
    ex = ctr * a.lung_w
    k = np.sqrt(np.cos(a.heart_tilt) ** 2 + (a.heart_aspect * np.sin(a.heart_tilt)) ** 2)
    major = ex / k * magnification
    minor = major * a.heart_aspect
    ex *= magnification
    ey = np.sqrt((major * np.sin(a.heart_tilt)) ** 2 + (minor * np.cos(a.heart_tilt)) ** 2)
    uc = ex - a.med_w - a.heart_gap
    vc = a.dome_v[1] + 0.04 - 0.55 * ey
    return uc, vc, major, minor, a.heart_tilt


def heart_quad(geom, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Quadratic form q of the heart ellipse: q < 1 inside."""
    uc, vc, major, minor, tilt = geom
    du, dv = u - uc, v - vc
    c, s = np.cos(tilt), np.sin(tilt)
    return ((c * du + s * dv) / major) ** 2 + ((-s * du + c * dv) / minor) ** 2


def _ring(z: np.ndarray) -> np.ndarray:
    """Projected wall of a tube of outer radius 1 and inner radius 0.65 (cortical bone)."""
    return _sqrt_pos(1.0 - z * z) - _sqrt_pos(0.4225 - z * z)


def bone_thickness(a: Anatomy, u: np.ndarray, v: np.ndarray, d_lat: np.ndarray,
                   ap_ribs: float = 0.45) -> np.ndarray:
    """Cortical-bone-equivalent thickness (cm) of spine, posterior and anterior ribs and clavicles.

    Ribs are generated all at once through a *rib phase* ``p(x, v)``: posterior rib k is the set where
    ``p`` lies in ``[k, k + rib_w]`` with ``p = n ((v - g(x) - top) / H)^0.9`` and ``g(x) = a2 x^2 -
    a1 x`` (arcs convex upward, curving down laterally); the exponent widens the lower interspaces.
    Anterior ribs use a second phase that descends medially and fades out over the cartilages.
    """
    x = np.abs(u)
    side = np.where(u > 0, a.rib_side, -a.rib_side)
    # spine: cylinder with vertebral bodies modulated along v
    spine = 1.6 * _sqrt_pos(1.0 - (u / a.spine_w) ** 2) * (
        0.8 + 0.2 * np.cos(v * (2 * np.pi / a.vert_period)))
    cage = (d_lat > -0.03) & (x > 0.7 * a.spine_w)
    y = np.maximum(v - a.rib_top - side - (a.rib_a2 * x * x - a.rib_a1 * x), 0.0) / a.rib_h
    p = a.rib_n * y ** 0.9
    z = ((p - np.floor(p)) - 0.5 * a.rib_w) * (2.0 / a.rib_w)
    # the lowest ribs fade out behind the upper abdomen instead of ending on one line
    fade = np.clip(a.rib_n - p, 0.0, 1.0) * (1.0 - 0.6 * np.clip((v - a.base_v) * 8.0, 0.0, 1.0))
    post = _ring(z) * fade * cage
    ya = np.maximum(v - a.rib_top - 0.12 - side - 0.45 * (a.lung_w - x), 0.0)
    pa = a.rib_n * 0.85 * (ya / a.rib_h)
    za = ((pa - np.floor(pa)) - 0.5 * a.rib_w) * (2.0 / a.rib_w)
    ant = _ring(za) * (cage & (pa < 6.5)) * np.clip((x - 0.3 * a.lung_w) / 0.15, 0.0, 1.0)
    # clavicles: S-shaped tubes from the manubrium to the acromion
    vc = a.clav_v + 0.12 - 0.16 * x + 0.025 * np.sin(x * (2 * np.pi / 0.5))
    clav = _ring((v - vc) / 0.028) * ((x > 0.05) & (x < a.clav_len))
    return spine + 1.1 * post + ap_ribs * ant + 1.2 * clav


def airway_thickness(a: Anatomy, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Air (cm) in trachea and main bronchi: tubes from the neck to the carina, then to each hilum."""
    tw = 0.03
    trachea = 2.2 * _sqrt_pos(1.0 - (u / tw) ** 2) * np.clip((a.carina_v - v) / 0.03, 0.0, 1.0)
    # main bronchus: segment carina (0, carina_v) -> hilum (hx, hv), distance via projection
    hx, hv = a.hilum
    dx, dy = hx, hv - a.carina_v
    L2 = dx * dx + dy * dy
    x = np.abs(u)
    tpar = np.clip((x * dx + (v - a.carina_v) * dy) / L2, 0.0, 1.0)
    d = np.sqrt((x - tpar * dx) ** 2 + (v - a.carina_v - tpar * dy) ** 2)
    bronchi = 1.5 * _sqrt_pos(1.0 - (d / 0.022) ** 2) * (v > a.carina_v)
    return trachea + bronchi


def vessel_thickness(a: Anatomy, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Soft tissue (cm) of the pulmonary vessel tree plus the hilar shadows, before lung masking.

    Vessels are the ridges ``exp(-(F/w)^2)`` of a smooth per-patient random field ``F`` sampled in
    polar coordinates around each hilum. Because ``F`` is correlated much longer along the radius
    than across it, the ridges run outward like vessels and join or split where the field's zero
    lines meet. (Sampling the angle more finely with growing radius bends the ridges into spirals.)
    Calibre and density decay with the distance from the hilum.
    """
    hx, hv = a.hilum
    dx = np.abs(u) - hx
    dy = v - hv
    r = np.sqrt(dx * dx + dy * dy)
    th = np.arctan2(dy, dx) * (1.0 / (2 * np.pi)) + 0.5
    rn = np.minimum(r * (1.0 / 0.9), 0.999) * (_VESSEL_NR - 1)
    tn = th * _VESSEL_NT
    i0 = np.floor(tn).astype(np.int32)
    j0 = rn.astype(np.int32)
    wt = tn - i0
    wr = rn - j0
    off = np.where(u > 0, _VESSEL_NT, 0).astype(np.int32)
    f = a.vessel_field
    ia = (i0 % _VESSEL_NT) + off
    ib = ((i0 + 1) % _VESSEL_NT) + off
    field = ((1 - wt) * ((1 - wr) * f[ia, j0] + wr * f[ia, j0 + 1])
             + wt * ((1 - wr) * f[ib, j0] + wr * f[ib, j0 + 1]))
    ridge = np.exp(-(field * (1.0 / 0.22)) ** 2)
    hilar = np.exp(-(dx * dx + dy * dy) * (1.0 / (2 * 0.045 ** 2)))
    return (2.2 * ridge * np.exp(-r * (1.0 / 0.45)) + 4.0 * hilar).astype(np.float32)

"""Figures that compare encoders side by side (the notebooks, ``mlvicx evaluate``, the results
report; matplotlib only). One picture, one function: each caller draws with the same one.

Every function draws one figure and returns it (the notebook shows it; ``fig.savefig`` keeps it):

- :func:`plot_umap_grid`: UMAP panels (rows: encoders, columns: embedding kinds), one colouring
  (a single panel is the evaluation's UMAP picture).
- :func:`plot_fraction_curves`: AUROC vs label fraction per encoder, one panel per task or
  dataset, with bootstrap CIs (one run) or the spread over seeds.
- :func:`plot_cam_grid`: Grad-CAM overlays (:func:`overlay`), rows images, columns taps, findings
  or methods, true lesion outlined.
- :func:`plot_pointing`: pointing-game hit rate per tap and encoder against the chance level.
- :func:`plot_sweep`: one bar (with CI) per sweep point.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

#: smallest font on a figure meant for a projector (panel titles, tick labels, legends)
FONT = 11
#: the colour map of every Grad-CAM overlay (:func:`overlay`)
CAM_CMAP = "jet"


def _plt():
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` (folders made), close it, return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    _plt().close(fig)
    return path


def category_labels(values) -> pd.Series:
    """Legend labels of a colouring: a 0/1 finding reads ``absent`` / ``present``, anything else
    (sex, view position) its own value as text; unknown (NaN) stays NaN."""
    values = pd.Series(np.asarray(values)).reset_index(drop=True)
    if pd.api.types.is_numeric_dtype(values) and set(values.dropna().unique()) <= {0, 1}:
        return values.map({0: "absent", 1: "present"})
    return values.map(lambda v: v if pd.isna(v) else str(v))


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.4,
            cmap: str = CAM_CMAP) -> np.ndarray:
    """RGB (H, W, 3) float in [0, 1]: the grey image as shown (0 black, 1 white) under the heatmap.

    ``image`` is (H, W) or (1, H, W) in [0, 1] (the kit's intensity contract; anything outside is an
    error rather than silently rescaled); ``cam`` is (H, W) in [0, 1].
    """
    import matplotlib

    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3 and img.shape[0] == 1:
        img = img[0]
    cam = np.asarray(cam, dtype=np.float32)
    if img.ndim != 2 or cam.shape != img.shape:
        raise ValueError(f"image {img.shape} and cam {cam.shape}: expected one shape (H, W)")
    if img.min() < 0 or img.max() > 1:
        raise ValueError(f"image values in [{img.min():.3g}, {img.max():.3g}]: expected [0, 1]")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha={alpha}: expected a value in [0, 1]")
    heat = matplotlib.colormaps[cmap](np.clip(cam, 0, 1))[..., :3]
    return (1 - alpha) * np.repeat(img[..., None], 3, axis=2) + alpha * heat


def cam_colourbar(fig, axes, label: str = "Grad-CAM") -> None:
    """One colour bar for Grad-CAM overlays drawn with :data:`CAM_CMAP` on ``axes`` (each map is
    scaled to [0, 1], 1 at its peak)."""
    import matplotlib as mpl

    sm = mpl.cm.ScalarMappable(norm=mpl.colors.Normalize(0, 1), cmap=CAM_CMAP)
    bar = fig.colorbar(sm, ax=axes, fraction=0.025, pad=0.02, ticks=[0, 0.5, 1])
    bar.ax.set_yticklabels(["0", "0.5", "1 peak"])
    bar.set_label(label, fontsize=FONT)
    bar.ax.tick_params(labelsize=FONT - 1)


def _scatter(ax, coords: np.ndarray, values: pd.Series, title: str) -> None:
    values = pd.Series(np.asarray(values))
    numeric = pd.api.types.is_numeric_dtype(values) and values.nunique(dropna=True) > 2
    if numeric:
        sc = ax.scatter(coords[:, 0], coords[:, 1], c=values, s=6, cmap="viridis")
        ax.figure.colorbar(sc, ax=ax, shrink=0.7)
    else:
        labels = category_labels(values)
        order = sorted(labels.dropna().unique(), key=lambda v: (v != "absent", str(v)))
        for k, v in enumerate(order):
            sel = (labels == v).to_numpy()
            ax.scatter(coords[sel, 0], coords[sel, 1], s=6, color=f"C{k}", label=str(v))
        if labels.isna().any():
            sel = labels.isna().to_numpy()
            ax.scatter(coords[sel, 0], coords[sel, 1], s=6, color="lightgrey", label="unknown")
        ax.legend(fontsize=FONT - 1, markerscale=2, loc="best")
    ax.set_title(title, fontsize=FONT + 1)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_umap_grid(panels: dict[tuple[str, str], np.ndarray | None], values: pd.Series,
                   colour_by: str):
    """``panels[(encoder, kind)]`` = (N, 2) UMAP coordinates or ``None`` (kind not available)."""
    plt = _plt()
    rows = list(dict.fromkeys(r for r, _ in panels))
    cols = list(dict.fromkeys(c for _, c in panels))
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(4 * len(cols), 3.6 * len(rows)),
                             squeeze=False, constrained_layout=True)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            ax = axes[i, j]
            coords = panels.get((r, c))
            if coords is None:
                ax.text(0.5, 0.5, f"{r} has no\n{c} embedding", ha="center", va="center")
                ax.set_axis_off()
                continue
            _scatter(ax, coords, values, f"{r}: {c}")
    fig.suptitle(f"UMAP coloured by {colour_by}", fontsize=FONT + 2)
    return fig


def plot_fraction_curves(results: str | Path | pd.DataFrame, finding: str = "mean",
                         panel: str = "task", over_seeds: bool = False, order=None):
    """AUROC (``finding``, default the mean over findings) vs label fraction: one panel per value
    of ``panel`` (``"task"`` or ``"dataset"``, in ``order`` when given), one line per encoder.

    ``results``: a results CSV or its rows (``mlvicx_core.evaluation.report.ROW_COLUMNS``). Bars:
    each row's 95 % bootstrap CI, or with ``over_seeds`` the mean and the standard deviation over
    the seeds of each (panel, encoder, fraction).
    """
    plt = _plt()
    df = results if isinstance(results, pd.DataFrame) else pd.read_csv(results)
    df = df[(df["finding"] == finding) & (df["metric"] == "auroc") & np.isfinite(df["value"])]
    if over_seeds:
        g = df.groupby([panel, "encoder", "fraction"], sort=False)["value"]
        df = pd.DataFrame({"value": g.mean(), "sd": g.std(ddof=1).fillna(0.0)}).reset_index()
        df["ci_low"], df["ci_high"] = df["value"] - df["sd"], df["value"] + df["sd"]
    names = [p for p in (order or dict.fromkeys(df[panel])) if p in set(df[panel])] or ["(none)"]
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.8), squeeze=False,
                             sharey=True, constrained_layout=True)
    for ax, name in zip(axes[0], names):
        d = df[df[panel] == name]
        for k, (enc, e) in enumerate(d.groupby("encoder", sort=False)):
            e = e.sort_values("fraction")
            x = e["fraction"].to_numpy() * (1 + 0.04 * (k - 1))  # small offset: bars stay readable
            ax.errorbar(x, e["value"], yerr=[e["value"] - e["ci_low"], e["ci_high"] - e["value"]],
                        marker="o", capsize=3, label=enc)
        ax.axhline(0.5, color="grey", lw=0.8, ls=":", label="chance")
        ax.set_xscale("log")
        fractions = sorted(set(d["fraction"]))
        ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
        ax.minorticks_off()
        ax.set_xlabel("label fraction (of training patients)", fontsize=FONT)
        ax.set_title(name, fontsize=FONT + 1)
        ax.tick_params(labelsize=FONT - 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=FONT - 1)
    # a fixed top at 1 and a bottom at or below chance: the scale does not magnify small gaps
    low = float(np.nanmin(df["ci_low"])) if len(df) else 0.5
    axes[0, 0].set_ylim(min(0.45, low - 0.02), 1.0)
    spread = "mean ± std over seeds" if over_seeds else "95 % bootstrap CI"
    axes[0, 0].set_ylabel(f"test AUROC ({finding}; {spread})", fontsize=FONT)
    return fig


def plot_cam_grid(images: np.ndarray, cams: dict[str, np.ndarray], regions: np.ndarray | None,
                  title: str = "", row_titles: list[str] | None = None):
    """Rows: images (N, H, W); columns: the image, then one Grad-CAM overlay per entry of ``cams``
    (taps, findings or methods), each map's peak marked with a cross.

    ``cams[name]`` is (N, H, W) in [0, 1]; ``regions`` (N, H, W) bool outlines the true lesion;
    ``row_titles`` label the rows.
    """
    plt = _plt()
    taps = list(cams)
    images = np.clip(np.asarray(images, dtype=np.float32), 0, 1)
    n = len(images)
    fig, axes = plt.subplots(n, len(taps) + 1, figsize=(2.3 * (len(taps) + 1) + 0.8, 2.3 * n + 0.6),
                             squeeze=False, constrained_layout=True)
    for i in range(n):
        if row_titles is not None:
            axes[i, 0].set_ylabel(row_titles[i], fontsize=FONT - 1)
        panels = [("image", images[i])] + [(t, overlay(images[i], cams[t][i])) for t in taps]
        for j, (name, pic) in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(np.clip(pic, 0, 1), cmap="gray" if pic.ndim == 2 else None, vmin=0, vmax=1,
                      interpolation="nearest")
            if regions is not None and regions[i].any():
                ax.contour(regions[i], levels=[0.5], colors="w", linewidths=0.8)
            if j > 0:
                peak = np.unravel_index(np.argmax(cams[name][i]), cams[name][i].shape)
                ax.plot(peak[1], peak[0], "w+", ms=8)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(str(name), fontsize=FONT + 1)
    cam_colourbar(fig, axes)
    fig.suptitle(title, fontsize=FONT + 2)
    return fig


def plot_pointing(table: pd.DataFrame):
    """Bars: pointing-game hit rate per tap (x) and encoder (colour), one panel per finding; the
    dashed line is the hit rate of a uniform (uninformative) map."""
    plt = _plt()
    findings = list(dict.fromkeys(table["finding"]))
    encoders = list(dict.fromkeys(table["encoder"]))
    taps = list(dict.fromkeys(table["tap"]))
    fig, axes = plt.subplots(1, len(findings), figsize=(3.6 * len(findings), 3.6), squeeze=False,
                             sharey=True, constrained_layout=True)
    width = 0.8 / max(len(encoders), 1)
    for ax, f in zip(axes[0], findings):
        d = table[table["finding"] == f]
        for k, enc in enumerate(encoders):
            e = d[d["encoder"] == enc].set_index("tap").reindex(taps)
            ax.bar(np.arange(len(taps)) + k * width, e["pointing_game"], width, label=enc)
        ax.axhline(float(d["chance_pointing"].mean()), color="k", ls="--", lw=0.8,
                   label="chance (uniform map)")
        ax.set_xticks(np.arange(len(taps)) + width * (len(encoders) - 1) / 2)
        ax.set_xticklabels(taps, rotation=45, fontsize=FONT)
        ax.tick_params(axis="y", labelsize=FONT - 1)
        ax.set_title(f"{f} (n={int(d['n'].max())})", fontsize=FONT + 1)
    axes[0, 0].set_ylim(0, 1)
    axes[0, 0].set_ylabel("pointing-game hit rate", fontsize=FONT)
    axes[0, 0].legend(fontsize=FONT - 1)
    return fig


def plot_sweep(table: pd.DataFrame, fraction: float | None = None):
    """Horizontal bars with 95 % CIs: the mean AUROC of every sweep point (one task, one fraction).

    The axis runs from 0 to 1 with chance (0.5) marked, so a bar's length is its AUROC and small
    differences between points look as small as they are.
    """
    plt = _plt()
    d = table if fraction is None else table[np.isclose(table["fraction"], fraction)]
    d = d.reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(d) + 1.2), constrained_layout=True)
    y = np.arange(len(d))
    ax.barh(y, d["value"], xerr=[d["value"] - d["ci_low"], d["ci_high"] - d["value"]],
            capsize=3, color=[f"C{k}" for k in range(len(d))])
    ax.set_yticks(y)
    ax.set_yticklabels([f"{p} ({t}, {f:g})" for p, t, f in
                        zip(d["point"], d["task"], d["fraction"])], fontsize=FONT)
    ax.axvline(0.5, color="grey", ls=":", label="chance")
    ax.set_xlabel("mean AUROC (95 % bootstrap CI)", fontsize=FONT)
    ax.tick_params(axis="x", labelsize=FONT - 1)
    ax.set_xlim(0.0, 1.0)
    ax.legend(fontsize=FONT - 1, loc="lower right")
    return fig

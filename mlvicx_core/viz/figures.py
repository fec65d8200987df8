"""Figures that compare encoders side by side (the notebooks, ``mlvicx evaluate``; matplotlib only).

Every function draws one figure and returns it (the notebook shows it; ``fig.savefig`` keeps it):

- :func:`plot_umap_grid`: UMAP panels (rows: encoders, columns: embedding kinds), one colouring.
- :func:`plot_fraction_curves`: AUROC vs label fraction with bootstrap CIs, per task and encoder.
- :func:`plot_cam_grid`: Grad-CAM overlays, rows images, columns taps, true lesion outlined.
- :func:`plot_pointing`: pointing-game hit rate per tap and encoder against the chance level.
- :func:`plot_sweep`: one bar (with CI) per sweep point.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..evaluation.umap_view import category_labels

#: smallest font on a figure meant for a projector (panel titles, tick labels, legends)
FONT = 11
#: the colour map of every Grad-CAM overlay (:func:`~mlvicx_core.evaluation.gradcam.overlay`)
CAM_CMAP = "jet"


def _plt():
    import matplotlib.pyplot as plt

    return plt


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


def plot_fraction_curves(results_csv: str | Path, finding: str = "mean"):
    """AUROC (``finding``, default the mean over findings) vs label fraction, 95 % bootstrap CI."""
    plt = _plt()
    df = pd.read_csv(results_csv)
    df = df[(df["finding"] == finding) & (df["metric"] == "auroc")].copy()
    tasks = list(dict.fromkeys(df["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.8), squeeze=False,
                             sharey=True, constrained_layout=True)
    for ax, task in zip(axes[0], tasks):
        d = df[df["task"] == task]
        for k, (enc, e) in enumerate(d.groupby("encoder", sort=False)):
            e = e.sort_values("fraction")
            x = e["fraction"].to_numpy() * (1 + 0.04 * (k - 1))  # small offset: CIs stay readable
            ax.errorbar(x, e["value"], yerr=[e["value"] - e["ci_low"], e["ci_high"] - e["value"]],
                        marker="o", capsize=3, label=enc)
        ax.axhline(0.5, color="grey", lw=0.8, ls=":", label="chance")
        ax.set_xscale("log")
        ax.set_xlabel("label fraction (of training patients)", fontsize=FONT)
        ax.set_title(task, fontsize=FONT + 1)
        ax.tick_params(labelsize=FONT - 1)
        ax.legend(fontsize=FONT - 1)
    # a fixed top at 1 and a bottom at or below chance: the scale does not magnify small gaps
    low = float(np.nanmin(df["ci_low"])) if len(df) else 0.5
    axes[0, 0].set_ylim(min(0.45, low - 0.02), 1.0)
    axes[0, 0].set_ylabel(f"AUROC ({finding})", fontsize=FONT)
    return fig


def plot_cam_grid(images: np.ndarray, cams: dict[str, np.ndarray], regions: np.ndarray | None,
                  title: str = ""):
    """Rows: images (N, H, W); columns: the image, then one Grad-CAM overlay per tap.

    ``cams[tap]`` is (N, H, W) in [0, 1]; ``regions`` (N, H, W) bool outlines the true lesion.
    """
    from ..evaluation.gradcam import overlay

    plt = _plt()
    taps = list(cams)
    n = len(images)
    fig, axes = plt.subplots(n, len(taps) + 1, figsize=(2.3 * (len(taps) + 1) + 0.8, 2.3 * n + 0.6),
                             squeeze=False, constrained_layout=True)
    for i in range(n):
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
                ax.set_title(name, fontsize=FONT + 1)
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

"""The training-curve figure: loss terms per branch and the collapse diagnostics, from metrics.jsonl.

Layout (2 x 3): total loss per branch; invariance; variance; covariance (log scale); per-dimension std
(min and mean); effective rank and mean |off-diagonal correlation|. Global branch solid, multi-level
branch dashed. Uses the Agg backend, so it works without a display.
"""
from __future__ import annotations

from pathlib import Path

from .metrics import read_metrics


def plot_training(run_dir_or_metrics: str | Path, out: str | Path | None = None) -> Path:
    """Draw the figure for a run and save it (default ``<run_dir>/training.png``); returns the path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    src = Path(run_dir_or_metrics)
    run_dir = src if src.is_dir() else src.parent
    df = read_metrics(src)
    out = Path(out) if out is not None else run_dir / "training.png"
    branches = [b for b in ("global", "multi") if f"{b}/loss" in df]
    style = {"global": "-", "multi": "--"}

    fig, axes = plt.subplots(2, 3, figsize=(13, 7), constrained_layout=True)
    panels = [("loss", "weighted loss"), ("invariance", "invariance s"),
              ("variance", "variance v (hinge)"), ("covariance", "covariance c")]
    for ax, (term, title) in zip(axes.flat[:4], panels):
        for b in branches:
            d = df[["step", f"{b}/{term}"]].dropna()
            ax.plot(d["step"], d[f"{b}/{term}"], style[b], label=b)
        if term == "loss" and "loss" in df:
            d = df[["step", "loss"]].dropna()
            ax.plot(d["step"], d["loss"], color="k", lw=1, label="total")
        if term == "covariance":
            ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)

    ax_std, ax_rank = axes.flat[4], axes.flat[5]
    ax_corr = ax_rank.twinx()
    for b in branches:
        key = f"diag/{b}/std_min"
        if key not in df:
            continue
        d = df[["step", key, f"diag/{b}/std_mean", f"diag/{b}/eff_rank",
                f"diag/{b}/corr_offdiag"]].dropna()
        ax_std.plot(d["step"], d[key], style[b], marker=".", label=f"{b} min")
        ax_std.plot(d["step"], d[f"diag/{b}/std_mean"], style[b], marker=".", alpha=0.5,
                    label=f"{b} mean")
        ax_rank.plot(d["step"], d[f"diag/{b}/eff_rank"], style[b], marker=".", color="C0",
                     label=f"{b} eff. rank")
        ax_corr.plot(d["step"], d[f"diag/{b}/corr_offdiag"], style[b], marker=".", color="C3",
                     label=f"{b} |corr|")
    ax_std.axhline(1.0, color="grey", lw=0.8)
    ax_std.set_title("per-dimension std (target >= 1)")
    ax_std.set_xlabel("step")
    ax_std.legend(fontsize=8)
    ax_rank.set_title("effective rank (blue), mean |off-diag corr| (red)")
    ax_rank.set_xlabel("step")
    ax_rank.set_ylabel("effective rank", color="C0")
    ax_corr.set_ylabel("mean |corr|", color="C3")
    fig.suptitle(f"pretraining: {run_dir.name}")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

"""Figures of pretraining runs, from their ``metrics.jsonl`` (matplotlib only).

- :func:`plot_training`: the run's summary figure (``training.png``), described below.
- :func:`show_views`: source images and the two augmented views the loss compares.
- :func:`plot_loss_terms`: each loss term over training, weighted as it enters the loss.
- :func:`plot_collapse`: collapse diagnostics of several runs on shared axes.
- :func:`plot_learning_curves`, :func:`plot_online_probe`: the online probe over steps (runs and
  seeds, or one run's read-outs).
- :func:`plot_probe_comparison`: the held-out probe of encoders side by side (the demo).
- :func:`plot_collapse_demo`: the collapse toy's curves.

The run's method (``model.method`` in its ``config.yaml``; ``mlvicx_core.methods``) says which heads
and terms there are, so every method gets its own panels.

``plot_training``: the total loss per head; one panel per term of the method (covariance-like terms
on a symmetric log scale); per-dimension std (min and mean); effective rank and mean |off-diagonal
correlation|; the online probe's held-out mean AUROC (linear and kNN read-outs, with the random-init
level of step 0 as a dashed line; empty when ``train.eval_every`` was 0); the learning rate. Global
head solid, multi-level head dashed. Uses the Agg backend, so it works without a display.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..methods import Method, get_method
from ..train.metrics_log import read_metrics

STYLE = {"global": "-", "multi": "--"}


def run_method(run_dir: str | Path) -> Method:
    """The method a run folder trained: ``model.method`` of its ``config.yaml``."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected a run folder written by mlvicx "
                                "pretrain (its config.yaml names the method)")
    return get_method((yaml.safe_load(path.read_text()).get("model") or {}).get("method", "mlvicx"))


def plot_training(run_dir_or_metrics: str | Path, out: str | Path | None = None,
                  held_out: dict | None = None) -> Path:
    """Draw the figure for a run and save it (default ``<run_dir>/training.png``); returns the path.
    ``held_out``: the final held-out probe per encoder, drawn beside the online probe
    (:func:`plot_online_probe`)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    src = Path(run_dir_or_metrics)
    run_dir = src if src.is_dir() else src.parent
    df = read_metrics(src)
    method = run_method(run_dir)
    out = Path(out) if out is not None else run_dir / "training.png"
    heads = [h for h in method.heads if f"{h}/loss" in df]

    n_panels = 1 + len(method.terms) + 4
    cols = math.ceil(n_panels / 2)
    fig, axes = plt.subplots(2, cols, figsize=(4.3 * cols, 7), constrained_layout=True)
    for ax, term in zip(axes.flat, ("loss", *method.terms)):
        for h in heads:
            d = df[["step", f"{h}/{term}"]].dropna()
            ax.plot(d["step"], d[f"{h}/{term}"], STYLE[h], label=h)
        if term == "loss" and "loss" in df:
            d = df[["step", "loss"]].dropna()
            ax.plot(d["step"], d["loss"], color="k", lw=1, label="total")
        if "covariance" in term or "off_diagonal" in term:
            ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_title("weighted loss" if term == "loss" else f"{term} (unweighted)")
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    rest = list(axes.flat[1 + len(method.terms):])
    for ax in rest[4:]:
        ax.set_axis_off()
    ax_std, ax_rank = rest[0], rest[1]
    plot_online_probe(df, rest[2], held_out)
    ax_lr = rest[3]
    if "lr" in df:
        d = df[["step", "lr"]].dropna()
        ax_lr.plot(d["step"], d["lr"], "k")
    ax_lr.set_title("learning rate")
    ax_lr.set_xlabel("step")
    ax_corr = ax_rank.twinx()
    for b in heads:
        key = f"diag/{b}/std_min"
        if key not in df:
            continue
        d = df[["step", key, f"diag/{b}/std_mean", f"diag/{b}/eff_rank",
                f"diag/{b}/corr_offdiag"]].dropna()
        ax_std.plot(d["step"], d[key], STYLE[b], marker=".", label=f"{b} min")
        ax_std.plot(d["step"], d[f"diag/{b}/std_mean"], STYLE[b], marker=".", alpha=0.5,
                    label=f"{b} mean")
        ax_rank.plot(d["step"], d[f"diag/{b}/eff_rank"], STYLE[b], marker=".", color="C0",
                     label=f"{b} eff. rank")
        ax_corr.plot(d["step"], d[f"diag/{b}/corr_offdiag"], STYLE[b], marker=".", color="C3",
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


def _plt():
    import matplotlib.pyplot as plt

    return plt


def show_views(images, view_a, view_b, n: int = 6):
    """Rows: source image, view 1, view 2; columns: the first ``n`` images (tensors (B, 1, S, S))."""
    plt = _plt()
    n = min(n, len(images))
    fig, axes = plt.subplots(3, n, figsize=(1.8 * n, 5.6), squeeze=False)
    for row, (name, batch) in enumerate((("image", images), ("view 1", view_a),
                                         ("view 2", view_b))):
        for j in range(n):
            ax = axes[row, j]
            ax.imshow(np.asarray(batch[j, 0]), cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name)
    fig.tight_layout()
    return fig



def plot_loss_terms(run_dir: str | Path, weights: dict[str, float] | None = None,
                    lam: float | None = None):
    """Each term of each head over training, multiplied by the weight it enters the loss with (its
    share of the loss), then the total.

    The weights are the method's (``Method.weights`` of the run's ``loss.*``); ``weights``
    (``{"invariance": 25, ...}``, one per term) and ``lam`` (the multi-level head's factor)
    replace them where given.
    """
    import yaml

    from ..config import LossConfig

    plt = _plt()
    df = read_metrics(run_dir)
    method = run_method(run_dir)
    saved = yaml.safe_load((Path(run_dir) / "config.yaml").read_text()).get("loss") or {}
    factor = method.weights(LossConfig(**saved))
    heads = [h for h in method.heads if f"{h}/loss" in df]
    fig, axes = plt.subplots(1, len(method.terms) + 1, figsize=(3.8 * (len(method.terms) + 1), 3.4),
                             constrained_layout=True)
    for ax, term in zip(axes, method.terms):
        for h in heads:
            scale = factor[f"{h}/{term}"]
            if weights is not None:
                scale = weights[term] * (lam if h == "multi" and lam is not None else 1.0)
            d = df[["step", f"{h}/{term}"]].dropna()
            ax.plot(d["step"], scale * d[f"{h}/{term}"], STYLE[h], label=f"{h} x {scale:g}")
        ax.set_title(term)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    d = df[["step", "loss"]].dropna()
    axes[-1].plot(d["step"], d["loss"], "k")
    axes[-1].set_title("total loss")
    axes[-1].set_xlabel("step")
    return fig



def plot_collapse(runs: dict[str, str | Path], branch: str = "global"):
    """Diagnostics of several runs (``{label: run_dir}``): the first term of each run's method
    (VICReg's invariance), std min/mean, rank, |corr|."""
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4), constrained_layout=True)
    firsts = []
    for k, (label, run_dir) in enumerate(runs.items()):
        df = read_metrics(run_dir)
        colour = f"C{k}"
        first = run_method(run_dir).terms[0]
        firsts.append(first)
        d = df[["step", f"{branch}/{first}"]].dropna()
        axes[0].plot(d["step"], d[f"{branch}/{first}"], color=colour, label=label)
        keys = [f"diag/{branch}/{m}" for m in ("std_min", "std_mean", "eff_rank", "corr_offdiag")]
        d = df[["step", *keys]].dropna()
        axes[1].plot(d["step"], d[keys[0]], "--", marker=".", color=colour, label=f"{label} min")
        axes[1].plot(d["step"], d[keys[1]], "-", marker=".", color=colour, label=f"{label} mean")
        axes[2].plot(d["step"], d[keys[2]], marker=".", color=colour, label=label)
        axes[3].plot(d["step"], d[keys[3]], marker=".", color=colour, label=label)
    first = ("invariance s (mean squared distance of the views)"
             if set(firsts) == {"invariance"} else " / ".join(dict.fromkeys(firsts)))
    titles = [first, "per-dimension std", "effective rank", "mean |off-diagonal correlation|"]
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    axes[1].axhline(1.0, color="grey", lw=0.8)
    axes[0].set_yscale("log")
    return fig


def plot_learning_curves(ax, curves, line: str, value: str, styles: dict | None = None,
                         labels=None, start: str = "each") -> None:
    """Online-probe read-outs over pretraining steps on ``ax``, one line per value of ``line``.

    ``curves``: rows of (``line``, ``step``, ``value``); several rows per step (seeds) draw their
    mean with the range shaded, or, where the rows carry ``low`` and ``high`` (a bootstrap
    interval), that band. The random-init level (step 0) is a dashed line: one per line in its
    colour (``start="each"``), or one black line at the mean of all (``"all"``). ``styles`` and
    ``labels`` (a function of the line's name) set each line's style and legend text.
    """
    styles = styles or {}
    for k, (name, g) in enumerate(curves.groupby(line, sort=False)):
        s = g.groupby("step")[value].agg(["mean", "min", "max"])
        colour = f"C{k}"
        ax.plot(s.index, s["mean"], styles.get(name, "-"), marker=".", color=colour,
                label=labels(name) if labels else str(name))
        if {"low", "high"} <= set(g.columns) and g[["low", "high"]].notna().all().all():
            band = g.groupby("step")[["low", "high"]].mean()
            ax.fill_between(band.index, band["low"], band["high"], color=colour, alpha=0.15,
                            lw=0, label=f"{name}: 95 % interval")
        elif (s["min"] < s["max"]).any():
            ax.fill_between(s.index, s["min"], s["max"], color=colour, alpha=0.15)
        if start == "each" and 0 in s.index:
            ax.axhline(float(s.loc[0, "mean"]), color=colour, ls="--", lw=0.9,
                       label=f"{name}: random init (step 0)")
    if start == "all":
        level = curves[curves["step"] == 0][value].mean()
        ax.axhline(level, color="k", ls="--", lw=1.2, label=f"random init ({level:.3f})")


def plot_online_probe(df, ax, held_out: dict | None = None) -> None:
    """The online probe's mean AUROC of one run (its metrics) over steps on ``ax``
    (:func:`plot_learning_curves`): linear (solid) and kNN (dotted) with their 95 % bootstrap
    bands over the score images (``mean_lo``/``mean_hi``, where recorded), the step-0 value
    (random init) as a dashed line of the same colour. ``held_out``: ``{encoder: (value, ci_low,
    ci_high)}`` of the held-out linear probe, drawn as points with their intervals just right of
    the last step (the final answer beside the running estimate)."""
    import pandas as pd

    parts, last = [], 0
    for readout in ("linear", "knn"):
        key = f"probe/{readout}/mean"
        d = df.dropna(subset=[key]) if key in df else []
        if not len(d):
            continue
        lo, hi = f"probe/{readout}/mean_lo", f"probe/{readout}/mean_hi"
        parts.append(pd.DataFrame({"readout": readout, "step": d["step"], "value": d[key],
                                   "low": d.get(lo, np.nan), "high": d.get(hi, np.nan)}))
        last = max(last, int(d["step"].max()))
    if parts:
        plot_learning_curves(ax, pd.concat(parts), "readout", "value",
                             styles={"linear": "-", "knn": ":"}, labels=lambda r: f"{r} read-out")
    if held_out:
        x0 = last * 1.04 + 1
        for j, (name, (v, lo, hi)) in enumerate(held_out.items()):
            ax.errorbar([x0 + j * max(last, 1) * 0.03], [v], yerr=[[v - lo], [hi - v]],
                        fmt="s" if "random" in name else "D", color="k" if "random" in name
                        else "C3", capsize=3, label=f"held-out probe, {name}")
    if not parts and not held_out:
        ax.text(0.5, 0.5, "online probe off\n(train.eval_every=0)", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_title("online probe: held-out mean AUROC")
    ax.set_xlabel("step")
    if parts or held_out:
        ax.legend(fontsize=7)


def plot_probe_comparison(results, out: str | Path, title: str = "held-out linear probe") -> Path:
    """Bars with 95 % bootstrap CIs: the held-out probe's mean and per-finding AUROC of each
    encoder in ``results`` (a results.csv path, a DataFrame or rows of one read-out: the demo's
    random init vs pretrained). Saved to ``out``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import pandas as pd

    plt = _plt()
    df = (pd.read_csv(results) if isinstance(results, (str, Path))
          else pd.DataFrame(results).copy())
    df = df[(df["task"] == "probe") & (df["metric"] == "auroc")]
    top = df["fraction"].max()
    df = df[df["fraction"] == top]
    findings = [f for f in dict.fromkeys(df["finding"]) if f != "mean"] + ["mean"]
    encoders = list(dict.fromkeys(df["encoder"]))
    fig, ax = plt.subplots(figsize=(1.3 * len(findings) + 2, 3.8), constrained_layout=True)
    width = 0.8 / max(len(encoders), 1)
    for k, enc in enumerate(encoders):
        e = df[df["encoder"] == enc].set_index("finding").reindex(findings)
        x = np.arange(len(findings)) + k * width
        ax.bar(x, e["value"] - 0.5, width, bottom=0.5, label=enc, color=f"C{k}",
               yerr=[e["value"] - e["ci_low"], e["ci_high"] - e["value"]], capsize=3)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xticks(np.arange(len(findings)) + width * (len(encoders) - 1) / 2, findings)
    ax.set_ylim(0.5, 1.0)
    ax.set_ylabel("test AUROC (linear probe)")
    ax.set_title(f"{title}: bars start at chance (0.5); 95 % bootstrap CIs")
    ax.legend(fontsize=9)
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_collapse_demo(frame):
    """The collapse toy (``mlvicx_core.experiments.collapse_toy.collapse_demo``): invariance,
    per-dimension std and effective rank over steps, one line per ``std_coeff``."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2), constrained_layout=True)
    for k, (std_coeff, d) in enumerate(frame.groupby("std_coeff", sort=False)):
        label = f"std_coeff={std_coeff:g}" + (" (no variance term)" if std_coeff == 0 else "")
        axes[0].plot(d["step"], d["invariance"], color=f"C{k}", label=label)
        axes[1].plot(d["step"], d["std_mean"], color=f"C{k}", label=f"{label}: mean")
        axes[1].plot(d["step"], d["std_min"], "--", color=f"C{k}", label=f"{label}: min")
        axes[2].plot(d["step"], d["eff_rank"], color=f"C{k}", label=label)
    for ax, title in zip(axes, ["invariance s", "per-dimension std", "effective rank"]):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    axes[0].set_yscale("log")
    axes[1].axhline(1.0, color="grey", lw=0.8)
    return fig

"""``RESULTS.md`` and its figures, written from the experiment's CSVs only (nothing hand-edited).

Inputs (in the experiment's ``out`` folder, see :mod:`.results`): ``results.csv`` (one row per
dataset x method x seed x task x fraction x finding x metric), ``runs.csv`` (one row per pretraining
run: steps, images, wall time, final loss), ``settings.json`` and ``gradcam_<dataset>.npz``.
Outputs (in ``report``): ``RESULTS.md``, ``figures/results_auroc.png``,
``figures/results_gradcam.png`` and copies of the two CSVs under ``results/``, with
``results/learning_curves.csv`` and ``results/paired_gains.csv`` (each pretrained encoder minus
random init of the same seed, paired on the test images, from ``scores/*.npz``).

Every number of the document is computed here from ``results.csv``: cells are ``mean ± std`` over
seeds (sample std, ``ddof=1``; a single seed shows the mean alone) with three decimals, so a test can
recompute them from the CSV. A comparison "A vs B" counts the (dataset, label fraction) cells where
both have a seed-mean; "beyond noise" means ``|difference| > 2 * sqrt(sA^2 / nA + sB^2 / nB)``.
"""
from __future__ import annotations

import json
import platform
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import apply_variant, from_dict
from ..methods import get_method
from ..viz.figures import plot_fraction_curves, save
from .results import ENCODERS

#: (A, B, question) pairs summarised in the closing statement.
COMPARISONS = [
    ("mlvicx", "vicreg", "multi-level regularisation over VICReg (the paper's claim)"),
    ("mlvicx", "barlow-twins", "MLVICX over another self-supervised method"),
    ("mlvicx", "random", "MLVICX pretraining over no pretraining"),
    ("vicreg", "random", "VICReg pretraining over no pretraining"),
    ("mlvicx", "mlvicx-no-cb", "context bottlenecks (MLVICX vs MLVICX without them)"),
    ("mlvicx", "mlvicx-frozen", "trained vs frozen lateral convs"),
]
CLAIM_GAIN = 0.03  # the paper's "more than 3 %", read as 0.03 AUROC


def fmt(values) -> str:
    """``mean ± std`` (ddof 1) of the finite values, three decimals; ``–`` when none."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return "–"
    return f"{v.mean():.3f}" if v.size == 1 else f"{v.mean():.3f} ± {v.std(ddof=1):.3f}"


def _methods(df: pd.DataFrame) -> list[str]:
    present = set(df["encoder"])
    return [m for m in ENCODERS if m in present]


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def probe_mean_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of the probe's mean AUROC (one per dataset x method x seed x fraction)."""
    m = df[(df.task == "probe") & (df.finding == "mean") & (df.metric == "auroc")]
    return m[np.isfinite(m.value)]


def seed_means(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and count over seeds of the mean AUROC per (dataset, fraction, method)."""
    g = probe_mean_rows(df).groupby(["dataset", "fraction", "encoder"]).value
    return pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1), "n": g.count()}).reset_index()


def compare(df: pd.DataFrame, a: str, b: str) -> dict | None:
    """A vs B over the (dataset, fraction) cells where both have values."""
    s = seed_means(df).set_index(["dataset", "fraction", "encoder"])
    cells = []
    for (ds, fr), _ in s.groupby(level=[0, 1]):
        if (ds, fr, a) in s.index and (ds, fr, b) in s.index:
            ra, rb = s.loc[(ds, fr, a)], s.loc[(ds, fr, b)]
            se = np.sqrt(np.nan_to_num(ra["std"]) ** 2 / ra["n"] + np.nan_to_num(rb["std"]) ** 2
                         / rb["n"])
            d = ra["mean"] - rb["mean"]
            cells.append({"dataset": ds, "fraction": fr, "diff": d,
                          "beyond": bool(ra["n"] > 1 and rb["n"] > 1 and abs(d) > 2 * se)})
    if not cells:
        return None
    d = np.array([c["diff"] for c in cells])
    return {"n": len(cells), "wins": int((d > 0).sum()), "mean": float(d.mean()),
            "min": float(d.min()), "max": float(d.max()),
            "claim": int((d > CLAIM_GAIN).sum()),
            "beyond_pos": sum(c["beyond"] and c["diff"] > 0 for c in cells),
            "beyond_neg": sum(c["beyond"] and c["diff"] < 0 for c in cells), "cells": cells}


def comparison_sentence(df: pd.DataFrame, a: str, b: str, what: str) -> str | None:
    c = compare(df, a, b)
    if c is None:
        return None
    return (f"**{a} vs {b}** ({what}): {a} had the higher mean AUROC in {c['wins']} of {c['n']} "
            f"dataset/fraction cells; mean difference {c['mean']:+.3f} (range {c['min']:+.3f} to "
            f"{c['max']:+.3f}); more than +{CLAIM_GAIN:.2f} in {c['claim']} of {c['n']}; beyond "
            f"seed noise (2 standard errors) in {a}'s favour in {c['beyond_pos']}, against it in "
            f"{c['beyond_neg']}.")


def low_fraction_sentence(df: pd.DataFrame) -> str | None:
    """Is the MLVICX - VICReg gap larger at the lowest label fraction than at 1.0?"""
    c = compare(df, "mlvicx", "vicreg")
    if c is None:
        return None
    low = [x for x in c["cells"] if x["fraction"] < 1]
    full = [x for x in c["cells"] if x["fraction"] == 1]
    if not low or not full:
        return None
    lo, hi = np.mean([x["diff"] for x in low]), np.mean([x["diff"] for x in full])
    verdict = "larger" if lo > hi else "not larger"
    return (f"**Low label fractions** (the paper: gains most visible there): mean MLVICX - VICReg "
            f"difference {lo:+.3f} over the {len(low)} cells below fraction 1.0 vs {hi:+.3f} over "
            f"the {len(full)} cells at 1.0, i.e. {verdict} at low fractions.")


def paired_gains(out: Path, df: pd.DataFrame, n_boot: int) -> pd.DataFrame:
    """Each pretrained encoder minus random init *of the same seed*, paired on the same test
    images (:func:`~mlvicx_core.evaluation.paired.paired_table`, ``n_boot`` resamples, bootstrap
    seed = the seed), per (dataset, linear-probe label fraction, encoder, seed), from
    ``scores/<dataset>-<encoder>-seed<k>.npz``. Empty when no scores were saved."""
    from ..evaluation.paired import paired_table
    from .results import load_test_scores

    parts = []
    for (ds, seed), _ in probe_mean_rows(df).groupby(["dataset", "seed"], sort=False):
        files = {enc: out / "scores" / f"{ds}-{enc}-seed{int(seed)}.npz" for enc in _methods(df)}
        scores = {enc: load_test_scores(f) for enc, f in files.items() if f.is_file()}
        if "random" not in scores or len(scores) < 2:
            continue
        t = paired_table(scores, "random", tasks=("probe",), n_boot=n_boot, seed=int(seed))
        parts.append(t.assign(dataset=ds, seed=int(seed)))
    columns = ["dataset", "fraction", "encoder", "seed", "diff", "ci_low", "ci_high"]
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts, ignore_index=True)[columns]


def seed_interval(diffs) -> tuple[float, float, float]:
    """Mean of per-seed differences and its 95 % t-interval over seeds (``t(0.975, n-1)``
    times the standard error); the interval is NaN with fewer than two seeds."""
    from scipy.stats import t

    v = np.asarray(diffs, dtype=float)
    m = float(v.mean())
    if v.size < 2:
        return m, float("nan"), float("nan")
    half = float(t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    return m, m - half, m + half


def gain_verdict(diffs) -> str:
    """How the per-seed differences sit relative to zero, by two rules: the 95 % t-interval over
    seeds (:func:`seed_interval`; with three seeds ``t = 4.30``, the strict reading) and the
    report's 2-standard-error rule (module docstring; what "beyond seed noise" means elsewhere in
    RESULTS.md)."""
    v = np.asarray(diffs, dtype=float)
    if v.size < 2:
        return "one seed: no seed interval"
    m, lo, hi = seed_interval(v)
    two_se = 2 * v.std(ddof=1) / np.sqrt(v.size)
    if lo > 0:
        return "above random init (t-interval above 0)"
    if hi < 0:
        return "below random init (t-interval below 0)"
    if m - two_se > 0:
        return "above by 2 SE; t-interval includes 0"
    if m + two_se < 0:
        return "below by 2 SE; t-interval includes 0"
    return "within seed noise"


def gains_section(gains: pd.DataFrame, seeds: list[int]) -> list[str]:
    """The report's paired-gain table: per-seed paired differences with their bootstrap CIs, the
    mean over seeds with its t-interval, and the verdict."""
    rows = []
    for (ds, fr, enc), g in gains.groupby(["dataset", "fraction", "encoder"], sort=False):
        per = {int(r.seed): f"{r.diff:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]"
               for r in g.itertuples()}
        _, lo, hi = seed_interval(g["diff"])
        rows.append([ds, f"{fr:g}", enc] + [per.get(s, "–") for s in seeds]
                    + [fmt(g["diff"]), f"[{lo:+.3f}, {hi:+.3f}]" if np.isfinite(lo) else "–",
                       gain_verdict(g["diff"])])
    return [
        "## Gain over random init, paired on the same test images", "",
        ("Each pretrained encoder minus the random-init trunk of the same seed (same network, "
         "same label subset, same probe), both scored on the same test images: the difference of "
         "the mean test AUROC with its paired 95 % bootstrap CI (`paired_auroc_difference`, the "
         "same test images resampled for both), per seed; then the mean over seeds with its 95 % "
         "t-interval (seed noise: pretraining seed, random-init seed and label subset all "
         "change). Data: `results/paired_gains.csv`."), "",
        _table(["dataset", "label fraction", "encoder"] + [f"seed {s}" for s in seeds]
               + ["mean ± std", "95 % t-interval over seeds", "verdict"], rows), ""]


def gradcam_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, finding, method): pointing game and energy (seed mean/std) and chance."""
    g = df[df.task == "gradcam"]
    return g.pivot_table(index=["dataset", "finding", "encoder", "seed"], columns="metric",
                         values="value").reset_index()


def localisation_sentences(df: pd.DataFrame) -> list[str]:
    g = gradcam_summary(df)
    out = []
    for ds in g.dataset.unique():
        d = g[g.dataset == ds]
        chance = d.groupby("finding").chance_pointing.mean().mean()
        parts = [f"{m} {d[d.encoder == m].groupby('finding').pointing_game.mean().mean():.3f}"
                 for m in _methods(d)]
        line = (f"**Grad-CAM pointing game, {ds}** (mean over findings and seeds; uniform-map chance "
                f"{chance:.3f}): " + ", ".join(parts) + ".")
        per = d.groupby(["finding", "encoder"]).pointing_game.mean().unstack()
        if {"mlvicx", "vicreg"} <= set(per.columns):
            wins = int((per["mlvicx"] > per["vicreg"]).sum())
            line += f" MLVICX pointed better than VICReg on {wins} of {len(per)} findings."
        n = d.groupby("finding").n.first().sum() if "n" in d else None
        out.append(line + (f" ({int(n)} images scored per encoder.)" if n is not None else ""))
    return out


def figure_gradcam(out: Path, path: Path, order: list[str]) -> list[str]:
    """Heatmaps side by side (:func:`~mlvicx_core.viz.figures.plot_cam_grid`): rows = images
    (dataset / finding), columns = the image, then one per method; the region outlined in white."""
    from ..viz.figures import plot_cam_grid, save

    images, regions, titles, maps = [], [], [], {}
    for ds in order:
        f = out / f"gradcam_{ds}.npz"
        if not f.is_file():
            continue
        with np.load(f) as z:
            for i, m in enumerate(z["methods"]):
                maps.setdefault(str(m), []).extend(z["maps"][i])
            images.extend(z["images"])
            regions.extend(z["regions"])
            titles.extend(f"{ds}\n{finding}" for finding in z["findings"])
    if not images:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(4, 1))
        fig.text(0.5, 0.5, "no localisation data", ha="center")
        save(fig, path)
        return []
    fig = plot_cam_grid(np.stack(images), {m: np.stack(v) for m, v in maps.items()},
                        np.stack(regions), row_titles=titles)
    save(fig, path)
    return [t.replace("\n", "/") for t in titles]


def learning_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """The online probe of every pretraining run (``metrics.jsonl`` of ``runs.run_dir``): one row
    per (dataset, encoder, seed, step) with the linear and kNN read-outs' mean AUROC."""
    rows = []
    for r in runs[runs.steps > 0].itertuples():
        path = Path(str(r.run_dir)) / "metrics.jsonl"
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a torn last line of a killed run
                continue
            if "probe/linear/mean" in rec:
                rows.append({"dataset": r.dataset, "encoder": r.encoder, "seed": r.seed,
                             "step": rec["step"], "linear": rec["probe/linear/mean"],
                             "knn": rec.get("probe/knn/mean", np.nan)})
    return pd.DataFrame(rows, columns=["dataset", "encoder", "seed", "step", "linear", "knn"])


def figure_learning_curves(curves: pd.DataFrame, path: Path, order: list[str]) -> bool:
    """Online-probe (ridge) mean AUROC vs step per method (mean and range over seeds), the
    random-init level (every run's step 0) as a dashed line; one panel per dataset
    (:func:`~mlvicx_core.viz.training.plot_learning_curves`)."""
    import matplotlib.pyplot as plt

    from ..viz.figures import save
    from ..viz.training import plot_learning_curves

    sets = [d for d in order if d in set(curves.dataset)]
    if not sets:
        return False
    fig, axes = plt.subplots(1, len(sets), figsize=(6.5 * len(sets), 4.2), squeeze=False,
                             constrained_layout=True)
    for ax, ds in zip(axes[0], sets):
        plot_learning_curves(ax, curves[curves.dataset == ds], "encoder", "linear", start="all")
        ax.set(xlabel="pretraining step", ylabel="online probe mean AUROC (held-out val)",
               title=f"{ds}: learning curves (mean, range over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
    save(fig, path)
    return True


def _setup(meta: dict, runs: pd.DataFrame) -> str:
    st = meta["settings"]
    c = st["config"]
    ev, opt, aug, cfg = c["eval"], c["optim"], c.get("aug", {}), c
    proj = "-".join(map(str, c["model"]["projector"]))
    warm = max(1, round(st["steps"] * opt["warmup_epochs"] / c["train"]["epochs"]))
    base = from_dict(c)
    methods = [f"`{e}`: {get_method(apply_variant(base, e).model.method).summary}"
               for e in st["encoders"] if e != "random"]
    lines = [
        (f"- Encoders: {', '.join(st['encoders'])}; all built from the `{st['preset']}` preset "
         f"(ResNet-18, {st['view_size']} px views"
         + (f" of radiographs stored and evaluated at {cfg['data']['stored_size']} px"
            if cfg.get("data", {}).get("stored_size") else "")
         + f", projectors {proj}, {opt['name']}, base lr "
         f"{opt['base_lr']:g} at batch 256); the variants are `mlvicx_core/variants.yaml`, their "
         f"methods `mlvicx_core/methods/` (`random`: the trunk at its seeded random init): "
         + "; ".join(methods) + "."),
        (f"- Views (`aug.*`): crops of {aug.get('crop_scale')} of the area, jitter p "
         f"{aug.get('jitter_p')}, blur p {aug.get('blur_p')}, solarize p {aug.get('solarize_p')}."),
        (f"- Budget per pretraining run (every encoder, dataset and seed): {st['steps']} optimizer "
         f"steps of batch {st['batch']} (= {st['steps'] * st['batch']} two-view image pairs), cosine "
         f"schedule over exactly those steps with {warm} warmup steps (the preset's share). "
         f"Scale {st['scale']} (`--scale` multiplies steps and data sizes)."),
        (f"- Seeds: {', '.join(map(str, st['seeds']))} (pretraining seed, random-init seed and "
         f"label-subset seed)."),
        (f"- Read-out (`mlvicx_core.evaluation.pipeline`): frozen `{ev['features']}` features "
         f"(context bottlenecks {'kept' if ev['keep_gates'] else 'dropped, as the released code transfers'}); "
         f"linear probe (one logistic regression per finding, C from {tuple(ev['probe_cs'])} "
         f"chosen on val, standardised features); test AUROC with {ev['n_boot']}-resample "
         f"percentile bootstrap 95 % CIs. Label fractions {tuple(ev['fractions'])} of the train "
         f"patients; a fraction leaving fewer than {ev['min_patients']} patients is skipped."),
        (f"- Grad-CAM of the full-label probe at `{ev['gradcam_tap']}` on positive test images "
         f"with a region (at most {ev['gradcam_images']} per finding); pointing game with "
         f"{ev['tolerance']:g} px tolerance, against the uniform-map chance."),
    ]
    rows = []
    for name, d in meta["datasets"].items():
        sch = d["schedule"]
        rows.append([name, d["title"], str(d["train"]), str(d["val"]), str(d["test"]),
                     str(d["train_patients"]), str(sch["images"]),
                     f"{sch['epochs']} x {sch['steps_per_epoch']}", str(d["localisation"])])
    lines.append("\n" + _table(["dataset", "what", "train", "val", "test", "train patients",
                                "pretraining images", "epochs x steps", "localisation images"],
                               rows))
    t = runs[runs.steps > 0].groupby("encoder").wall_s.agg(["mean", "min", "max"])
    trows = [[m, f"{r['mean']:.0f}", f"{r['min']:.0f}-{r['max']:.0f}"] for m, r in t.iterrows()]
    lines.append("\nWall time per pretraining run (s; CPU, threads "
                 f"{meta['threads']}):\n\n" + _table(["encoder", "mean", "range"],
                                                                       trows))
    lines.append(f"\nSum of the pretraining wall times: {runs.wall_s.sum() / 60:.1f} min over "
                 f"{int((runs.steps > 0).sum())} runs. Wall time of the invocation that wrote these "
                 f"CSVs: {meta['wall_s'] / 60:.1f} min (finished runs found in `--out` are reused, "
                 f"not re-timed) on {platform.machine()}, torch {torch.__version__}.")
    return "\n".join(lines)


def write_report(out: str | Path, report: str | Path, command: str) -> Path:
    out, report = Path(out), Path(report)
    df = pd.read_csv(out / "results.csv")
    runs = pd.read_csv(out / "runs.csv")
    meta = json.loads((out / "settings.json").read_text())
    (report / "results").mkdir(parents=True, exist_ok=True)
    for name in ("results.csv", "runs.csv"):
        shutil.copyfile(out / name, report / "results" / name)
    order = list(meta["datasets"])
    save(plot_fraction_curves(probe_mean_rows(df), panel="dataset", over_seeds=True, order=order),
         report / "figures" / "results_auroc.png")
    shown = figure_gradcam(out, report / "figures" / "results_gradcam.png", order)
    curves = learning_curves(runs)
    curves.to_csv(report / "results" / "learning_curves.csv", index=False)
    has_curves = figure_learning_curves(curves, report / "figures" / "results_learning.png",
                                        order)
    methods = _methods(df)
    md = ["# Results: does MLVICX beat VICReg at small scale?", "",
          ("*Written by the experiment; do not edit by hand.* Regenerate every number, table and "
          f"figure with:\n\n```bash\n{command}\n```\n"),
          "## Setup", _setup(meta, runs), ""]
    ma = probe_mean_rows(df)
    md += ["## Linear probe: mean test AUROC (mean ± std over seeds)", ""]
    rows = []
    for ds in meta["datasets"]:
        for fr in sorted(set(ma[ma.dataset == ds].fraction)):
            cell = ma[(ma.dataset == ds) & (ma.fraction == fr)]
            rows.append([ds, f"{fr:g}"] + [fmt(cell[cell.encoder == m].value) for m in methods])
    md += [_table(["dataset", "label fraction"] + methods, rows), "",
           "![AUROC vs label fraction](figures/results_auroc.png)", "",
           "Error bars: ± std over seeds.", ""]
    gains = paired_gains(out, df, int(meta["settings"]["config"]["eval"]["n_boot"]))
    if len(gains):
        gains.to_csv(report / "results" / "paired_gains.csv", index=False)
        md += gains_section(gains, list(meta["settings"]["seeds"]))
    if has_curves:
        last = curves[curves.step == curves.groupby(["dataset", "encoder", "seed"]).step
                      .transform("max")]
        start = curves[curves.step == 0].groupby("dataset").linear.mean()
        rows = [[ds, enc, f"{start[ds]:.3f}", fmt(g.linear), str(int(g.step.max()))]
                for (ds, enc), g in last.groupby(["dataset", "encoder"], sort=False)]
        md += ["## Learning curves: the online probe during pretraining", "",
               ("Every `train.eval_every` steps (and before the first) the frozen trunk embeds "
                "`train.probe_images` radiographs of the train split and the val split; a ridge "
                "read-out fitted on the former, its strength chosen per finding by exact "
                "leave-one-out AUROC, gives the mean val AUROC (`mlvicx_core.train.online_probe`; "
                "the test split is never read). Step 0 is each run's random init. Shaded: range "
                "over seeds. Data: `results/learning_curves.csv`."), "",
               "![Online probe vs step](figures/results_learning.png)", "",
               _table(["dataset", "method", "random init (step 0)", "last (mean ± std)", "step"],
                      rows), ""]
    skipped = df[df.note.fillna("").str.startswith("skipped")][["dataset", "fraction", "note"]]
    for (ds, fr), g in skipped.groupby(["dataset", "fraction"]):
        md.append(f"- {ds}, fraction {fr:g}: {g.note.iloc[0]}")
    md += ["", "## Bootstrap 95 % CIs of the mean AUROC, per seed", ""]
    rows = [[ds, f"{fr:g}", str(seed)] + [
        next((f"{r.value:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]" for r in
              g[g.encoder == m].itertuples()), "–") for m in methods]
        for (ds, fr, seed), g in ma.groupby(["dataset", "fraction", "seed"], sort=False)]
    md += [_table(["dataset", "fraction", "seed"] + methods, rows), ""]
    md += ["## Per-finding test AUROC at label fraction 1.0 (mean ± std over seeds)", ""]
    pf = df[(df.task == "probe") & (df.metric == "auroc") & (df.finding != "mean") &
            (df.fraction == 1.0)]
    for ds, g in pf.groupby("dataset", sort=False):
        rows = [[f] + [fmt(g[(g.finding == f) & (g.encoder == m)].value) for m in methods]
                for f in dict.fromkeys(g.finding)]
        md += [f"**{ds}**", "", _table(["finding"] + methods, rows), ""]
    md += ["## Grad-CAM localisation (full-label probe)", ""]
    gs = gradcam_summary(df)
    for metric, title in (("pointing_game", "pointing game"), ("energy_inside", "energy inside")):
        chance_col = "chance_pointing" if metric == "pointing_game" else "chance_energy"
        for ds, g in gs.groupby("dataset", sort=False):
            rows = [[f, str(int(df[(df.task == "gradcam") & (df.dataset == ds) &
                                   (df.finding == f)].n.max())),
                     f"{g[g.finding == f][chance_col].mean():.3f}"] +
                    [fmt(g[(g.finding == f) & (g.encoder == m)][metric]) for m in methods]
                    for f in dict.fromkeys(g.finding)]
            md += [f"**{ds}, {title}** (mean ± std over seeds)", "",
                   _table(["finding", "images", "chance"] + methods, rows), ""]
    md += ["![Grad-CAM heatmaps](figures/results_gradcam.png)", "",
           (f"Heatmaps of seed {min(meta['settings']['seeds'])} (rows: methods; columns: "
           f"{', '.join(shown) or 'none'}; the white outline is the true region)."), ""]
    md += ["## What held and what did not", ""]
    claim = compare(df, "mlvicx", "vicreg")
    if claim is not None:
        k, n = claim["claim"], claim["n"]
        held = ("held in every" if k == n else "held in none of the" if k == 0
                else f"held in {k} of the {n}")
        md += [f"**Verdict on the paper's claim** (MLVICX beats VICReg by more than "
               f"{CLAIM_GAIN:.2f} AUROC): {held} dataset/label-fraction cells"
               + (f" ({n})." if k in (0, n) else ".")
               + f" MLVICX was ahead at all in {claim['wins']} of {n}; differences beyond seed "
               f"noise: {claim['beyond_pos']} for, {claim['beyond_neg']} against.", ""]
    for a, b, what in COMPARISONS:
        sent = comparison_sentence(df, a, b, what)
        if sent:
            md.append(f"- {sent}")
    low = low_fraction_sentence(df)
    if low:
        md.append(f"- {low}")
    md += [f"- {x}" for x in localisation_sentences(df)]
    md += ["", "## Caveats", ""]
    md += [f"- {n}" for n in meta["notes"]]
    md += [("- The budget is tiny next to the paper's 300 epochs at 224 px: these numbers test the "
           "kit's claim at the scale a 2-core CPU allows, not the paper's setting. Rerun with a "
           "larger `--scale` on more compute."),
           ("- NIH localisation rests on the few expert boxes that fall on the 1,000 local images; "
           "read those pointing-game numbers as anecdotes."),
           "- PneumoniaMNIST has no patient ids; its split is MedMNIST's own."]
    path = report / "RESULTS.md"
    path.write_text("\n".join(md) + "\n")
    return path

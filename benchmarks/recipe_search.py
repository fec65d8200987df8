"""The teaching-recipe search (issue 11): frozen-trunk probe AUROC against CPU-minutes of pretraining.

Every point of the grid is the ``teaching`` preset with a few overrides. Each run

1. pretrains with the online probe on (``train.eval_every``): its ``metrics.jsonl`` holds the
   closed-form read-out of the held-out validation radiographs every few steps, so one run gives a
   whole AUROC-vs-minutes trajectory, with step 0 as the random-init level;
2. then scores the final trunk, and the same network at random init (same seed), with the kit's
   held-out linear probe (``mlvicx_core.evaluation.pipeline.evaluate``: logistic regression, C on
   val, AUROC on the test patients, 95 % bootstrap CI) for two read-outs side by side: the pooled
   layer4 (``trunk``) and ``layer3+layer4``.

Rows are appended to ``benchmarks/results/recipe_search.csv`` as each run finishes (a cut-off
search keeps its finished points and a rerun skips them); ``recipe_search.md`` and
``recipe_search.png`` (final probe AUROC vs CPU-minutes per point; online-probe trajectories;
random init as the reference line) are rewritten from the CSV.

    python benchmarks/recipe_search.py --stage screen            # one seed per point
    python benchmarks/recipe_search.py --stage final --seeds 0 1 2
    python benchmarks/recipe_search.py --report                  # tables and figure only

``--workers 2`` runs two points at once with one math thread each (on a 2-core CPU that is faster
than one run with two threads). CPU-minutes are the process's user+system CPU time, so they do not
depend on what else the machine runs; wall minutes are recorded too.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CSV = RESULTS / "recipe_search.csv"
sys.path.insert(0, str(HERE.parent))

# What every point shares: the synthetic radiographs, cosine schedule over the run, probe on.
COMMON = ["data.dataset=synthetic", "data.length=1024", "train.eval_every=24",
          "train.probe_images=512", "train.progress=false", "train.tensorboard=false",
          "train.diag_every=24", "train.ckpt_every=100000", "train.log_every=4"]

# The views before the search (the paper's ImageNet-style pair) and the mild radiograph views.
PAPER_VIEWS: list[str] = []
MILD_VIEWS = ["aug.crop_scale=[0.4,1.0]", "aug.jitter_p=0.3", "aug.blur_p=[0.0,0.0]",
              "aug.solarize_p=[0.0,0.0]"]

# name -> overrides. "epochs" is in units of 16 steps (1024 images, batch 64).
GRID: dict[str, dict[str, list[str]]] = {
    "screen": {
        "old: paper views, lr 0.002, 32px": PAPER_VIEWS + ["optim.base_lr=0.002"],
        "mild, lr 0.008, 32px": MILD_VIEWS + ["optim.base_lr=0.008"],
        "mild, lr 0.016, 32px": MILD_VIEWS + ["optim.base_lr=0.016"],
        "mild, lr 0.008, crop 0.2-1, 32px": MILD_VIEWS + ["optim.base_lr=0.008",
                                                         "aug.crop_scale=[0.2,1.0]"],
        "mild, lr 0.008, proj 512x2, 32px": MILD_VIEWS + [
            "optim.base_lr=0.008", "model.projector=[512,512]", "model.ml_projector=[512,512]"],
        "mild, lr 0.008, batch 32, 32px": MILD_VIEWS + ["optim.base_lr=0.008",
                                                       "train.batch_size=32"],
        "mild, lr 0.008, 64px (half the steps)": MILD_VIEWS + [
            "optim.base_lr=0.008", "data.image_size=64", "train.epochs=6"],
        "mild, SGD lr 0.4, 32px": MILD_VIEWS + ["optim.name=sgd", "optim.base_lr=0.4",
                                                "optim.weight_decay=1e-5"],
    },
}
# 32 px views cut from radiographs rendered at 64 px; 12 epochs = 192 steps unless overridden.
SCREEN_BASE = ["data.image_size=32", "data.load_size=64", "train.epochs=12"]
FIELDS = ["stage", "point", "seed", "steps", "cpu_min", "wall_min", "readout", "random_auroc",
          "random_lo", "random_hi", "pretrained_auroc", "pretrained_lo", "pretrained_hi", "gain",
          "invariance_first", "invariance_min", "invariance_last", "online_random",
          "online_last", "online_curve", "overrides"]


def run_point(stage: str, name: str, overrides: list[str], seed: int, threads: int) -> list[dict]:
    """Pretrain one point, then probe it and its random init: one row per read-out."""
    import torch

    torch.set_num_threads(threads)
    from mlvicx_core.config import load_config
    from mlvicx_core.data.registry import evaluation_splits
    from mlvicx_core.evaluation.baselines import reference_encoder
    from mlvicx_core.evaluation.pipeline import evaluate, mean_auroc
    from mlvicx_core.train.trainer import pretrain

    with tempfile.TemporaryDirectory() as tmp:
        config = load_config("teaching", [*COMMON, *overrides, f"train.seed={seed}",
                                          f"train.out_dir={tmp}", "train.run_name=run"])
        c0, w0 = time.process_time(), time.perf_counter()
        result = pretrain(config)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        rows = [json.loads(line) for line in open(result.metrics)]
    inv = [r["global/invariance"] for r in rows if "global/invariance" in r]
    curve = [(r["step"], round(r["probe/linear/mean"], 4)) for r in rows
             if "probe/linear/mean" in r]
    splits = evaluation_splits(config.data, config.eval.split_sizes, in_memory=True)
    encoders = {"random": reference_encoder("random", config.model, seed=seed),
                "pretrained": result.model}
    out = []
    for readout in ("trunk", "layer3+layer4"):
        ecfg = config.eval.replace(tasks=("probe",), fractions=(1.0,), features=readout)
        res = evaluate(encoders, splits, ecfg, dataset="synthetic")
        (r, rl, rh), (p, pl, ph) = (mean_auroc(res, e) for e in encoders)
        out.append({"stage": stage, "point": name, "seed": seed, "steps": result.step,
                    "cpu_min": round(cpu / 60, 2), "wall_min": round(wall / 60, 2),
                    "readout": readout, "random_auroc": round(r, 4), "random_lo": round(rl, 4),
                    "random_hi": round(rh, 4), "pretrained_auroc": round(p, 4),
                    "pretrained_lo": round(pl, 4), "pretrained_hi": round(ph, 4),
                    "gain": round(p - r, 4), "invariance_first": round(inv[0], 3),
                    "invariance_min": round(min(inv), 3), "invariance_last": round(inv[-1], 3),
                    "online_random": curve[0][1] if curve else math.nan,
                    "online_last": curve[-1][1] if curve else math.nan,
                    "online_curve": json.dumps(curve), "overrides": " ".join(overrides)})
    return out


def read_rows() -> list[dict]:
    if not CSV.is_file():
        return []
    with open(CSV, newline="") as f:
        return list(csv.DictReader(f))


def append_rows(rows: list[dict]) -> None:
    new = not CSV.is_file()
    with open(CSV, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        w.writerows(rows)


def report() -> None:
    """recipe_search.md (per point: mean +- sd over seeds) and recipe_search.png from the CSV."""
    import numpy as np

    rows = read_rows()
    if not rows:
        return
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["stage"], r["point"], r["readout"]), []).append(r)

    def stat(rs, key):
        v = np.array([float(r[key]) for r in rs])
        return v.mean(), (v.std(ddof=1) if len(v) > 1 else float("nan"))

    lines = ["# Teaching-recipe search (synthetic radiographs)", "",
             "Generated by `python benchmarks/recipe_search.py` (see its docstring). Probe: the "
             "kit's held-out linear probe (logistic regression, 1600 train / 200 val / 400 test "
             "radiographs of separate patients), mean AUROC over findings; *gain* = pretrained "
             "minus the same network at random init (same seed). CPU-min: process CPU time of "
             "the pretraining (2-core CPU, one math thread per run). Invariance: the global "
             "invariance term at the first logged step, its minimum and at the end (2.0 = the "
             "views are uncorrelated). Online: the closed-form read-out of the online probe at "
             "step 0 (random init) and at the end.", "",
             "| stage | point | read-out | seeds | steps | CPU-min | random | pretrained | gain "
             "(mean +- sd) | invariance first / min / last | online random -> last |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (stage, point, readout), rs in groups.items():
        g, gs = stat(rs, "gain")
        lines.append(
            f"| {stage} | {point} | {readout} | {len(rs)} | {rs[0]['steps']} | "
            f"{stat(rs, 'cpu_min')[0]:.1f} | {stat(rs, 'random_auroc')[0]:.3f} | "
            f"{stat(rs, 'pretrained_auroc')[0]:.3f} | {g:+.3f}"
            + (f" +- {gs:.3f}" if not math.isnan(gs) else "") + " | "
            f"{stat(rs, 'invariance_first')[0]:.2f} / {stat(rs, 'invariance_min')[0]:.2f} / "
            f"{stat(rs, 'invariance_last')[0]:.2f} | {stat(rs, 'online_random')[0]:.3f} -> "
            f"{stat(rs, 'online_last')[0]:.3f} |")
    (RESULTS / "recipe_search.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5.2))
    points = list(dict.fromkeys((k[0], k[1]) for k in groups))
    for readout, marker, ls in (("trunk", "o", "--"), ("layer3+layer4", "s", ":")):
        sel = [(k, rs) for k, rs in groups.items() if k[2] == readout]
        if not sel:
            continue
        rand = np.mean([float(r["random_auroc"]) for _, rs in sel for r in rs])
        ax.axhline(rand, color="k", ls=ls, lw=1.2, label=f"random init, {readout} ({rand:.3f})")
        for (stage, point, _), rs in sel:
            x, y = stat(rs, "cpu_min")[0], stat(rs, "pretrained_auroc")
            colour = f"C{points.index((stage, point)) % 10}"
            ax.errorbar(x, y[0], yerr=0 if math.isnan(y[1]) else y[1], marker=marker,
                        color=colour, mfc=colour if readout == "trunk" else "white", capsize=3,
                        ls="none", label=f"{point}, {readout}")
    for (stage, point, readout), rs in groups.items():
        if readout != "trunk":
            continue
        curve = json.loads(rs[0]["online_curve"])
        if curve:
            steps, auc = zip(*curve)
            per_step = float(rs[0]["cpu_min"]) / max(int(rs[0]["steps"]), 1)
            bx.plot([s * per_step for s in steps], auc, marker=".", label=point,
                    color=f"C{points.index((stage, point)) % 10}")
    ax.set(xlabel="pretraining CPU-minutes", ylabel="held-out probe mean AUROC",
           title="Final probe vs cost (one point per recipe)")
    ax.legend(fontsize=7, loc="best")
    bx.set(xlabel="pretraining CPU-minutes", ylabel="online probe (ridge) mean AUROC",
           title="Online probe during pretraining (step 0 = random init)")
    bx.legend(fontsize=7, loc="best")
    for a in (ax, bx):
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / "recipe_search.png", dpi=110)
    print(f"wrote {RESULTS / 'recipe_search.md'} and {RESULTS / 'recipe_search.png'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stage", default="screen", help="grid: 'screen' or 'final'")
    ap.add_argument("--points", nargs="*", help="only these point names")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--report", action="store_true", help="only rewrite the table and figure")
    ap.add_argument("--final-overrides", nargs="*", default=[],
                    help="stage 'final': the chosen recipe's overrides (default: the teaching "
                         "preset as committed)")
    args = ap.parse_args()
    RESULTS.mkdir(exist_ok=True)
    if args.report:
        report()
        return 0
    if args.stage == "final":
        grid = {"teaching preset": args.final_overrides}
        base: list[str] = []
    else:
        grid, base = GRID[args.stage], SCREEN_BASE
    done = {(r["stage"], r["point"], int(r["seed"])) for r in read_rows()}
    jobs = [(args.stage, name, [*base, *ov], seed) for name, ov in grid.items()
            for seed in args.seeds if (not args.points or name in args.points)
            and (args.stage, name, seed) not in done]
    print(f"{len(jobs)} runs ({len(done)} already in {CSV.name})", flush=True)
    threads = max(1, (os.cpu_count() or 2) // args.workers)
    with ProcessPoolExecutor(args.workers) as pool:
        futures = [pool.submit(run_point, *job, threads) for job in jobs]
        for job, fut in zip(jobs, futures):
            rows = fut.result()
            append_rows(rows)
            print(f"{job[1]} seed {job[3]}: " + ", ".join(
                f"{r['readout']} {r['pretrained_auroc']:.3f} vs random {r['random_auroc']:.3f} "
                f"({r['gain']:+.3f})" for r in rows) + f"; {rows[0]['cpu_min']} CPU-min",
                flush=True)
            report()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

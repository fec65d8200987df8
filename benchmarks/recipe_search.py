"""The teaching-recipe search: held-out probe gain over random init against CPU-minutes of pretraining.

Every point is the ``teaching`` preset with a few overrides and a step count that fits its budget
(``--budget`` CPU-minutes of training at one math thread; a point's steps = budget / its measured
step cost, rounded to whole epochs). Each run

1. pretrains with the online probe on: ``metrics.jsonl`` holds the read-out of held-out validation
   radiographs every ``train.eval_every`` steps, step 0 being the random-init level;
2. scores the final trunk and the same network at random init (same seed) with the kit's held-out
   linear probe (``mlvicx_core.evaluation.pipeline.evaluate``: logistic regression, C chosen on
   val, AUROC on the test patients, 95 % bootstrap CI) on two read-outs, pooled layer4 (``trunk``)
   and ``layer3+layer4``; where the network is not ResNet-18 at width 64, the width-64 random init
   is scored too, as the absolute reference.

Stages (``--stage``): ``screen`` (one seed per point), ``seeds`` (``--points`` with ``--seeds``),
``budget`` (``--points`` at ``--scale`` times their budget). Rows are appended to
``benchmarks/results/recipe_search.csv`` as each run finishes (a cut-off search keeps its finished
points; a rerun skips them); ``recipe_search.md`` and ``recipe_search.png`` (the frontier: gain
over random init against CPU-minutes per read-out with the seed spread, and the online-probe
trajectories) are rewritten from the CSV. ``--save-models DIR`` keeps every final network (for
checking the online probe against the held-out probe on trunks of different quality).

    python benchmarks/recipe_search.py --stage screen --workers 2
    python benchmarks/recipe_search.py --stage seeds --points "w32" "w32 lr 2x" --seeds 0 1 2
    python benchmarks/recipe_search.py --stage budget --points "w32" --scale 2
    python benchmarks/recipe_search.py --report                  # tables and figure only

``--workers 2`` runs two points at once with one math thread each (on a 2-core CPU that is faster
than one run with two threads). CPU-minutes are the process's user+system CPU time of the
pretraining (probe evaluations after it excluded), so they do not depend on what else runs.
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
FAILED = RESULTS / "recipe_search_failed.csv"  # points that stopped (e.g. diverged): stage, point, seed, error
sys.path.insert(0, str(HERE.parent))

# What every point shares: the synthetic radiographs rendered once into memory, the online probe on.
COMMON = ["data.dataset=synthetic", "data.in_memory=true", "train.eval_every=64",
          "train.progress=false", "train.tensorboard=false", "train.diag_every=64",
          "train.ckpt_every=1000000", "train.log_every=8"]

# Measured CPU-seconds of one step (one thread, batch 64 unless named, the online probe included),
# used to turn a budget into steps: benchmarks/results/recipe_search.md states the real cost.
STEP_COST = {64: 0.78, 48: 0.55, 32: 0.39, 16: 0.30}
VIEW_COST = {32: 1.0, 48: 1.45, 64: 2.0}  # relative to 32 px views, at width 32

# name -> (width, view side, batch, overrides). The base is the teaching preset (mild 32 px views of
# 64 px radiographs, AdamW base_lr 0.008, 1024-d heads, batch 64, 1,024 radiographs).
GRID: dict[str, tuple[int, int, int, list[str]]] = {
    "w64": (64, 32, 64, []),
    "w48": (48, 32, 64, []),
    "w32": (32, 32, 64, []),
    "w16": (16, 32, 64, []),
    "w32 lr 0.5x": (32, 32, 64, ["optim.base_lr=0.004"]),
    "w32 lr 2x": (32, 32, 64, ["optim.base_lr=0.016"]),
    "w32 lr 4x": (32, 32, 64, ["optim.base_lr=0.032"]),
    "w32 crop 0.6-1": (32, 32, 64, ["aug.crop_scale=[0.6,1.0]"]),
    "w32 crop 0.8-1": (32, 32, 64, ["aug.crop_scale=[0.8,1.0]"]),
    "w32 crop 0.2-1": (32, 32, 64, ["aug.crop_scale=[0.2,1.0]"]),
    "w32 jitter 0.8": (32, 32, 64, ["aug.jitter_p=0.8"]),
    "w32 no jitter": (32, 32, 64, ["aug.jitter_p=0.0"]),
    "w32 views 48": (32, 48, 64, ["data.image_size=48"]),
    "w32 views 64": (32, 64, 64, ["data.image_size=64"]),
    "w32 proj 2048": (32, 32, 64, ["model.projector=[2048,2048,2048]",
                                   "model.ml_projector=[2048,2048,2048]"]),
    "w32 proj 512": (32, 32, 64, ["model.projector=[512,512,512]",
                                  "model.ml_projector=[512,512,512]"]),
    "w32 proj no last BN": (32, 32, 64, ["model.projector_last_bn=false"]),
    "w32 batch 32": (32, 32, 32, ["train.batch_size=32"]),
    "w32 batch 128": (32, 32, 128, ["train.batch_size=128"]),
    "w32 pool 8192": (32, 32, 64, ["data.length=8192"]),
    "w32 pool 256": (32, 32, 64, ["data.length=256"]),
    "w32 LARS": (32, 32, 64, ["optim.name=lars", "optim.base_lr=4.0"]),
    "w32 SGD": (32, 32, 64, ["optim.name=sgd", "optim.base_lr=0.8", "optim.weight_decay=1e-5"]),
    "w32 VICReg": (32, 32, 64, ["model.multilevel=false", "model.context_bottleneck=false"]),
    "w32 SGD lr 0.2": (32, 32, 64, ["optim.name=sgd", "optim.base_lr=0.2",
                                    "optim.weight_decay=1e-5"]),
    # second round: the levers the first round found (learning rate, narrower projectors, a
    # projector ending in a plain Linear as official VICReg) combined, and at full width
    "w64 lr 2x": (64, 32, 64, ["optim.base_lr=0.016"]),
    "w32 proj 256": (32, 32, 64, ["model.projector=[256,256,256]",
                                  "model.ml_projector=[256,256,256]"]),
    "w64 proj 512": (64, 32, 64, ["model.projector=[512,512,512]",
                                  "model.ml_projector=[512,512,512]"]),
    "w64 proj 512 lr 2x": (64, 32, 64, ["optim.base_lr=0.016", "model.projector=[512,512,512]",
                                        "model.ml_projector=[512,512,512]"]),
    "w64 no last BN": (64, 32, 64, ["model.projector_last_bn=false"]),
    "w32 no last BN proj 512 lr 2x": (32, 32, 64, ["model.projector_last_bn=false",
                                                   "optim.base_lr=0.016",
                                                   "model.projector=[512,512,512]",
                                                   "model.ml_projector=[512,512,512]"]),
    "w64 no last BN proj 512 lr 2x": (64, 32, 64, ["model.projector_last_bn=false",
                                                   "optim.base_lr=0.016",
                                                   "model.projector=[512,512,512]",
                                                   "model.ml_projector=[512,512,512]"]),
}
FIELDS = ["stage", "point", "seed", "steps", "cpu_min", "wall_min", "readout", "random_auroc",
          "random_lo", "random_hi", "pretrained_auroc", "pretrained_lo", "pretrained_hi", "gain",
          "gain_lo", "gain_hi", "random64_auroc", "invariance_first", "invariance_last",
          "online_random", "online_last", "online_curve", "overrides"]


def point_steps(width: int, view: int, batch: int, budget: float, pool: int) -> tuple[int, int]:
    """(epochs, steps) that fill ``budget`` CPU-minutes at the point's estimated step cost."""
    cost = STEP_COST[width] * VIEW_COST[view] * batch / 64
    spe = pool // batch
    epochs = max(1, round(budget * 60 / cost / spe))
    return epochs, epochs * spe


def run_point(stage: str, name: str, seed: int, budget: float, threads: int,
              save_models: str | None) -> list[dict]:
    """Pretrain one point, then probe it and its random init: one row per read-out."""
    import torch

    torch.set_num_threads(threads)
    from mlvicx_core.config import load_config
    from mlvicx_core.data.registry import evaluation_splits
    from mlvicx_core.evaluation.baselines import reference_encoder
    from mlvicx_core.evaluation.metrics import paired_auroc_difference
    from mlvicx_core.evaluation.pipeline import evaluate, mean_auroc
    from mlvicx_core.train.trainer import pretrain

    width, view, batch, overrides = GRID[name]
    pool = next((int(o.split("=")[1]) for o in overrides if o.startswith("data.length=")), 1024)
    epochs, steps = point_steps(width, view, batch, budget, pool)
    warmup = max(1, round(0.05 * steps)) / (pool // batch)  # 5 % of the run, in epochs
    sets = [*COMMON, f"model.width={width}", *overrides, f"train.epochs={epochs}",
            f"optim.warmup_epochs={warmup}", f"train.seed={seed}"]
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config("teaching", [*sets, f"train.out_dir={tmp}", "train.run_name=run"])
        c0, w0 = time.process_time(), time.perf_counter()
        result = pretrain(config)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        rows = [json.loads(line) for line in open(result.metrics)]
    if save_models:
        out = Path(save_models)
        out.mkdir(parents=True, exist_ok=True)
        torch.save({"model": result.model.state_dict(), "config": config.to_dict()},
                   out / f"{stage}-{name.replace(' ', '_')}-s{seed}-x{budget:g}.pt")
    inv = [r["global/invariance"] for r in rows if "global/invariance" in r]
    curve = [(r["step"], round(r["probe/linear/mean"], 4)) for r in rows
             if "probe/linear/mean" in r]
    splits = evaluation_splits(config.data, config.eval.split_sizes, in_memory=True)
    encoders = {"random": reference_encoder("random", config.model, seed=seed),
                "pretrained": result.model}
    if width != 64:
        encoders["random64"] = reference_encoder("random", config.model.replace(width=64),
                                                 seed=seed)
    out = []
    for readout in ("trunk", "layer3+layer4"):
        ecfg = config.eval.replace(tasks=("probe",), fractions=(1.0,), features=readout)
        test = {}

        def keep(ev):
            test["labels"], test[ev.name] = ev.test_scores[("probe", 1.0)]

        res = evaluate(encoders, splits, ecfg, dataset="synthetic", on_encoder=keep)
        (r, rl, rh), (p, pl, ph) = (mean_auroc(res, e) for e in ("random", "pretrained"))
        r64 = mean_auroc(res, "random64")[0] if "random64" in encoders else r
        diff = paired_auroc_difference(test["labels"], test["pretrained"], test["random"],
                                       n_boot=1000, seed=seed)
        out.append({"stage": stage, "point": name, "seed": seed, "steps": result.step,
                    "cpu_min": round(cpu / 60, 2), "wall_min": round(wall / 60, 2),
                    "readout": readout, "random_auroc": round(r, 4), "random_lo": round(rl, 4),
                    "random_hi": round(rh, 4), "pretrained_auroc": round(p, 4),
                    "pretrained_lo": round(pl, 4), "pretrained_hi": round(ph, 4),
                    "gain": round(p - r, 4), "gain_lo": round(diff[1], 4),
                    "gain_hi": round(diff[2], 4), "random64_auroc": round(r64, 4),
                    "invariance_first": round(inv[0], 3), "invariance_last": round(inv[-1], 3),
                    "online_random": curve[0][1] if curve else math.nan,
                    "online_last": curve[-1][1] if curve else math.nan,
                    "online_curve": json.dumps(curve), "overrides": " ".join(sets)})
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
    """recipe_search.md (per point and read-out: mean and sd over seeds) and the frontier figure."""
    import numpy as np

    rows = read_rows()
    if not rows:
        return
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["stage"], r["point"], int(r["steps"]), r["readout"]), []).append(r)
    # the seeds stage repeats screen points with more seeds: the screen's run is its seed 0
    for (stage, point, steps, readout), rs in groups.items():
        if stage == "seeds" and not any(r["seed"] == "0" for r in rs):
            rs += [r for r in groups.get(("screen", point, steps, readout), [])
                   if r["seed"] == "0"]

    def stat(rs, key):
        v = np.array([float(r[key]) for r in rs])
        return v.mean(), (v.std(ddof=1) if len(v) > 1 else float("nan"))

    lines = ["# Teaching-recipe search (synthetic radiographs)", "",
             "Generated by `python benchmarks/recipe_search.py` (its docstring says how). Probe: the "
             "kit's held-out linear probe (logistic regression, C on val; 1600 train / 200 val / "
             "400 test radiographs of separate patients), mean AUROC over the five findings. "
             "*gain* = pretrained minus the same network at random init (same seed); with one "
             "seed, [lo, hi] is the 95 % bootstrap CI of that paired difference over the test "
             "images, with several seeds the +- is the sd over seeds. *random w64*: ResNet-18 at "
             "width 64, random init (the absolute reference). CPU-min: process CPU time of the "
             "pretraining at one math thread (online probe included). Invariance: the global "
             "invariance term first and last (2.0 = uncorrelated views). Online: the online "
             "probe's linear read-out at step 0 and at the end. The screen ran before the online "
             "probe's fix (it then fitted a ridge of fixed strength on 256 validation images): "
             "its online column is that old read-out, which disagrees with the held-out probe; "
             "the seeds and budget stages ran with the fixed probe (1,600 training-split images, "
             "strength by leave-one-out AUROC, 1,024 validation images scored).", "",
             "| stage | point | read-out | seeds | steps | CPU-min | random w64 | random | "
             "pretrained | gain | invariance | online 0 -> end |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (stage, point, steps, readout), rs in sorted(groups.items(), key=lambda kv: (
            kv[0][0] != "screen", kv[0][3], -stat(kv[1], "gain")[0])):
        g, gs = stat(rs, "gain")
        spread = (f" +- {gs:.3f}" if len(rs) > 1 else
                  f" [{float(rs[0]['gain_lo']):+.3f}, {float(rs[0]['gain_hi']):+.3f}]")
        lines.append(
            f"| {stage} | {point} | {readout} | {len(rs)} | {steps} | "
            f"{stat(rs, 'cpu_min')[0]:.1f} | {stat(rs, 'random64_auroc')[0]:.3f} | "
            f"{stat(rs, 'random_auroc')[0]:.3f} | {stat(rs, 'pretrained_auroc')[0]:.3f} | "
            f"**{g:+.3f}**{spread} | {stat(rs, 'invariance_first')[0]:.2f} -> "
            f"{stat(rs, 'invariance_last')[0]:.2f} | {stat(rs, 'online_random')[0]:.3f} -> "
            f"{stat(rs, 'online_last')[0]:.3f} |")
    if FAILED.is_file():
        with open(FAILED, newline="") as f:
            failed = list(csv.DictReader(f))
        if failed:
            lines += ["", "Points that stopped before the end (no row above):", ""]
            lines += [f"- {r['stage']} / {r['point']} / seed {r['seed']}: {r['error']} "
                      f"({' '.join(GRID[r['point']][3]) if r['point'] in GRID else ''})"
                      for r in failed]
    (RESULTS / "recipe_search.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5))
    names = list(dict.fromkeys(k[1] for k in groups))
    for ax, readout in zip(axes[:2], ("trunk", "layer3+layer4")):
        for (stage, point, steps, ro), rs in groups.items():
            if ro != readout:
                continue
            x, (g, gs) = stat(rs, "cpu_min")[0], stat(rs, "gain")
            lo_hi = ([[g - float(rs[0]["gain_lo"])], [float(rs[0]["gain_hi"]) - g]]
                     if len(rs) == 1 else gs)
            colour = f"C{names.index(point) % 10}"
            ax.errorbar(x, g, yerr=lo_hi, marker="os^"[min(len(rs), 3) - 1 if len(rs) < 3 else 2],
                        color=colour, capsize=3, ls="none", alpha=0.9,
                        label=f"{point} ({stage}, {len(rs)} seed{'s' if len(rs) > 1 else ''})")
        ax.axhline(0, color="k", lw=1.2, label="random init of the same network")
        ax.set(xlabel="pretraining CPU-minutes (one thread)",
               ylabel="held-out probe AUROC: pretrained - random init",
               title=f"Frontier, read-out {readout}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6, loc="best", ncol=2)
    bx = axes[2]
    for (stage, point, steps, readout), rs in groups.items():
        if readout != "trunk":
            continue
        curve = json.loads(rs[0]["online_curve"])
        if curve:
            s, auc = zip(*curve)
            per_step = float(rs[0]["cpu_min"]) / max(int(rs[0]["steps"]), 1)
            bx.plot([t * per_step for t in s], np.array(auc) - auc[0], marker=".", lw=1,
                    color=f"C{names.index(point) % 10}", label=f"{point} ({stage})")
    bx.axhline(0, color="k", lw=1.2)
    bx.set(xlabel="pretraining CPU-minutes", ylabel="online probe: AUROC - its step-0 value",
           title="Online probe during pretraining (seed 0)")
    bx.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / "recipe_search.png", dpi=100)
    print(f"wrote {RESULTS / 'recipe_search.md'} and {RESULTS / 'recipe_search.png'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stage", default="screen", choices=("screen", "seeds", "budget"))
    ap.add_argument("--points", nargs="*", help="only these point names (default: all)")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0])
    ap.add_argument("--budget", type=float, default=9.0, help="CPU-minutes of training per point")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the budget (stage budget)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None,
                    help="math threads per point (default: cores / workers)")
    ap.add_argument("--save-models", default=None, help="folder for every final network")
    ap.add_argument("--report", action="store_true", help="only rewrite the table and figure")
    args = ap.parse_args()
    RESULTS.mkdir(exist_ok=True)
    if args.report:
        report()
        return 0
    budget = args.budget * args.scale
    stage = args.stage if args.stage != "budget" else f"budget x{args.scale:g}"
    unknown = [p for p in args.points or [] if p not in GRID]
    if unknown:
        ap.error(f"unknown point(s) {unknown}; expected some of {list(GRID)}")
    done = {(r["stage"], r["point"], int(r["seed"])) for r in read_rows()}
    done |= {("seeds", p, seed) for st, p, seed in done if st == "screen"}  # same runs
    jobs = [(stage, name, seed, budget) for name in (args.points or GRID) for seed in args.seeds
            if (stage, name, seed) not in done]
    print(f"{len(jobs)} runs ({len(done)} already in {CSV.name})", flush=True)
    threads = args.threads or max(1, (os.cpu_count() or 2) // args.workers)
    with ProcessPoolExecutor(args.workers) as pool:
        futures = {pool.submit(run_point, *job, threads, args.save_models): job for job in jobs}
        from concurrent.futures import as_completed

        for fut in as_completed(futures):
            job = futures[fut]
            try:
                rows = fut.result()
            except Exception as err:  # a failed point is reported and kept, the others go on
                print(f"{job[1]} seed {job[2]}: FAILED ({type(err).__name__}: {err})", flush=True)
                new = not FAILED.is_file()
                with open(FAILED, "a", newline="") as f:
                    w = csv.writer(f)
                    if new:
                        w.writerow(["stage", "point", "seed", "error"])
                    w.writerow([job[0], job[1], job[2], f"{type(err).__name__}: {err}"])
                report()
                continue
            append_rows(rows)
            print(f"{job[1]} seed {job[2]}: " + ", ".join(
                f"{r['readout']} {r['pretrained_auroc']:.3f} vs random {r['random_auroc']:.3f} "
                f"({r['gain']:+.3f} [{r['gain_lo']:+.3f}, {r['gain_hi']:+.3f}])" for r in rows)
                + f"; {rows[0]['steps']} steps, {rows[0]['cpu_min']} CPU-min", flush=True)
            report()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The results experiment: five encoders x three datasets x seeds, same budget per pretraining run.

Methods (all at the ``teaching`` size: ResNet-18, 64 px, narrow heads, AdamW)::

    random        no pretraining: the ResNet-18 trunk at its seeded random init
    vicreg        VICReg: no context bottlenecks, no multi-level branch
    mlvicx        MLVICX (context bottlenecks + multi-level loss, lambda = 1)
    mlvicx-no-cb  MLVICX without context bottlenecks
    mlvicx-frozen MLVICX with the lateral 1x1 convs frozen at init (the released code)

Budget: every pretraining run takes exactly ``steps`` optimizer steps of ``batch`` two-view images
(``steps * batch`` image pairs; the cosine schedule spans exactly those steps, 20 % linear warmup),
the same for every method, dataset and seed. The pretraining set is the first ``n = spe * batch``
images of the train split, ``spe = ceil(steps / epochs)``, ``epochs = ceil(steps * batch / N)``.
Runs go through the kit's engine (``load_config("teaching", ...)`` + ``train_or_load``): a run
folder ``<out>/runs/<dataset>/<method>/seed<k>`` with the same configuration is reused, an
interrupted one resumes.

Read-outs per (dataset, method, seed), on frozen pooled-trunk features (context bottlenecks dropped,
as the released code transfers): linear probe (C chosen on val) at each label fraction (patients of
the train split, seeded by the seed; a fraction is skipped when it leaves fewer than
``min_patients`` patients), test AUROC per finding and mean with percentile-bootstrap CIs; Grad-CAM
of the full-label probe at ``tap`` on the positive test images with a region (pointing game and
energy inside, with uniform-map chance).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from ..evaluation import (
    bootstrap_auroc,
    extract_features,
    fit_linear_probe,
    label_fraction,
    reference_encoder,
)
from ..evaluation.finetune import Classifier
from ..evaluation.gradcam import finding_cams, localisation_eval
from ..evaluation.trunk import Trunk
from ..train import load_config, train_or_load
from .results_data import Benchmark, build_benchmarks, register_synthetic_train

#: method name -> model.* overrides of the teaching preset (None: no pretraining).
METHODS: dict[str, dict | None] = {
    "random": None,
    "vicreg": {"model.multilevel": False, "model.context_bottleneck": False},
    "mlvicx": {},
    "mlvicx-no-cb": {"model.context_bottleneck": False},
    "mlvicx-frozen": {"model.freeze_lateral": True},
}
DATASETS = ("synthetic", "nih", "pneumoniamnist")
ROW_COLUMNS = ["dataset", "method", "seed", "task", "fraction", "finding", "metric", "value",
               "ci_low", "ci_high", "n", "note"]


@dataclass
class ExperimentSettings:
    """Everything the numbers depend on; ``scale`` multiplies pretraining steps and data sizes."""

    scale: float = 1.0
    steps: int = 20  # optimizer steps per pretraining run at scale 1
    batch: int = 64
    seeds: tuple[int, ...] = (0, 1, 2)
    datasets: tuple[str, ...] = DATASETS
    methods: tuple[str, ...] = tuple(METHODS)
    fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    min_patients: int = 5  # a label fraction needs at least this many training patients
    synthetic_sizes: dict = field(default_factory=lambda: {"train": 1600, "val": 200, "test": 400})
    nih_max_images: int | None = None  # smoke runs only
    pneumonia_train: int | None = 1500  # None: all 3,882
    pneumonia_eval: int | None = None  # cap on val and test (None: all)
    image_size: int = 64
    n_boot: int = 500
    probe_cs: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0)  # C grid of the probe (chosen on val)
    probe_max_iter: int = 200  # lbfgs iterations; an unconverged probe is still a probe (val judges)
    tap: str = "layer2"  # Grad-CAM layer: 8 x 8 at 64 px (layer4 is 2 x 2 and cannot point)
    tolerance: float = 4.0  # pointing-game tolerance in px (~15 px at 224 px)
    gradcam_images: int = 32  # positive test images scored per finding
    figure_images: int = 4  # synthetic test images in the heatmap figure
    threads: int = 2
    model_overrides: dict = field(default_factory=dict)  # model.* keys for every method (smoke)

    def scaled(self) -> ExperimentSettings:
        """The settings with ``scale`` applied to steps and data sizes (scale 1 = the defaults)."""
        s = self.scale
        sizes = {k: max(8, round(v * s)) for k, v in self.synthetic_sizes.items()}
        train = None if self.pneumonia_train is None else round(self.pneumonia_train * s)
        if train is not None and train >= 3882:
            train = None
        return ExperimentSettings(**{**asdict(self), "scale": 1.0,
                                     "steps": max(1, round(self.steps * s)),
                                     "synthetic_sizes": sizes, "pneumonia_train": train})


def schedule(steps: int, batch: int, n_train: int) -> dict[str, int]:
    """Epochs, steps per epoch and pretraining images so the schedule spans exactly ``steps``."""
    if n_train < batch:
        raise ValueError(f"train split has {n_train} images, fewer than one batch of {batch}")
    epochs = math.ceil(steps * batch / n_train)
    spe = math.ceil(steps / epochs)
    while spe * batch > n_train:  # rounding pushed past the split: one more epoch
        epochs += 1
        spe = math.ceil(steps / epochs)
    return {"epochs": epochs, "steps_per_epoch": spe, "images": spe * batch,
            "total": min(steps, epochs * spe)}


def run_config(bench: Benchmark, method: str, seed: int, st: ExperimentSettings, out: Path):
    """The engine's TrainConfig of one pretraining run (teaching preset + overrides)."""
    sch = schedule(st.steps, st.batch, len(bench.splits["train"]))
    warm = max(1, round(0.2 * st.steps))
    overrides = {**st.model_overrides, **METHODS[method], **bench.data_config,
                 "data.length": sch["images"],
                 "model.image_size": st.image_size, "train.seed": seed,
                 "train.batch_size": st.batch, "train.epochs": sch["epochs"],
                 "train.max_steps": st.steps, "optim.warmup_epochs": warm / sch["steps_per_epoch"],
                 "train.progress": False, "train.tensorboard": False,
                 # checkpoints at epoch ends and at the end only: each is ~240 MB at this size
                 "train.ckpt_every": st.steps, "train.diag_every": max(1, st.steps),
                 "train.out_dir": str(out / "runs")}
    return load_config("teaching", overrides), sch


def pretrain_encoder(bench: Benchmark, method: str, seed: int, st: ExperimentSettings,
                     out: Path) -> tuple[torch.nn.Module, dict]:
    """Train (or reuse) one run; returns the model and a record for ``runs.csv``."""
    base = load_config("teaching", {**st.model_overrides, "model.image_size": st.image_size}).model
    if METHODS[method] is None:
        return reference_encoder("random", base, seed=seed), {
            "dataset": bench.name, "method": method, "seed": seed, "steps": 0, "images": 0,
            "wall_s": 0.0, "final_loss": float("nan"), "run_dir": ""}
    cfg, sch = run_config(bench, method, seed, st, out)
    run_dir = out / "runs" / bench.name / method / f"seed{seed}"
    timing = run_dir / "experiment.json"
    t0 = time.perf_counter()
    run = train_or_load(cfg, run_dir=run_dir, dataset=bench.pretrain_set(sch["images"]))
    if run.losses:  # trained now (not reused): record how long it took
        timing.write_text(json.dumps({"wall_s": time.perf_counter() - t0,
                                      "final_loss": run.losses[-1]}))
    rec = json.loads(timing.read_text()) if timing.is_file() else {"wall_s": float("nan"),
                                                                    "final_loss": float("nan")}
    return run.model.eval(), {"dataset": bench.name, "method": method, "seed": seed,
                              "steps": run.step, "images": sch["images"], **rec,
                              "run_dir": str(run_dir)}


def _row(bench, method, seed, task, fraction, finding, metric, value, lo=np.nan, hi=np.nan,
         n=0, note="") -> dict:
    return dict(zip(ROW_COLUMNS, (bench.name, method, seed, task, fraction, finding, metric,
                                  float(value), float(lo), float(hi), int(n), note)))


def probe_rows(bench: Benchmark, method: str, seed: int, feats: dict, st: ExperimentSettings
               ) -> tuple[list[dict], object]:
    """Linear-probe AUROC rows at every label fraction; returns the full-label probe too."""
    tr, va, te = feats["train"], feats["val"], feats["test"]
    rows, full = [], None
    n_pat = len(np.unique(tr.patient_ids))
    for f in st.fractions:
        if round(f * n_pat) < st.min_patients and f < 1:
            rows.append(_row(bench, method, seed, "probe", f, "mean", "auroc", np.nan,
                             note=f"skipped: {f} x {n_pat} train patients < {st.min_patients}"))
            continue
        sub = label_fraction(tr.patient_ids, tr.labels, f, seed=seed)
        probe = fit_linear_probe(tr.x[sub], tr.labels[sub], va.x, va.labels, Cs=st.probe_cs,
                                 max_iter=st.probe_max_iter)
        res = bootstrap_auroc(te.labels, probe.scores(te.x), n_boot=st.n_boot, seed=seed)
        for k, name in enumerate(bench.findings):
            rows.append(_row(bench, method, seed, "probe", f, name, "auroc", res.per_finding[k],
                             *res.per_finding_ci[k], len(te.x), "" if np.isfinite(
                                 res.per_finding[k]) else "one class in test: undefined"))
        rows.append(_row(bench, method, seed, "probe", f, "mean", "auroc", res.mean,
                         *res.mean_ci, len(te.x), f"C={probe.C}; {len(sub)} train images"))
        if f == max(st.fractions):
            full = probe
    return rows, full


def gradcam_rows(bench: Benchmark, method: str, seed: int, clf, st: ExperimentSettings
                 ) -> list[dict]:
    """Pointing game / energy inside per finding (and their chance levels) on the localisation set."""
    rows = []
    loc = bench.localisation
    for k, name in enumerate(bench.findings):
        r = localisation_eval(clf, loc, k, tap=st.tap, tolerance=st.tolerance,
                              max_images=st.gradcam_images)
        if r["n"] == 0:
            continue
        for metric in ("pointing_game", "energy_inside", "chance_pointing", "chance_energy"):
            rows.append(_row(bench, method, seed, "gradcam", 1.0, name, metric, r[metric],
                             n=r["n"]))
    return rows


def figure_cases(bench: Benchmark, st: ExperimentSettings) -> list[tuple[int, int]]:
    """(image index in the localisation set, finding) pairs shown in the heatmap figure."""
    loc = bench.localisation
    if loc is None:
        return []
    if bench.name != "synthetic":  # NIH: the boxed images, their first boxed finding
        return [(i, bench.findings.index(loc.boxes(i)[0][0])) for i in range(min(3, len(loc)))]
    order = [bench.findings.index(f) for f in ("nodule", "mass", "pneumothorax", "effusion")
             if f in bench.findings]
    cases = []
    for i in range(len(loc)):
        k = next((k for k in order if loc.labels[i, k] == 1 and loc.masks[i, k].any()), None)
        if k is not None:
            cases.append((i, k))
        if len(cases) >= st.figure_images:
            break
    return cases


def figure_maps(clf, bench: Benchmark, cases, st: ExperimentSettings) -> np.ndarray:
    return np.stack([finding_cams(clf, bench.localisation[i]["image"][None], k, st.tap)[0]
                     for i, k in cases]) if cases else np.zeros((0, 1, 1), np.float32)


def evaluate(bench: Benchmark, method: str, seed: int, model, st: ExperimentSettings,
             out: Path) -> tuple[list[dict], np.ndarray | None]:
    feats = {s: extract_features(model, ds, "trunk", cache_dir=out / "features")
             for s, ds in bench.splits.items()}
    # One BLAS thread for the probes: on a shared CPU, OpenBLAS's spinning threads made a
    # 1,600 x 512 logistic regression 20-300x slower (measured: 0.5 s vs 9-150 s).
    with threadpool_limits(limits=1, user_api="blas"):
        rows, probe = probe_rows(bench, method, seed, feats, st)
    maps = None
    if probe is not None and bench.localisation is not None:
        clf = Classifier(Trunk(model), len(bench.findings), head=probe.as_torch_head()).eval()
        rows += gradcam_rows(bench, method, seed, clf, st)
        if seed == min(st.seeds):
            maps = figure_maps(clf, bench, figure_cases(bench, st), st)
    return rows, maps


def _save_figure_data(bench: Benchmark, st: ExperimentSettings, maps: dict, out: Path) -> None:
    cases = figure_cases(bench, st)
    if not cases or not maps:
        return
    loc = bench.localisation
    regions = []
    for i, k in cases:
        if loc.masks is not None:
            regions.append(loc.masks[i, k].numpy())
        else:
            from ..evaluation.localisation import boxes_to_mask
            regions.append(boxes_to_mask(loc.boxes(i), loc.image_size, bench.findings[k]))
    np.savez(out / f"gradcam_{bench.name}.npz",
             images=np.stack([loc[i]["image"][0].numpy() for i, _ in cases]),
             regions=np.stack(regions), findings=np.array([bench.findings[k] for _, k in cases]),
             methods=np.array(list(maps)), maps=np.stack([maps[m] for m in maps]))


def run_experiment(settings: ExperimentSettings, out: str | Path, log=print) -> dict[str, Path]:
    """Run everything; writes ``results.csv``, ``runs.csv``, ``settings.json``, ``gradcam_*.npz``."""
    st = settings.scaled()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(st.threads)
    register_synthetic_train()
    t_start = time.perf_counter()
    benches, notes = build_benchmarks(
        st.datasets, {"synthetic": st.synthetic_sizes, "nih": {"max_images": st.nih_max_images},
                      "pneumoniamnist": {"train": st.pneumonia_train, "eval": st.pneumonia_eval}},
        st.image_size)
    rows, runs = [], []
    for bench in benches:
        notes += bench.notes
        maps = {}
        for seed in st.seeds:
            for method in st.methods:
                t0 = time.perf_counter()
                model, rec = pretrain_encoder(bench, method, seed, st, out)
                new_rows, m = evaluate(bench, method, seed, model, st, out)
                rows += new_rows
                runs.append(rec)
                if m is not None:
                    maps[method] = m
                log(f"[{time.perf_counter() - t_start:7.0f} s] {bench.name} {method} seed {seed}: "
                    f"pretrain {rec['wall_s']:.0f} s, total {time.perf_counter() - t0:.0f} s")
                pd.DataFrame(rows, columns=ROW_COLUMNS).to_csv(out / "results.csv", index=False)
        _save_figure_data(bench, st, maps, out)
    pd.DataFrame(runs).to_csv(out / "runs.csv", index=False)
    meta = {"settings": asdict(st), "requested_scale": settings.scale,
            "wall_s": time.perf_counter() - t_start, "notes": notes,
            "datasets": {b.name: {"title": b.title, **{s: len(d) for s, d in b.splits.items()},
                                  "findings": b.findings,
                                  "localisation": len(b.localisation) if b.localisation else 0,
                                  "train_patients": len(np.unique(b.splits["train"].patient_ids)),
                                  "schedule": schedule(st.steps, st.batch,
                                                       len(b.splits["train"]))}
                         for b in benches},
            "threads": torch.get_num_threads()}
    (out / "settings.json").write_text(json.dumps(meta, indent=1, default=str))
    return {"results": out / "results.csv", "runs": out / "runs.csv",
            "settings": out / "settings.json"}

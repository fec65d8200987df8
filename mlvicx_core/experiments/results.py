"""The results experiment: random init, the variants, three datasets, seeds, one budget per run.

Encoders (all at the preset's size, by default ``teaching``)::

    random        no pretraining: the trunk at its seeded random init (mlvicx_core.evaluation.baselines)
    vicreg, mlvicx, mlvicx-no-cb, mlvicx-frozen     the variants of mlvicx_core/variants.yaml

Budget: every pretraining run takes exactly ``train.max_steps`` optimizer steps of
``train.batch_size`` two-view images, the same for every encoder, dataset and seed, with a cosine
schedule spanning exactly those steps (the preset's warmup share: 4.375 of the teaching preset's
87 epochs, 70 of 1,392 steps). The pretraining set is the first
``n = spe * batch`` images of the train split, ``spe = ceil(steps / epochs)``,
``epochs = ceil(steps * batch / N)`` (:func:`schedule`). Runs go through the engine
(``train_or_load``): a run folder ``<out>/runs/<dataset>/<encoder>/seed<k>`` with the same
configuration is reused, an interrupted one resumes.

Data (:data:`DATASETS`, through the dataset registry): the synthetic phantom (patient-disjoint
splits by construction; every finding has a mask; Grad-CAM on the test split), the 1,000 real NIH
images at 64 px (patient-disjoint 70/10/20 split; Grad-CAM on every image with an expert box) and
PneumoniaMNIST (official splits; no regions). A dataset whose files are absent is skipped with a
note.

Read-outs: the evaluation pipeline (``mlvicx_core.evaluation.pipeline``) with the ``eval.*`` keys:
linear probe at every label fraction and Grad-CAM of the full-label probe, per (dataset, encoder,
seed). Settings: the ``results`` preset (``results-smoke`` for the test suite's budget). The command
line is ``mlvicx results`` (``mlvicx_core.cli``); the report is :mod:`.results_report`.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import VARIANTS, Config
from ..data.paths import shared_data_dir
from ..data.registry import SYNTHETIC_EVAL_SIZES, build_dataset, evaluation_splits
from ..data.subset import Subset
from ..evaluation.baselines import reference_encoder
from ..evaluation.pipeline import evaluate
from ..evaluation.report import ROW_COLUMNS
from ..train import train_or_load
from ..train.online_probe import OnlineProbe

ENCODERS = ("random", *VARIANTS)
#: What each dataset of the experiment is: registry name, where its files live below the shared
#: data folder, evaluation split sizes at scale 1 (train, val, test; None = all), used unless
#: ``eval.split_sizes`` sets them for every dataset.
DATASETS: dict[str, dict] = {
    "synthetic": {"title": "Synthetic phantom (embedded)", "root": None,
                  "split_sizes": SYNTHETIC_EVAL_SIZES},
    "nih": {"title": "NIH ChestX-ray14 (real, 64 px)", "root": "nih/images-64px",
            "split_sizes": (None, None, None)},
    "pneumoniamnist": {"title": "PneumoniaMNIST (real, 28 px upsampled to 64)",
                       "root": "medmnist", "split_sizes": (1500, None, None)},
}
#: What ``mlvicx results`` runs by default (``--datasets`` adds the real ones).
DEFAULT_DATASETS = ("synthetic",)
FIGURE_IMAGES = 4  # synthetic test images in the heatmap figure


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


def scaled(config: Config, scale: float) -> Config:
    """``scale`` applied to the pretraining steps (``train.max_steps``)."""
    steps = max(1, round((config.train.max_steps or 1) * scale))
    return config.set({"train.max_steps": steps})


class ExperimentDataset:
    """One dataset of the experiment: labelled splits in memory, localisation set, config."""

    def __init__(self, name: str, config: Config, root: Path | None, scale: float = 1.0) -> None:
        spec = DATASETS[name]
        self.name, self.title = name, spec["title"]
        sizes = config.eval.split_sizes or [None if s is None else max(8, round(s * scale))
                                            for s in spec["split_sizes"]]
        self.config = config.set({"data.dataset": name, "data.root": str(root) if root else None,
                                  "data.seed": 0, "eval.split_sizes": sizes})
        d = self.config.data
        # whole images at the stored size the views are cut from, as every evaluation reads them
        self.image_size = d.stored_size or d.view_size
        self.splits = evaluation_splits(d, sizes, in_memory=True)
        self.localisation = self._localisation()
        self.notes: list[str] = []

    @property
    def findings(self) -> list[str]:
        return list(self.splits["train"].findings)

    def _localisation(self):
        if self.splits["test"].has_masks:
            return self.splits["test"]
        if self.name != "nih":
            return None
        d = self.config.data
        everything = build_dataset("nih", root=d.root, split="all", image_size=self.image_size)
        boxed = [i for i in range(len(everything)) if everything.boxes(i)]
        return Subset(everything, boxed, in_memory=True) if boxed else None

    def online_probe(self) -> OnlineProbe | None:
        """The online probe of every run on this dataset (``train.eval_every`` > 0): fitted on the
        first ``train.probe_images`` of the train split, scored on the val split, the same images
        for every method and seed, so the learning curves compare."""
        if not self.config.train.eval_every:
            return None
        if getattr(self, "_probe", None) is None:
            train = self.splits["train"]
            fit = Subset(train, np.arange(min(len(train), self.config.train.probe_images)))
            self._probe = OnlineProbe.from_datasets(fit, self.splits["val"], seed=0,
                                                    features=self.config.eval.features)
        return self._probe

    def pretrain_set(self, n: int):
        """The first ``n`` images of the train split (labels unused); for the synthetic data this
        is exactly what the run's ``data.*`` keys build (``data.length = n``)."""
        train = self.splits["train"]
        if n > len(train):
            raise ValueError(f"{self.name}: {n} pretraining images asked, train has {len(train)}")
        return Subset(train, np.arange(n))

    def run_config(self, encoder: str, seed: int, out: Path) -> tuple[Config, dict]:
        """The engine's config of one pretraining run (the variant on top of the benchmark's)."""
        c = self.config
        steps, batch = c.train.max_steps, c.train.batch_size
        sch = schedule(steps, batch, len(self.splits["train"]))
        # the preset's warmup share of its schedule (teaching: 4.375 epochs of 87), over these steps
        warm = max(1, round(steps * c.optim.warmup_epochs / c.train.epochs))
        cfg = c.set({**VARIANTS[encoder], "data.length": sch["images"], "train.seed": seed,
                     "train.epochs": sch["epochs"], "optim.warmup_epochs":
                     warm / sch["steps_per_epoch"],
                     # checkpoints at epoch ends and at the end only: each is ~240 MB here
                     "train.ckpt_every": steps, "train.diag_every": max(1, steps),
                     "train.out_dir": str(out / "runs")})
        return cfg, sch


def pretrain_encoder(data: ExperimentDataset, encoder: str, seed: int, out: Path
                     ) -> tuple[torch.nn.Module, dict]:
    """Train (or reuse) one run; returns the model and a record for ``runs.csv``."""
    rec = {"dataset": data.name, "encoder": encoder, "seed": seed}
    if encoder == "random":
        return reference_encoder("random", data.config.model, seed=seed), {
            **rec, "steps": 0, "images": 0, "wall_s": 0.0, "final_loss": float("nan"),
            "run_dir": ""}
    cfg, sch = data.run_config(encoder, seed, out)
    t0 = time.perf_counter()
    run = train_or_load(cfg, run_dir=out / "runs" / data.name / encoder / f"seed{seed}",
                        dataset=data.pretrain_set(sch["images"]),
                        probe=data.online_probe() or False)
    run_dir = run.run_dir  # <seed folder>-code<fingerprint> when the seed folder is other code's
    timing = run_dir / "experiment.json"
    if run.losses:  # trained now (not reused): record how long it took
        timing.write_text(json.dumps({"wall_s": time.perf_counter() - t0,
                                      "final_loss": run.losses[-1]}))
    timed = json.loads(timing.read_text()) if timing.is_file() else {"wall_s": float("nan"),
                                                                      "final_loss": float("nan")}
    return run.model.eval(), {**rec, "steps": run.step, "images": sch["images"], **timed,
                              "run_dir": str(run_dir)}


def figure_cases(data: ExperimentDataset) -> list[tuple[int, int]]:
    """(image index in the localisation set, finding) pairs shown in the heatmap figure."""
    loc = data.localisation
    if loc is None:
        return []
    if data.name != "synthetic":  # NIH: the boxed images, their first boxed finding
        return [(i, data.findings.index(loc.boxes(i)[0][0])) for i in range(min(3, len(loc)))]
    order = [data.findings.index(f) for f in ("nodule", "mass", "pneumothorax", "effusion")
             if f in data.findings]
    masks = loc.masks
    cases = []
    for i in range(len(loc)):
        k = next((k for k in order if loc.labels[i, k] == 1 and masks[i, k].any()), None)
        if k is not None:
            cases.append((i, k))
        if len(cases) >= FIGURE_IMAGES:
            break
    return cases


def _save_figure_data(data: ExperimentDataset, maps: dict, out: Path) -> None:
    from ..evaluation.localisation import boxes_to_mask

    cases = figure_cases(data)
    if not cases or not maps:
        return
    loc = data.localisation
    regions = [loc[i]["mask"][k].numpy() if loc.has_masks
               else boxes_to_mask(loc.boxes(i), loc.image_size, data.findings[k])
               for i, k in cases]
    np.savez(out / f"gradcam_{data.name}.npz",
             images=np.stack([loc[i]["image"][0].numpy() for i, _ in cases]),
             regions=np.stack(regions), findings=np.array([data.findings[k] for _, k in cases]),
             methods=np.array(list(maps)), maps=np.stack([maps[m] for m in maps]))


def save_test_scores(ev, path: Path) -> None:
    """Every AUROC task's test labels and scores of one encoder (``<task>@<fraction>`` ->
    ``labels`` / ``scores``), so the report can compare encoders *paired* on the same images
    (:func:`~mlvicx_core.evaluation.metrics.paired_auroc_difference`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for (task, fraction), (labels, scores) in ev.test_scores.items():
        arrays[f"{task}@{fraction:g}/labels"] = np.asarray(labels)
        arrays[f"{task}@{fraction:g}/scores"] = np.asarray(scores)
    np.savez(path, **arrays)


def load_test_scores(path: Path) -> dict[tuple[str, float], tuple[np.ndarray, np.ndarray]]:
    """What :func:`save_test_scores` wrote: ``(task, fraction) -> (labels, scores)``."""
    with np.load(path) as z:
        keys = sorted({k.rsplit("/", 1)[0] for k in z.files})
        return {(k.split("@")[0], float(k.split("@")[1])): (z[f"{k}/labels"], z[f"{k}/scores"])
                for k in keys}


def run_experiment(config: Config, out: str | Path, *, seeds=(0, 1, 2),
                   datasets=DEFAULT_DATASETS, encoders=ENCODERS, scale: float = 1.0,
                   log: Callable[[str], None] = print) -> dict[str, Path]:
    """Run everything; writes ``results.csv``, ``runs.csv``, ``settings.json``, ``gradcam_*.npz``
    and ``scores/<dataset>-<encoder>-seed<k>.npz`` (test scores, for paired differences).

    ``scale`` multiplies the steps and the evaluation split sizes (``eval.split_sizes``, when set,
    are every dataset's sizes, unscaled: the smoke test's tiny splits)."""
    from ..evaluation.gradcam import finding_cams

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = scaled(config, scale)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    t_start = time.perf_counter()
    root, sets, notes = shared_data_dir(), [], []
    for name in datasets:
        rel = DATASETS[name]["root"]
        folder = root / rel if rel and root else None
        if rel and (folder is None or not folder.exists()):
            notes.append(f"{name} skipped: {folder or 'MLVICX_DATA_DIR'} not found")
            continue
        sets.append(ExperimentDataset(name, config, folder, scale))
    rows, runs = [], []
    for data in sets:
        maps: dict[str, np.ndarray] = {}
        cases = figure_cases(data)
        for seed in seeds:
            for encoder in encoders:
                t0 = time.perf_counter()
                model, rec = pretrain_encoder(data, encoder, seed, out)
                ecfg = data.config.eval.replace(seed=seed, cache_dir=str(out / "features"))

                def keep_maps(ev, encoder=encoder, seed=seed, data=data):
                    save_test_scores(ev, out / "scores" / f"{data.name}-{encoder}-seed{seed}.npz")
                    if seed == min(seeds) and cases and ev.full_probe is not None:
                        clf = ev.classifier()
                        maps[encoder] = np.stack([finding_cams(
                            clf, data.localisation[i]["image"][None], k, ecfg.gradcam_tap)[0]
                            for i, k in cases])

                rows += evaluate({encoder: model}, data.splits, ecfg, dataset=data.name,
                                 localisation=data.localisation, on_encoder=keep_maps)
                runs.append(rec)
                log(f"[{time.perf_counter() - t_start:7.0f} s] {data.name} {encoder} seed {seed}: "
                    f"pretrain {rec['wall_s']:.0f} s, total {time.perf_counter() - t0:.0f} s")
                pd.DataFrame(rows, columns=ROW_COLUMNS).to_csv(out / "results.csv", index=False)
        _save_figure_data(data, maps, out)
    pd.DataFrame(runs).to_csv(out / "runs.csv", index=False)
    c = config
    meta = {"settings": {"encoders": list(encoders), "seeds": list(seeds), "scale": scale,
                         "preset": c.preset, "view_size": c.data.view_size,
                         "steps": c.train.max_steps, "batch": c.train.batch_size,
                         "config": c.to_dict()},
            "wall_s": time.perf_counter() - t_start, "notes": notes,
            "datasets": {b.name: {"title": b.title, **{s: len(d) for s, d in b.splits.items()},
                                  "findings": b.findings,
                                  "localisation": len(b.localisation) if b.localisation else 0,
                                  "train_patients": len(np.unique(b.splits["train"].patient_ids)),
                                  "schedule": schedule(c.train.max_steps, c.train.batch_size,
                                                       len(b.splits["train"]))}
                         for b in sets},
            "threads": torch.get_num_threads()}
    (out / "settings.json").write_text(json.dumps(meta, indent=1, default=str))
    return {"results": out / "results.csv", "runs": out / "runs.csv",
            "settings": out / "settings.json"}

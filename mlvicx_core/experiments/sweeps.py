"""Experiment set-up shared by the notebooks: their parameters -> configs, evaluation data, sweeps.

The notebooks (``notebooks/0*.py``) only *call* this module, so every notebook that asks for "the
MLVICX run" or "the VICReg run" with the same parameters gets the same :class:`~mlvicx_core.config.Config`
(same content hash) and :func:`~mlvicx_core.train.train_or_load` trains it once and reloads it
everywhere.

- :func:`pretrain_config`: a notebook's plain parameters (dataset, preset, image size, budget, seed,
  and ``overrides``: a dict of any dotted config keys, e.g. ``{"aug.crop_scale": [0.5, 1.0]}``)
  plus a variant name from :data:`mlvicx_core.config.VARIANTS` -> a config;
- :func:`eval_config` and :func:`eval_splits`: the read-outs' settings and labelled data;
- :func:`sweep_grid` / :func:`run_sweep` / :func:`collect_results`: execute a notebook with
  papermill once per grid point and gather the ``results.csv`` each execution writes.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..config import (
    LEVELS,
    VARIANTS,
    Config,
    DataConfig,
    EvalConfig,
    load_config,
    package_yaml,
    variant_overrides,
)
from ..data.registry import DATASETS as REGISTRY
from ..data.registry import dataset_from_config, evaluation_splits, split_sizes
from ..evaluation.report import read_results


def check_dataset(dataset: str, data_root: str | None) -> Path | None:
    """Validate the ``dataset`` / ``data_root`` notebook parameters; returns the root as a Path."""
    if dataset not in REGISTRY:
        raise ValueError(f"dataset={dataset!r}: expected one of {sorted(REGISTRY)}")
    if dataset == "synthetic":
        return None
    if not data_root:
        raise ValueError(f"dataset={dataset!r} needs data_root: a folder of its files (e.g. "
                         "../shared/data/nih/images-64px for nih)")
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise ValueError(f"data_root={str(root)!r} is not a folder: expected {dataset} files")
    return root


def pretrain_config(variant: str = "mlvicx", *, dataset: str = "synthetic",
                    data_root: str | None = None, preset: str = "teaching",
                    image_size: int = 64, data_length: int | None = None,
                    epochs: int | None = None, batch_size: int | None = None, seed: int = 0,
                    max_steps: int | None = None, out_dir: str = "../runs",
                    overrides: dict[str, Any] | None = None) -> Config:
    """The pretraining configuration behind a notebook's parameters.

    ``variant`` names an entry of :data:`~mlvicx_core.config.VARIANTS`; ``overrides`` is applied
    last (any ``section.key``). The run folder is ``<out_dir>/<preset>-<hash>``.

    ``data_length``, ``epochs`` and ``batch_size`` left at None are the preset's: at the defaults
    this is the teaching recipe exactly, the run ``mlvicx demo`` trains (same content hash, so with
    ``out_dir`` = the demo's ``runs/`` folder every notebook and the demo share one run).
    ``image_size`` is the side the radiographs are stored and evaluated at (``data.stored_size``);
    the views are the preset's ``data.view_size`` (teaching: 32 px crops), at most ``image_size``.
    The settings every notebook run shares (diagnostics, checkpoints: outside the content hash) are
    ``mlvicx_core/notebooks.yaml``.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r}: expected one of {list(VARIANTS)}")
    root = check_dataset(dataset, data_root)
    base = load_config(preset, package_yaml("notebooks.yaml"))
    view = min(base.data.view_size, int(image_size))
    config = base.set({
        "data.dataset": dataset,
        "data.root": str(root) if root is not None else None,
        "data.view_size": view,
        "data.stored_size": int(image_size),
        "data.length": int(data_length) if data_length is not None else base.data.length,
        "data.seed": int(seed),
        "train.epochs": int(epochs) if epochs is not None else base.train.epochs,
        "train.batch_size": int(batch_size) if batch_size is not None else base.train.batch_size,
        "train.seed": int(seed),
        "train.max_steps": max_steps,
        "train.out_dir": str(out_dir),
    })
    return config.set(variant_overrides(variant)).set(dict(overrides or {}))


def eval_config(**values: Any) -> EvalConfig:
    """An :class:`EvalConfig` from keyword values (``fractions=[0.1, 1.0]``, ``n_boot=200``, ...),
    type-checked like every other key."""
    return load_config("teaching", {f"eval.{k}": v for k, v in values.items()}).eval


def eval_data(dataset: str = "synthetic", data_root: str | None = None, image_size: int = 64,
              seed: int = 0) -> DataConfig:
    """The ``data.*`` section behind a notebook's data parameters (images stored and read at
    ``image_size``)."""
    root = check_dataset(dataset, data_root)
    return DataConfig(dataset=dataset, root=str(root) if root is not None else None,
                      view_size=int(image_size), seed=int(seed))


def eval_splits(dataset: str = "synthetic", data_root: str | None = None, image_size: int = 64,
                length: int = 400, seed: int = 0) -> dict[str, Any]:
    """Labelled ``train`` / ``val`` / ``test`` splits for the read-outs: the registry's
    :func:`~mlvicx_core.data.registry.evaluation_splits`, in memory.

    ``synthetic``: ``length`` radiographs shared out by ``data.split_fractions`` (70/10/20), from its
    patient-disjoint splits. Pretraining uses the train split (labels hidden), as the paper
    pretrains on NIH's train_val list; the probes fit labels of train, pick hyper-parameters on val
    and score on test, whose patients were never pretrained on. Other datasets: their splits, every
    image (``length`` is ignored).
    """
    data = eval_data(dataset, data_root, image_size, seed)
    sizes = (split_sizes(int(length), data.split_fractions) if dataset == "synthetic"
             else (None, None, None))
    return evaluation_splits(data, sizes, in_memory=True)


def held_out(dataset: str = "synthetic", data_root: str | None = None, image_size: int = 64,
             length: int = 400, seed: int = 0):
    """Labelled images of patients never pretrained on, in memory: the test split (``length``
    synthetic radiographs; every test image of another dataset)."""
    data = eval_data(dataset, data_root, image_size, seed)
    return dataset_from_config(data, split="test", in_memory=True,
                               length=int(length) if dataset == "synthetic" else None)


def sweep_grid(lams: Sequence[float] = (), level_sets: Sequence[Sequence[str]] = (),
               bottleneck_off: bool = True, vicreg: bool = True) -> dict[str, dict[str, Any]]:
    """Named one-factor-at-a-time grid points around the default MLVICX (lambda 1, all taps, gates).

    Each point is a dict: ``encoders`` (a list holding one variant name) and ``overrides`` (dotted
    config keys), as :func:`run_sweep` reads it.
    """
    grid = {"mlvicx": {"encoders": ["mlvicx"], "overrides": {}}}
    if vicreg:
        grid["vicreg"] = {"encoders": ["vicreg"], "overrides": {}}
    for lam in lams:
        grid[f"mlvicx lam={float(lam):g}"] = {"encoders": ["mlvicx"],
                                              "overrides": {"loss.lam": float(lam)}}
    for levels in level_sets:
        unknown = [lv for lv in levels if lv not in LEVELS]
        if unknown or not levels:
            raise ValueError(f"level set {list(levels)}: expected a non-empty subset of {LEVELS}")
        grid[f"mlvicx levels={'+'.join(levels)}"] = {"encoders": ["mlvicx"],
                                                     "overrides": {"model.levels": list(levels)}}
    if bottleneck_off:
        grid["mlvicx-no-cb"] = {"encoders": ["mlvicx-no-cb"], "overrides": {}}
    return grid


def point_folder(name: str) -> str:
    """A file-system-safe folder name for a grid point."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


#: The keys of ``common`` that :func:`run_sweep` passes to :func:`pretrain_config`.
PRETRAIN_KEYS = ("dataset", "data_root", "preset", "image_size", "data_length", "epochs",
                 "batch_size", "seed", "max_steps", "out_dir")


def run_sweep(grid: dict[str, dict[str, Any]], out_dir: str | Path,
              common: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Path]:
    """Pretrain (or reuse) and read out every grid point in this process; returns
    ``{point: results.csv}``.

    ``common``: the notebook's parameters, :data:`PRETRAIN_KEYS` for :func:`pretrain_config` (its
    ``out_dir`` holds the runs, shared with the other notebooks) and ``eval_length``,
    ``fractions``, ``n_boot`` for the read-outs (linear probe and kNN on the same
    :func:`eval_splits` for every point). A point's ``results.csv`` and ``params.json`` go to
    ``<out_dir>/<point_folder(point)>``; a point whose folder holds results of the same parameters
    is not computed again, one with other parameters is. ``progress``: a bar over the points.
    """
    import json

    from tqdm.auto import tqdm

    from ..evaluation import evaluate
    from ..train import train_or_load

    common = dict(common or {})
    pre = {k: common[k] for k in PRETRAIN_KEYS if k in common}
    unknown = set(common) - set(PRETRAIN_KEYS) - {"eval_length", "fractions", "n_boot"}
    if unknown:
        raise ValueError(f"common: unknown parameter(s) {sorted(unknown)}; expected some of "
                         f"{[*PRETRAIN_KEYS, 'eval_length', 'fractions', 'n_boot']}")
    seed = int(pre.get("seed", 0))
    settings = eval_config(fractions=list(common.get("fractions", [1.0])), tasks=["probe", "knn"],
                           n_boot=int(common.get("n_boot", 200)), seed=seed)
    splits = None
    out = Path(out_dir)
    done: dict[str, Path] = {}
    bar = tqdm(total=len(grid), desc=f"sweep ({len(grid)} points)", unit="point",
               disable=not progress)
    for name, point in grid.items():
        bar.set_description(f"sweep point {name}")
        (variant,) = point["encoders"]
        folder = (out / point_folder(name)).resolve()
        csv, stamp = folder / "results.csv", folder / "params.json"
        params = json.loads(json.dumps({**common, **point}))
        same = stamp.is_file() and json.loads(stamp.read_text()) == params
        if not (csv.is_file() and same):
            folder.mkdir(parents=True, exist_ok=True)
            csv.unlink(missing_ok=True)
            config = pretrain_config(variant, overrides=point.get("overrides"), **pre)
            model = train_or_load(config).model
            if splits is None:
                splits = eval_splits(pre.get("dataset", "synthetic"), pre.get("data_root"),
                                     pre.get("image_size", 64),
                                     int(common.get("eval_length", 400)), seed)
            evaluate({variant: model}, splits, settings, dataset=pre.get("dataset", "synthetic"),
                     out_dir=folder)
            stamp.write_text(json.dumps(params, indent=1))
        done[name] = csv
        bar.update(1)
    bar.set_description(f"sweep ({len(grid)} points)")
    bar.close()
    return done


def collect_results(csvs: dict[str, Path], tasks: Sequence[str] = ("probe", "knn"),
                    finding: str = "mean") -> pd.DataFrame:
    """One row per (grid point, encoder, task, fraction): the ``finding`` AUROC with its CI."""
    frames = []
    for name, csv in csvs.items():
        df = read_results(csv)
        df = df[df["task"].isin(tasks) & (df["finding"] == finding) & (df["metric"] == "auroc")]
        frames.append(df.assign(point=name))
    if not frames:
        raise ValueError("no results to collect")
    table = pd.concat(frames, ignore_index=True)
    table["k"] = table["k"].astype("Int64")  # kNN's chosen k as a whole number, empty for the probe
    return table[["point", "encoder", "task", "k", "fraction", "value", "ci_low", "ci_high", "n"]]


def label_fraction_table(results_csv: str | Path, finding: str = "mean") -> pd.DataFrame:
    """Readable pivot of a read-out ``results.csv``: rows (task, encoder), columns label fraction,
    cells ``AUROC [low, high]`` (and the chosen ``k`` for kNN)."""
    df = read_results(results_csv)
    df = df[(df["finding"] == finding) & (df["metric"] == "auroc")].copy()
    df["cell"] = [f"{v:.3f} [{lo:.3f}, {hi:.3f}]" + ("" if pd.isna(k) else f" k={int(k)}")
                  for v, lo, hi, k in zip(df["value"], df["ci_low"], df["ci_high"], df["k"])]
    return df.pivot_table(index=["task", "encoder"], columns="fraction", values="cell",
                          aggfunc="first", sort=False)


def diagnostics_table(models: dict, images, branch: str = "global") -> pd.DataFrame:
    """Collapse diagnostics (:func:`~mlvicx_core.train.embedding_diagnostics`) of each model's
    ``branch`` embeddings of the same images (B, 1, S, S), one row per model (eval mode, no grad)."""
    import torch

    from ..train import embedding_diagnostics

    rows = {}
    for name, model in models.items():
        model.eval()
        with torch.no_grad():
            out = model(images)
        z = out.global_ if branch == "global" else out.multi
        rows[name] = {"embedding dim": z.shape[1], **embedding_diagnostics(z)}
    return pd.DataFrame(rows).T

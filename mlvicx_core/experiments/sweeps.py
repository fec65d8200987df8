"""Experiment set-up shared by the notebooks: one pretraining recipe, the evaluation data, sweeps.

The notebooks (``notebooks/0*.py``) only *call* this module, so every notebook that asks for "the
MLVICX run" or "the VICReg run" with the same parameters gets the same :class:`TrainConfig` (same
content hash) and :func:`~mlvicx_core.train.train_or_load` trains it once and reloads it everywhere.

- :func:`pretrain_config`: notebook parameters -> a :class:`TrainConfig` (``variant`` ``"mlvicx"`` or
  ``"vicreg"``; ``lam``, ``levels``, ``context_bottleneck``, ``std_coeff`` for the ablations).
- :func:`eval_dataset`: the labelled images the read-outs use (synthetic radiographs with lesion
  masks drawn from a different seed than pretraining, or NIH ChestX-ray14 PNGs with their labels).
- :func:`run_sweep` / :func:`collect_results`: execute a notebook with papermill once per grid point
  and gather the ``results.csv`` each execution writes into one table.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..config import LEVELS
from ..train import TrainConfig, apply_overrides, load_config

DATASETS = ("synthetic", "nih")
VARIANTS = ("mlvicx", "vicreg")


def check_dataset(dataset: str, data_root: str | None) -> Path | None:
    """Validate the ``dataset`` / ``data_root`` notebook parameters; returns the root as a Path."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset={dataset!r}: expected one of {DATASETS}")
    if dataset == "synthetic":
        return None
    if not data_root:
        raise ValueError("dataset='nih' needs data_root: a folder of NIH ChestX-ray14 PNGs "
                         "(e.g. ../shared/data/nih/images-64px)")
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise ValueError(f"data_root={str(root)!r} is not a folder: expected NIH ChestX-ray14 PNGs")
    return root


def pretrain_config(variant: str = "mlvicx", *, dataset: str = "synthetic",
                    data_root: str | None = None, preset: str = "teaching",
                    image_size: int = 64, data_length: int = 384, epochs: int = 2,
                    batch_size: int = 32, seed: int = 0, lam: float = 1.0,
                    levels: Sequence[str] | None = None, context_bottleneck: bool = True,
                    std_coeff: float | None = None, out_dir: str = "../runs/notebooks",
                    max_steps: int | None = None, extra: Iterable[str] = ()) -> TrainConfig:
    """The pretraining configuration behind a notebook's parameters.

    ``variant="vicreg"`` switches off the multi-level branch and the context bottlenecks (the
    baseline); ``lam``, ``levels`` (``None`` = all five taps) and ``context_bottleneck`` are ignored
    for it. ``std_coeff`` overrides the variance weight (0 demonstrates collapse). ``extra`` is any
    further ``key=value`` override. The run folder is ``<out_dir>/<preset>-<hash>``.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r}: expected one of {VARIANTS}")
    root = check_dataset(dataset, data_root)
    overrides: dict[str, Any] = {
        "model.image_size": int(image_size),
        "data.dataset": dataset,
        "data.root": str(root) if root is not None else None,
        "data.length": int(data_length),
        "data.seed": int(seed),
        "data.num_workers": 0,
        "train.epochs": int(epochs),
        "train.batch_size": int(batch_size),
        "train.seed": int(seed),
        "train.max_steps": max_steps,
        "train.out_dir": str(out_dir),
        # diagnostics and checkpoints are not part of the content hash: set them for every run
        # alike so figures have enough points and each run keeps one checkpoint
        "train.diag_every": 4,
        "train.ckpt_every": 10_000,
        "train.keep_last": 1,
        "train.tensorboard": False,
    }
    if variant == "vicreg":
        overrides.update({"model.multilevel": False, "model.context_bottleneck": False})
    else:
        chosen = tuple(levels) if levels is not None else LEVELS
        overrides.update({"model.lam": float(lam), "model.levels": list(chosen),
                          "model.context_bottleneck": bool(context_bottleneck)})
    if std_coeff is not None:
        overrides["model.std_coeff"] = float(std_coeff)
    config = load_config(preset, overrides)
    extra = list(extra)
    return apply_overrides(config, extra) if extra else config


def eval_dataset(dataset: str = "synthetic", data_root: str | None = None, image_size: int = 64,
                 length: int = 400, seed: int = 0):
    """Labelled images for the read-outs (probe, kNN, UMAP, Grad-CAM).

    ``synthetic``: :class:`~mlvicx_core.data.SyntheticCXR` with lesion masks, drawn with seed
    ``seed + 1000`` so that it shares no radiograph with the pretraining stream (seed ``seed``).
    ``nih``: every NIH ChestX-ray14 image in ``data_root`` (labels from the bundled NIH table, boxes
    where NIH has them); ``length`` is ignored.
    """
    root = check_dataset(dataset, data_root)
    if dataset == "synthetic":
        from ..data.phantom_dataset import SyntheticCXR

        return SyntheticCXR(length=int(length), image_size=int(image_size), seed=int(seed) + 1000)
    from ..data.nih import NIHChestXray14

    return NIHChestXray14(root=root, image_dir=root, split="all", image_size=int(image_size))


def sweep_grid(lams: Sequence[float] = (), level_sets: Sequence[Sequence[str]] = (),
               bottleneck_off: bool = True, vicreg: bool = True) -> dict[str, dict[str, Any]]:
    """Named one-factor-at-a-time grid points around the default MLVICX (lambda 1, all taps, gates).

    Each point is a dict of parameters for the probe notebook: ``encoders`` (``["mlvicx"]`` or
    ``["vicreg"]``), ``lam``, ``levels`` (``None`` = all taps) and ``context_bottleneck``.
    """
    base = {"encoders": ["mlvicx"], "lam": 1.0, "levels": None, "context_bottleneck": True}
    grid = {"mlvicx": dict(base)}
    if vicreg:
        grid["vicreg"] = {**base, "encoders": ["vicreg"]}
    for lam in lams:
        grid[f"mlvicx lam={float(lam):g}"] = {**base, "lam": float(lam)}
    for levels in level_sets:
        unknown = [lv for lv in levels if lv not in LEVELS]
        if unknown or not levels:
            raise ValueError(f"level set {list(levels)}: expected a non-empty subset of {LEVELS}")
        grid[f"mlvicx levels={'+'.join(levels)}"] = {**base, "levels": list(levels)}
    if bottleneck_off:
        grid["mlvicx no bottleneck"] = {**base, "context_bottleneck": False}
    return grid


def point_folder(name: str) -> str:
    """A file-system-safe folder name for a grid point."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def run_sweep(notebook: str | Path, grid: dict[str, dict[str, Any]], out_dir: str | Path,
              common: dict[str, Any] | None = None, kernel_name: str = "python3",
              ) -> dict[str, Path]:
    """Execute ``notebook`` with papermill once per grid point; returns ``{point: results.csv}``.

    Each execution gets ``common`` plus the point's parameters plus ``results_dir`` (where the
    notebook must write ``results.csv``); the executed copy is saved next to it as ``run.ipynb``.
    A point is not executed again when its folder holds ``results.csv`` from the same parameters
    (``params.json``); with other parameters it is executed again.
    """
    import json

    import papermill

    notebook = Path(notebook).resolve()
    if not notebook.is_file():
        raise FileNotFoundError(f"notebook {notebook} not found")
    out = Path(out_dir)
    done: dict[str, Path] = {}
    for name, point in grid.items():
        folder = (out / point_folder(name)).resolve()
        csv, stamp = folder / "results.csv", folder / "params.json"
        params = {**(common or {}), **point, "results_dir": str(folder)}
        same = stamp.is_file() and json.loads(stamp.read_text()) == json.loads(json.dumps(params))
        if not (csv.is_file() and same):
            folder.mkdir(parents=True, exist_ok=True)
            csv.unlink(missing_ok=True)
            papermill.execute_notebook(str(notebook), str(folder / "run.ipynb"), parameters=params,
                                       cwd=str(notebook.parent), kernel_name=kernel_name,
                                       progress_bar=False)
            if not csv.is_file():
                raise RuntimeError(f"{notebook.name} ran for point {name!r} but wrote no {csv}")
            stamp.write_text(json.dumps(params, indent=1))
        done[name] = csv
    return done


def collect_results(csvs: dict[str, Path], task_prefix: str = "linear probe",
                    finding: str = "mean") -> pd.DataFrame:
    """One row per (grid point, encoder, task, fraction): the ``finding`` AUROC with its CI."""
    frames = []
    for name, csv in csvs.items():
        df = pd.read_csv(csv)
        df = df[df["task"].astype(str).str.startswith(task_prefix) & (df["finding"] == finding)
                & (df["metric"] == "auroc")]
        frames.append(df.assign(point=name))
    if not frames:
        raise ValueError("no results to collect")
    table = pd.concat(frames, ignore_index=True)
    return table[["point", "encoder", "task", "fraction", "value", "ci_low", "ci_high", "n"]]


def label_fraction_table(results_csv: str | Path, finding: str = "mean") -> pd.DataFrame:
    """Readable pivot of a read-out ``results.csv``: rows (task, encoder), columns label fraction,
    cells ``AUROC [low, high]``."""
    df = pd.read_csv(results_csv)
    df = df[(df["finding"] == finding) & (df["metric"] == "auroc")].copy()
    df["task"] = df["task"].astype(str).str.replace(r" \(k=\d+\)", "", regex=True)
    df["cell"] = [f"{v:.3f} [{lo:.3f}, {hi:.3f}]" for v, lo, hi in
                  zip(df["value"], df["ci_low"], df["ci_high"])]
    return df.pivot_table(index=["task", "encoder"], columns="fraction", values="cell",
                          aggfunc="first")


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

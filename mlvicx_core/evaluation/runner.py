"""One evaluation run: every encoder through the same splits, fractions and read-outs.

The same code scores every encoder: pretrained checkpoints (MLVICX, VICReg) and the baselines
(random initialisation, ImageNet-supervised when its weights are available locally). Splits are made
by patient once (seeded) and shared by all encoders; label fractions are drawn from the training
split, again identically for every encoder.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..model import MLVICX
from .embeddings import extract_features
from .finetune import Classifier, finetune, predict
from .gradcam import finding_cams, localisation_eval, overlay
from .knn import knn_scores, select_k
from .metrics import bootstrap_auroc
from .probe import fit_linear_probe
from .report import write_results
from .segmentation import predict_dice, train_segmentation
from .splits import label_fraction, patient_split
from .trunk import Trunk

TASKS = ("probe", "knn", "finetune", "segmentation", "gradcam", "umap")


class DatasetView(torch.utils.data.Dataset):
    """A subset of a contract dataset that keeps its ``findings``, ``labels``, masks and boxes."""

    def __init__(self, base, indices: np.ndarray) -> None:
        self.base, self.indices = base, np.asarray(indices, dtype=np.int64)
        self.findings = list(base.findings)
        self.has_masks = getattr(base, "has_masks", False)
        self.labels = np.asarray(base.labels)[self.indices]
        self.patient_ids = np.asarray(base.patient_ids)[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self.base[int(self.indices[i])]

    def boxes(self, i: int):
        return self.base.boxes(int(self.indices[i]))


@dataclass
class EvalSettings:
    fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    tasks: tuple[str, ...] = ("probe", "knn")
    val: float = 0.1
    test: float = 0.2
    seed: int = 0
    n_boot: int = 1000
    batch_size: int = 64
    device: str | None = None
    cache_dir: str | None = None
    keep_gates: bool = False
    finetune_epochs: int = 5
    finetune_lr: float = 1e-4
    seg_epochs: int = 10
    seg_fraction: float = 1.0
    gradcam_tap: str = "layer4"
    gradcam_images: int = 64  # positive test images scored per finding (Grad-CAM is per image)
    tolerance: float = 0.0
    colour_by: tuple[str, ...] = field(default_factory=tuple)


def _auroc_rows(encoder: str, task: str, fraction: float, findings: list[str], labels, scores,
                settings: EvalSettings, n: int) -> list[dict]:
    res = bootstrap_auroc(labels, scores, n_boot=settings.n_boot, seed=settings.seed)
    rows = [{"encoder": encoder, "task": task, "fraction": fraction, "finding": f,
             "metric": "auroc", "value": res.per_finding[k], "ci_low": res.per_finding_ci[k, 0],
             "ci_high": res.per_finding_ci[k, 1], "n": n,
             "note": "" if not np.isnan(res.per_finding[k])
             else f"{f}: a single class in the test split, AUROC undefined"}
            for k, f in enumerate(findings)]
    rows.append({"encoder": encoder, "task": task, "fraction": fraction, "finding": "mean",
                 "metric": "auroc", "value": res.mean, "ci_low": res.mean_ci[0],
                 "ci_high": res.mean_ci[1], "n": n, "note": ""})
    return rows


def evaluate_encoder(name: str, model: MLVICX, dataset, split: dict[str, np.ndarray],
                     settings: EvalSettings, out_dir: Path) -> list[dict]:
    """All requested read-outs of one encoder; returns result rows and writes figures."""
    findings = list(dataset.findings)
    labels = np.asarray(dataset.labels, dtype=np.float64)
    pids = np.asarray(dataset.patient_ids).astype(str)
    tr, va, te = split["train"], split["val"], split["test"]
    rows: list[dict] = []
    feats = None
    if {"probe", "knn", "umap", "gradcam"} & set(settings.tasks):
        feats = extract_features(model, dataset, "trunk", gates=settings.keep_gates,
                                 batch_size=settings.batch_size, device=settings.device,
                                 cache_dir=settings.cache_dir)
        if not np.array_equal(feats.index, np.arange(len(dataset))):
            raise RuntimeError("unreadable images were skipped: evaluate with on_error='raise'")
    x = feats.x if feats is not None else None
    trunk = Trunk(model, keep_gates=settings.keep_gates)
    full_probe = None
    for fraction in settings.fractions:
        sub = tr[label_fraction(pids[tr], labels[tr], fraction, seed=settings.seed)]
        if "probe" in settings.tasks:
            probe = fit_linear_probe(x[sub], labels[sub], x[va], labels[va])
            rows += _auroc_rows(name, "linear probe", fraction, findings, labels[te],
                                probe.scores(x[te]), settings, len(te))
            if fraction == max(settings.fractions):
                full_probe = probe
        if "knn" in settings.tasks:
            k, _ = select_k(x[sub], labels[sub], x[va], labels[va])
            rows += _auroc_rows(name, f"kNN (k={k})", fraction, findings, labels[te],
                                knn_scores(x[sub], labels[sub], x[te], k), settings, len(te))
        if "finetune" in settings.tasks:
            res = finetune(trunk, len(findings), DatasetView(dataset, sub), DatasetView(dataset, va),
                           epochs=settings.finetune_epochs, lr=settings.finetune_lr,
                           batch_size=min(settings.batch_size, 32), device=settings.device,
                           seed=settings.seed)
            scores, test_labels = predict(res.model, DatasetView(dataset, te), settings.batch_size,
                                          settings.device)
            rows += _auroc_rows(name, "fine-tune", fraction, findings, test_labels, scores,
                                settings, len(te))
    if "segmentation" in settings.tasks:
        if not getattr(dataset, "has_masks", False):
            rows.append({"encoder": name, "task": "segmentation", "metric": "dice",
                         "note": "skipped: the dataset has no masks"})
        else:
            sub = tr[label_fraction(pids[tr], labels[tr], settings.seg_fraction, seed=settings.seed)]
            seg = train_segmentation(trunk, DatasetView(dataset, sub), DatasetView(dataset, va),
                                     epochs=settings.seg_epochs, device=settings.device,
                                     seed=settings.seed)
            d = predict_dice(seg.model, DatasetView(dataset, te), device=settings.device)
            for k, f in enumerate(findings):
                rows.append({"encoder": name, "task": "segmentation", "fraction": settings.seg_fraction,
                             "finding": f, "metric": "dice", "value": float(d[:, k].mean()),
                             "n": len(te), "note": ""})
    if "gradcam" in settings.tasks and full_probe is not None:
        rows += _gradcam(name, trunk, full_probe, dataset, te, settings, out_dir)
    if "umap" in settings.tasks:
        _umap(name, x[te], labels[te], findings, dataset, te, settings, out_dir)
    return rows


def _gradcam(name, trunk, probe, dataset, te, settings, out_dir) -> list[dict]:
    import matplotlib
    import matplotlib.pyplot as plt

    matplotlib.use("Agg", force=False)
    clf = Classifier(trunk, len(dataset.findings), head=probe.as_torch_head()).to(
        settings.device or "cpu")
    view = DatasetView(dataset, te)
    rows = []
    for k, f in enumerate(dataset.findings):
        loc = localisation_eval(clf, view, k, tap=settings.gradcam_tap,
                                tolerance=settings.tolerance,
                                max_images=settings.gradcam_images)
        for metric in ("pointing_game", "energy_inside", "chance_pointing", "chance_energy"):
            rows.append({"encoder": name, "task": f"Grad-CAM {settings.gradcam_tap}",
                         "fraction": max(settings.fractions), "finding": f, "metric": metric,
                         "value": loc[metric], "n": loc["n"],
                         "note": "" if loc["n"] else f"{f}: no positive image with a region"})
    # a small overlay gallery: the first test images (columns) x every finding (rows)
    images = torch.stack([view[i]["image"] for i in range(min(4, len(view)))])
    fig, axes = plt.subplots(len(dataset.findings), len(images),
                             figsize=(2 * len(images), 2 * len(dataset.findings)), squeeze=False)
    for k, f in enumerate(dataset.findings):
        maps = finding_cams(clf, images, k, settings.gradcam_tap)
        for j, ax in enumerate(axes[k]):
            ax.imshow(overlay(images[j, 0].numpy(), maps[j]))
            ax.set_axis_off()
            ax.set_title(f"{f}" if j == 0 else "", fontsize=8)
    fig.tight_layout()
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / "figures" / f"gradcam-{name}.png", dpi=100)
    plt.close(fig)
    return rows


def _umap(name, x, labels, findings, dataset, te, settings, out_dir) -> None:
    from .umap_view import colour_table, plot_umap, umap_embed

    meta = getattr(dataset, "metadata", None)
    meta = meta.iloc[te].reset_index(drop=True) if meta is not None else None
    table = colour_table(labels, findings, meta)
    coords = umap_embed(x, seed=settings.seed)
    for col in settings.colour_by or (findings[0],):
        if col not in table:
            raise ValueError(f"colour_by={col!r}: expected a finding or metadata column, one of "
                             f"{list(table.columns)}")
        safe = "".join(c if c.isalnum() else "_" for c in col)
        plot_umap(coords, table[col], col, out_dir / "figures" / f"umap-{name}-{safe}.png")


def run_evaluation(encoders: dict[str, MLVICX | str], dataset, out_dir: str | Path,
                   settings: EvalSettings | None = None) -> tuple[Path, Path]:
    """Evaluate every encoder on ``dataset``; a string value is a skip reason (e.g. no weights).

    Writes ``results.csv``, ``results.md`` and ``figures/`` under ``out_dir``.
    """
    settings = settings or EvalSettings()
    bad = sorted(set(settings.tasks) - set(TASKS))
    if bad:
        raise ValueError(f"tasks {bad}: expected some of {TASKS}")
    if "gradcam" in settings.tasks and "probe" not in settings.tasks:
        raise ValueError("task 'gradcam' explains the linear probe's head: add the 'probe' task")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    split = patient_split(dataset.patient_ids, settings.val, settings.test, settings.seed)
    rows: list[dict] = []
    for name, model in encoders.items():
        if isinstance(model, str):
            rows.append({"encoder": name, "task": "all", "note": f"skipped: {model}"})
            continue
        rows += evaluate_encoder(name, model, dataset, split, settings, out)
    return write_results(rows, out)

"""The one evaluation pipeline: every encoder through the same splits, fractions and read-outs.

Used by ``mlvicx evaluate``, the notebooks, the demo and the results experiment, so "probe AUROC"
means one computation everywhere. Inputs: encoders (``{name: MLVICX}``; a string value is a reason
the encoder is unavailable, reported as a note), the ``train`` / ``val`` / ``test`` splits of one
dataset (``mlvicx_core.data.registry``) and an :class:`~mlvicx_core.config.EvalConfig`. Label
fractions are drawn from the training split per patient (:func:`~mlvicx_core.data.splits.label_fraction`),
identically for every encoder; hyper-parameters (probe C, kNN k, fine-tuning epoch) are chosen on
``val``; every score is on ``test``.

Rows have one schema, :data:`~.report.ROW_COLUMNS`::

    dataset, encoder, seed, task, k, fraction, finding, metric, value, ci_low, ci_high, n, note

``task`` is ``probe``, ``knn``, ``finetune``, ``segmentation``, ``gradcam`` or ``umap``; ``k`` is the
kNN's chosen k (empty elsewhere); ``finding`` is a finding name or ``mean``; ``metric`` is ``auroc``,
``dice``, ``pointing_game``, ``energy_inside``, ``chance_pointing``, ``chance_energy``,
``n_constant`` (Grad-CAM maps left out because constant) or ``figure``. A task that fails for one encoder leaves a row with the reason in
``note`` and the others still run; with ``out_dir`` the results are rewritten after every task, so
finished work is never lost.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..config import TASKS, ConfigError, EvalConfig
from ..data.splits import label_fraction
from ..data.subset import Subset
from .embeddings import extract_features
from .metrics import bootstrap_auroc
from .report import row, write_results


def check_settings(config: EvalConfig, splits: dict, colour_columns: list[str] | None = None
                   ) -> None:
    """Refuse inconsistent settings before any work (each message names the key)."""
    missing = [s for s in ("train", "val", "test") if s not in splits]
    if missing:
        raise ConfigError(f"evaluation needs the splits train, val and test; missing {missing}")
    if "gradcam" in config.tasks:
        check_gradcam_features(config)
    if "gradcam" in config.tasks and "probe" not in config.tasks:
        raise ConfigError("eval.tasks has 'gradcam', which explains the linear probe: add 'probe'")
    if "umap" in config.tasks and config.colour_by:
        columns = colour_columns if colour_columns is not None else colour_choices(splits["test"])
        bad = [c for c in config.colour_by if c not in columns]
        if bad:
            raise ConfigError(f"eval.colour_by={list(config.colour_by)}: {bad} unknown; expected "
                             f"findings or metadata columns of the test split: {columns}")


def check_gradcam_features(config: EvalConfig) -> None:
    """Grad-CAM explains a probe on the pooled trunk (the classifier's input): ``eval.features``
    must be ``trunk``."""
    if config.features != "trunk":
        raise ConfigError(f"eval.features={config.features!r}: Grad-CAM explains a probe on the "
                          "pooled trunk: set eval.features=trunk")


def colour_choices(dataset) -> list[str]:
    """What UMAP pictures can be coloured by: the findings, then metadata columns."""
    meta = getattr(dataset, "metadata", None)
    return list(dataset.findings) + ([c for c in meta.columns if c not in ("image",)]
                                     if meta is not None else [])


class Evaluation:
    """One encoder on one dataset: features once, then each task (see :func:`evaluate`)."""

    def __init__(self, name: str, model, splits: dict, config: EvalConfig, dataset: str,
                 out_dir: Path | None, localisation=None) -> None:
        self.name, self.model, self.splits, self.cfg = name, model, splits, config
        self.dataset, self.out_dir = dataset, out_dir
        self.localisation = localisation if localisation is not None else splits["test"]
        self.findings = list(splits["train"].findings)
        self._feats: dict | None = None
        self.full_probe = None
        #: (task, fraction) -> (test labels, test scores) of every AUROC task run, for paired
        #: comparisons of encoders on the same images (the demo's difference)
        self.test_scores: dict[tuple[str, float], tuple[np.ndarray, np.ndarray]] = {}

    def base(self, **fields) -> dict:
        return row(dataset=self.dataset, encoder=self.name, seed=self.cfg.seed, **fields)

    # -- features ---------------------------------------------------------------------------------
    @property
    def feats(self) -> dict:
        if self._feats is None:
            c = self.cfg
            self._feats = {s: extract_features(self.model, ds, c.features, gates=c.keep_gates,
                                               batch_size=c.batch_size, device=c.device,
                                               cache_dir=c.cache_dir)
                           for s, ds in self.splits.items() if s in ("train", "val", "test")}
        return self._feats

    def fraction_subsets(self):
        """``(fraction, indices into train or None with a skip note)`` for every label fraction."""
        tr = self.feats["train"]
        n_pat = len(np.unique(tr.patient_ids))
        for f in self.cfg.fractions:
            if f < 1 and round(f * n_pat) < self.cfg.min_patients:
                yield f, None, (f"skipped: {f:g} x {n_pat} training patients < "
                                f"eval.min_patients={self.cfg.min_patients}")
                continue
            yield f, label_fraction(tr.patient_ids, tr.labels, f, seed=self.cfg.seed), ""

    def auroc_rows(self, task: str, fraction: float, labels, scores, note: str = "",
                   k: int | None = None) -> list[dict]:
        res = bootstrap_auroc(labels, scores, n_boot=self.cfg.n_boot, seed=self.cfg.seed)
        n = len(labels)
        rows = [self.base(task=task, k=k, fraction=fraction, finding=f, metric="auroc",
                          value=res.per_finding[j], ci_low=res.per_finding_ci[j, 0],
                          ci_high=res.per_finding_ci[j, 1], n=n,
                          note="" if np.isfinite(res.per_finding[j])
                          else "a single class in the test split: AUROC undefined")
                for j, f in enumerate(self.findings)]
        rows.append(self.base(task=task, k=k, fraction=fraction, finding="mean", metric="auroc",
                              value=res.mean, ci_low=res.mean_ci[0], ci_high=res.mean_ci[1], n=n,
                              note=note if np.isfinite(res.mean) else
                              "no finding has both classes in the test split: undefined"))
        return rows

    def per_fraction(self, task: str, score: Callable) -> list[dict]:
        """AUROC rows of ``task`` at every label fraction: ``score(fraction, indices)`` returns
        ``(test labels, test scores, note, k)`` for the training subset ``indices``."""
        if not self.findings:
            return [self.base(task=task, note="skipped: the dataset has no labels")]
        rows = []
        for f, sub, note in self.fraction_subsets():
            if sub is None:
                rows.append(self.base(task=task, fraction=f, finding="mean", metric="auroc",
                                      note=note))
                continue
            labels, scores, note, k = score(f, sub)
            self.test_scores[(task, f)] = (labels, scores)
            rows += self.auroc_rows(task, f, labels, scores, note, k=k)
        return rows

    # -- tasks ----------------------------------------------------------------------------------
    def probe(self) -> list[dict]:
        from .probe import fit_probe

        tr, va, te = self.feats["train"], self.feats["val"], self.feats["test"]

        def score(f, sub):
            probe = fit_probe(tr.x[sub], tr.labels[sub], va.x, va.labels, self.cfg)
            if f == max(self.cfg.fractions):
                self.full_probe = probe
            return te.labels, probe.scores(te.x), f"C={probe.C:g}; {len(sub)} training images", None

        return self.per_fraction("probe", score)

    def factors(self) -> list[dict]:
        """The linear probe on the factors each image records (``evaluation.factors``)."""
        from .factors import factor_labels
        from .probe import fit_linear_probe

        parts = ("train", "val", "test")
        metas = [getattr(self.splits[s], "metadata", None) for s in parts]
        if any(m is None for m in metas):
            return [self.base(task="factors", note="skipped: the dataset records no metadata")]
        f = [self.feats[s] for s in parts]
        names, (ytr, yva, yte) = factor_labels(
            *(m.iloc[x.index].reset_index(drop=True) for m, x in zip(metas, f)))
        if not names:
            return [self.base(task="factors", note="skipped: no metadata column is a factor")]
        probe = fit_linear_probe(f[0].x, ytr, f[1].x, yva, Cs=self.cfg.probe_cs,
                                 max_iter=self.cfg.probe_max_iter)
        res = bootstrap_auroc(yte, probe.scores(f[2].x), n_boot=self.cfg.n_boot,
                              seed=self.cfg.seed)
        note = f"C={probe.C:g}; {len(ytr)} training images"
        return [self.base(task="factors", fraction=1.0, finding=name, metric="auroc",
                          value=res.per_finding[j], ci_low=res.per_finding_ci[j, 0],
                          ci_high=res.per_finding_ci[j, 1],
                          n=int(np.sum(~np.isnan(yte[:, j]))), note=note)
                for j, name in enumerate(names)]

    def knn(self) -> list[dict]:
        from .knn import knn_scores, select_k

        tr, va, te = self.feats["train"], self.feats["val"], self.feats["test"]

        def score(f, sub):
            k, _ = select_k(tr.x[sub], tr.labels[sub], va.x, va.labels, ks=self.cfg.knn_ks)
            return (te.labels, knn_scores(tr.x[sub], tr.labels[sub], te.x, k),
                    f"{len(sub)} training images", k)

        return self.per_fraction("knn", score)

    def finetune(self) -> list[dict]:
        from .finetune import finetune, predict
        from .trunk import Trunk

        c, tr = self.cfg, self.splits["train"]

        def score(f, sub):
            res = finetune(Trunk(self.model, keep_gates=c.keep_gates), len(self.findings),
                           Subset(tr, sub), self.splits["val"], epochs=c.finetune_epochs,
                           lr=c.finetune_lr, batch_size=min(c.batch_size, 32), device=c.device,
                           seed=c.seed)
            scores, labels = predict(res.model, self.splits["test"], c.batch_size, c.device)
            return labels, scores, f"{len(sub)} training images", None

        return self.per_fraction("finetune", score)

    def segmentation(self) -> list[dict]:
        from .segmentation import predict_dice, train_segmentation
        from .trunk import Trunk

        c, tr, te = self.cfg, self.splits["train"], self.splits["test"]
        if not getattr(tr, "has_masks", False):
            return [self.base(task="segmentation", metric="dice",
                              note="skipped: the dataset has no masks")]
        sub = label_fraction(tr.patient_ids, tr.labels, c.seg_fraction, seed=c.seed)
        seg = train_segmentation(Trunk(self.model, keep_gates=c.keep_gates), Subset(tr, sub),
                                 self.splits["val"], epochs=c.seg_epochs, device=c.device,
                                 seed=c.seed)
        d = predict_dice(seg.model, te, device=c.device)
        return [self.base(task="segmentation", fraction=c.seg_fraction, finding=f, metric="dice",
                          value=float(d[:, j].mean()), n=len(te))
                for j, f in enumerate(self.findings)]

    def classifier(self):
        """The frozen trunk with the full-label probe as head (what Grad-CAM explains)."""
        from .finetune import Classifier

        return Classifier.with_probe(self.model, self.full_probe, self.cfg.keep_gates)

    def gradcam(self) -> list[dict]:
        from .gradcam import localisation_eval

        c = self.cfg
        if self.full_probe is None:
            return [self.base(task="gradcam", note="skipped: needs the probe at the largest "
                                                   "label fraction")]
        clf = self.classifier().to(c.device or "cpu")
        rows = []
        loc = self.localisation
        for j, f in enumerate(self.findings):
            r = localisation_eval(clf, loc, j, tap=c.gradcam_tap, tolerance=c.tolerance,
                                  max_images=c.gradcam_images)
            note = f"tap {c.gradcam_tap}"
            if r["n_constant"]:
                note += (f"; {r['n_constant']} constant map(s) left out (Grad-CAM undefined "
                         "there, e.g. all zero)")
            if not r["n"] and not r["n_constant"]:
                note = "no positive image with a region"
            for metric in ("pointing_game", "energy_inside", "chance_pointing", "chance_energy",
                           "n_constant"):
                rows.append(self.base(task="gradcam", fraction=max(c.fractions), finding=f,
                                      metric=metric, value=r[metric],
                                      n=r["n_energy"] if "energy" in metric else r["n"],
                                      note=note))
        if self.out_dir is not None:
            path = self.gradcam_gallery(clf)
            rows.append(self.base(task="gradcam", metric="figure", note=str(path)))
        return rows

    def gradcam_gallery(self, clf) -> Path:
        """Rows: the first localisation images; columns: the Grad-CAM of each finding's logit at
        ``eval.gradcam_tap``."""
        from ..viz.figures import plot_cam_grid, save
        from .gradcam import finding_cams

        images = torch.stack([self.localisation[i]["image"]
                              for i in range(min(4, len(self.localisation)))])
        tap = self.cfg.gradcam_tap
        cams = {f: finding_cams(clf, images, k, tap) for k, f in enumerate(self.findings)}
        fig = plot_cam_grid(images[:, 0].numpy(), cams, None, f"{self.name}: Grad-CAM at {tap}")
        return save(fig, self.out_dir / "figures" / f"gradcam-{self.name}.png", dpi=100)

    def umap(self) -> list[dict]:
        from ..viz.figures import plot_umap_grid, save
        from .umap_view import UMAP_MIN_POINTS, colour_table, umap_embed

        te = self.feats["test"]
        ds = self.splits["test"]
        if len(te.x) < UMAP_MIN_POINTS:
            raise ValueError(f"the test split has {len(te.x)} images; a 2-D UMAP needs at least "
                             f"{UMAP_MIN_POINTS}: use a larger test split (eval.split_sizes, or "
                             "more data)")
        meta = getattr(ds, "metadata", None)
        table = colour_table(te.labels, self.findings, meta)
        coords = umap_embed(te.x, seed=self.cfg.seed)
        rows = []
        for col in self.cfg.colour_by or self.findings[:1]:
            safe = "".join(ch if ch.isalnum() else "_" for ch in col)
            path = (self.out_dir / "figures" / f"umap-{self.name}-{safe}.png"
                    if self.out_dir is not None else None)
            fig = plot_umap_grid({(self.name, self.cfg.features): coords}, table[col], col)
            if path is not None:
                save(fig, path, dpi=120)
            rows.append(self.base(task="umap", finding=col, metric="figure", n=len(te.x),
                                  note=str(path) if path else ""))
        return rows


def evaluate(encoders: dict, splits: dict, config: EvalConfig, *, dataset: str = "",
             out_dir: str | Path | None = None, localisation=None,
             log: Callable[[str], None] | None = None,
             on_encoder: Callable[[Evaluation], None] | None = None,
             progress: bool = False) -> list[dict]:
    """All ``config.tasks`` for every encoder; returns the rows (and, with ``out_dir``, keeps
    ``results.csv`` / ``results.md`` up to date after every task). ``localisation``: the images
    Grad-CAM is scored on (default: the test split). ``on_encoder(evaluation)`` is called after
    each encoder's tasks (its features, its full-label probe and ``classifier()`` are there).
    ``progress``: a bar over encoder x task, named after the pair that runs (the notebooks)."""
    from tqdm.auto import tqdm

    check_settings(config, splits)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    order = [t for t in TASKS if t in config.tasks]  # probe before gradcam
    rows: list[dict] = []
    bar = tqdm(total=len(encoders) * len(order), desc="evaluate", unit="task",
               disable=not progress)
    for name, model in encoders.items():
        if isinstance(model, str):
            bar.update(len(order))
            rows.append(row(dataset=dataset, encoder=name, seed=config.seed, task="all",
                            note=f"skipped: {model}"))
            if out is not None:
                write_results(rows, out)
            continue
        ev = Evaluation(name, model, splits, config, dataset, out, localisation)
        for task in order:
            bar.set_description(f"evaluate {name}: {task}")
            try:
                rows += getattr(ev, task)()
            except Exception as err:  # one task failing must not lose the others
                msg = f"{type(err).__name__}: {err}"
                warnings.warn(f"{name} / {task} failed, continuing: {msg}", stacklevel=2)
                rows.append(ev.base(task=task, note=f"failed: {msg}"))
            if log is not None:
                log(f"{dataset or 'data'} / {name} / {task} done")
            if out is not None:
                write_results(rows, out)
            bar.update(1)
        if on_encoder is not None:
            on_encoder(ev)
    bar.set_description("evaluate")
    bar.close()
    return rows


def mean_auroc(rows: list[dict], encoder: str, task: str = "probe",
               fraction: float | None = None) -> tuple[float, float, float]:
    """``(value, ci_low, ci_high)`` of the mean AUROC row of ``encoder`` (largest fraction by
    default); NaNs when absent."""
    sel = [r for r in rows if r["encoder"] == encoder and r["task"] == task
           and r["finding"] == "mean" and r["metric"] == "auroc"]
    if fraction is not None:
        sel = [r for r in sel if r["fraction"] is not None and math.isclose(r["fraction"], fraction)]
    elif sel:
        top = max(r["fraction"] for r in sel)
        sel = [r for r in sel if r["fraction"] == top]
    if not sel:
        return (math.nan, math.nan, math.nan)
    r = sel[0]
    return (float(r["value"]), float(r["ci_low"]), float(r["ci_high"]))

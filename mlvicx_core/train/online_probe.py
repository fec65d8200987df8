"""The online probe: is the trunk learning anything a label can read, *while* it trains?

Every ``train.eval_every`` steps (and once before the first step, which is the random-init level)
the frozen trunk (eval mode, no gradient) embeds a held-out labelled set: the dataset's validation
split (for the synthetic data: patients never seen in pretraining), ``train.probe_images`` images,
read into memory once. Its patients are split in two halves (``fit`` and ``score``, seeded); two
read-outs are computed in closed form, per finding, and scored by AUROC on the ``score`` half:

- **linear**: ridge regression on standardised features,
  ``W = X^T (X X^T + alpha n I)^{-1} (Y - mean Y)`` with ``X`` the (n, D) standardised ``fit``
  features (the dual form: an n x n solve, n = fit images), ``alpha = 1``; scores ``X_score W``;
- **knn**: cosine k-nearest neighbours (k = 20, at most the ``fit`` images) in the ``fit`` half;
  the score is the share of positive neighbours.

Unknown labels (NaN): the linear read-out puts them at the finding's mean over the known ``fit``
labels (zero after centring); the kNN share counts only neighbours with a known label (a score image
whose k neighbours are all unknown gets the finding's share over the known ``fit`` labels); the
AUROC leaves unknown ``score`` labels out, finding by finding.

No iterative solver, no hyper-parameter search: at the teaching defaults a read-out costs a forward
pass over the set plus two small solves (the share of the run's time is measured by the demo and
``benchmarks/``). Records go to ``metrics.jsonl`` / TensorBoard as ``probe/<readout>/<finding>`` and
``probe/<readout>/mean`` (the mean over findings with both classes in the ``score`` half).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from ..data.splits import patient_split
from ..evaluation.embeddings import trunk_features
from ..evaluation.metrics import per_finding_auroc


def ridge_scores(x_fit: np.ndarray, y_fit: np.ndarray, x_score: np.ndarray,
                 alpha: float = 1.0) -> np.ndarray:
    """Closed-form ridge read-out (see the module docstring): (n_score, K) scores."""
    x_fit = np.asarray(x_fit, dtype=np.float64)
    x_score = np.asarray(x_score, dtype=np.float64)
    mean, std = x_fit.mean(0), x_fit.std(0)
    std = np.where(std > 1e-8, std, 1.0)
    a, b = (x_fit - mean) / std, (x_score - mean) / std
    y = np.asarray(y_fit, dtype=np.float64)
    known = ~np.isnan(y)
    y = np.where(known, y - np.where(known, y, 0.0).sum(0) / np.maximum(known.sum(0), 1), 0.0)
    n = len(a)
    dual = np.linalg.solve(a @ a.T + alpha * n * np.eye(n), y)  # (n, K)
    return b @ (a.T @ dual)


def knn_vote(x_fit: np.ndarray, y_fit: np.ndarray, x_score: np.ndarray, k: int = 20) -> np.ndarray:
    """Share of positive labels among the ``k`` cosine-nearest ``fit`` images: (n_score, K)."""
    def unit(x):
        x = np.asarray(x, dtype=np.float64)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    k = min(k, len(x_fit))
    sim = unit(x_score) @ unit(x_fit).T
    nearest = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    y = np.asarray(y_fit, dtype=np.float64)
    known = ~np.isnan(y)
    votes, counts = np.where(known, y, 0.0)[nearest].sum(1), known[nearest].sum(1)
    prevalence = np.where(known, y, 0.0).sum(0) / np.maximum(known.sum(0), 1)
    return np.where(counts > 0, votes / np.maximum(counts, 1), prevalence)


class OnlineProbe:
    """Held-out images (N, 1, S, S), labels (N, K) and patient ids -> AUROC records of a model."""

    def __init__(self, images: torch.Tensor, labels: np.ndarray, patient_ids, findings,
                 seed: int = 0, features: str = "trunk", batch_size: int = 128) -> None:
        labels = np.asarray(labels, dtype=np.float64)
        if images.ndim != 4 or len(images) != len(labels) or labels.ndim != 2:
            raise ValueError(f"images {tuple(images.shape)}, labels {labels.shape}: expected "
                             "(N, 1, S, S) and (N, K)")
        if len(patient_ids) != len(images):
            raise ValueError(f"{len(patient_ids)} patient ids for {len(images)} images: expected "
                             "one per image")
        findings = list(findings)
        if len(findings) != labels.shape[1]:
            raise ValueError(f"{len(findings)} findings {findings} for {labels.shape[1]} "
                             "label columns: expected one name per column")
        bad = labels[~np.isnan(labels) & (labels != 0) & (labels != 1)]
        if bad.size:
            raise ValueError(f"labels: expected 0, 1 or NaN (unknown), got {float(bad[0])!r}")
        halves = patient_split(patient_ids, (0.5, 0.0, 0.5), seed)
        self.fit, self.score = halves["train"], halves["test"]
        self.images, self.labels = images, labels
        self.findings = list(findings)
        self.features, self.batch_size = features, batch_size

    @classmethod
    def from_config(cls, config) -> OnlineProbe | None:
        """The probe of a run (``None`` with a warning when the data has no labelled val split)."""
        from ..data.registry import DatasetError, dataset_from_config

        n = config.train.probe_images
        try:
            held_out = dataset_from_config(config.data, split="val", length=n, in_memory=True)
        except (DatasetError, ValueError) as err:
            warnings.warn(f"online probe off: no labelled validation split ({err})", stacklevel=2)
            return None
        if not len(held_out.findings) or len(held_out) < 8:
            warnings.warn(f"online probe off: the validation split of data.dataset="
                          f"{config.data.dataset!r} has {len(held_out)} images and "
                          f"{len(held_out.findings)} findings", stacklevel=2)
            return None
        images = torch.stack([held_out[i]["image"] for i in range(len(held_out))])
        return cls(images, held_out.labels, held_out.patient_ids, held_out.findings,
                   seed=config.data.seed, features=config.eval.features)

    def embed(self, model: torch.nn.Module) -> np.ndarray:
        """(N, D) frozen features of the held-out images (model in eval mode, restored after)."""
        return trunk_features(model, self.images, self.features, batch_size=self.batch_size)

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        x = self.embed(model)
        y_fit, y_score = self.labels[self.fit], self.labels[self.score]
        out: dict[str, float] = {}
        for name, scores in (("linear", ridge_scores(x[self.fit], y_fit, x[self.score])),
                             ("knn", knn_vote(x[self.fit], y_fit, x[self.score]))):
            auc = per_finding_auroc(y_score, scores)
            for f, a in zip(self.findings, auc):
                out[f"probe/{name}/{f}"] = float(a)
            defined = auc[~np.isnan(auc)]
            out[f"probe/{name}/mean"] = float(defined.mean()) if defined.size else float("nan")
        return out

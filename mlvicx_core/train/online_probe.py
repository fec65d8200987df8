"""The online probe: is the trunk learning anything a label can read, *while* it trains?

Every ``train.eval_every`` steps (and once before the first step: the random-init level) the frozen
trunk (eval mode, no gradient) embeds two labelled sets read into memory once:

- **fit**: ``train.probe_images`` radiographs of the training split (the patients pretraining sees;
  their labels are used here and nowhere in pretraining), as the held-out probe's training split;
- **score**: ``train.probe_val_images`` radiographs of the validation split (patients pretraining
  never sees).

Two read-outs per finding, fitted on *fit* and scored by AUROC on *score*, both from
``mlvicx_core.evaluation`` (the same code as the held-out evaluation):

- **linear**: ridge regression on standardised features with its strength chosen per finding by
  the exact leave-one-out AUROC on the fit set (:func:`~mlvicx_core.evaluation.probe.fit_ridge_probe`:
  closed form, one SVD, no refits);
- **knn**: cosine k-nearest neighbours (k = 20) in the fit set
  (:func:`~mlvicx_core.evaluation.knn.knn_scores`).

Why it is built this way (docs/TRAINING.md, "The online probe"): a probe that tracks the held-out
linear probe must see a comparable amount of labelled data and choose its regularisation; the first
version fitted a ridge of fixed strength on 256 validation images and drew a 768-step run that the
held-out probe put 0.036 *above* random init as 0.02 *below* it.

Records (``metrics.jsonl`` / TensorBoard): ``probe/<readout>/<finding>``, ``probe/<readout>/mean``
(mean over findings with both classes in the score set) and ``probe/<readout>/mean_lo`` /
``mean_hi`` (95 % bootstrap interval over the score images), plus ``probe/seconds``.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from ..evaluation.embeddings import trunk_features
from ..evaluation.knn import knn_scores
from ..evaluation.metrics import bootstrap_auroc
from ..evaluation.probe import fit_ridge_probe

KNN_K = 20


def _check(images: torch.Tensor, labels: np.ndarray, what: str) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.float64)
    if images.ndim != 4 or labels.ndim != 2 or len(images) != len(labels):
        raise ValueError(f"{what}: images {tuple(images.shape)}, labels {labels.shape}: expected "
                         "(N, 1, S, S) and (N, K)")
    bad = labels[~np.isnan(labels) & (labels != 0) & (labels != 1)]
    if bad.size:
        raise ValueError(f"{what} labels: expected 0, 1 or NaN (unknown), got {float(bad[0])!r}")
    return labels


class OnlineProbe:
    """Fit images/labels and score images/labels -> AUROC records of a model (module docstring).

    ``images`` (N, 1, S, S) float in [0, 1], ``labels`` (N, K) in {0, 1, NaN}; ``findings`` names
    the K columns; ``features`` is an ``eval.features`` read-out (``trunk``, ``layer3+layer4``,
    ``global``, ``multi``); ``n_boot`` resamples for the interval of the mean.
    """

    def __init__(self, fit_images: torch.Tensor, fit_labels: np.ndarray,
                 score_images: torch.Tensor, score_labels: np.ndarray, findings,
                 features: str = "trunk", batch_size: int = 128, n_boot: int = 200,
                 seed: int = 0) -> None:
        self.fit_labels = _check(fit_images, fit_labels, "fit set")
        self.score_labels = _check(score_images, score_labels, "score set")
        findings = list(findings)
        if not len(findings) == self.fit_labels.shape[1] == self.score_labels.shape[1]:
            raise ValueError(f"{len(findings)} findings {findings} for {self.fit_labels.shape[1]} "
                             f"fit and {self.score_labels.shape[1]} score label columns: "
                             "expected one name per column")
        self.fit_images, self.score_images = fit_images, score_images
        self.findings, self.features = findings, features
        self.batch_size, self.n_boot, self.seed = batch_size, n_boot, seed

    @classmethod
    def from_config(cls, config) -> OnlineProbe | None:
        """The probe of a run (``None`` with a warning when the data has no labelled train and
        validation splits)."""
        from ..data.registry import DatasetError, dataset_from_config

        sets = {}
        for split, n in (("train", config.train.probe_images),
                         ("val", config.train.probe_val_images)):
            try:
                sets[split] = dataset_from_config(config.data, split=split, length=n,
                                                  in_memory=True)
            except (DatasetError, ValueError) as err:
                warnings.warn(f"online probe off: no labelled {split} split ({err})",
                              stacklevel=2)
                return None
        for split, ds in sets.items():
            if not len(ds.findings) or len(ds) < 8:
                warnings.warn(f"online probe off: the {split} split of data.dataset="
                              f"{config.data.dataset!r} has {len(ds)} images and "
                              f"{len(ds.findings)} findings", stacklevel=2)
                return None

        return cls.from_datasets(sets["train"], sets["val"], features=config.eval.features,
                                 seed=config.data.seed)

    @classmethod
    def from_datasets(cls, fit, score, **kwargs) -> OnlineProbe:
        """The probe fitted on contract dataset ``fit`` and scored on ``score`` (read once)."""
        def stack(ds):
            return torch.stack([ds[i]["image"] for i in range(len(ds))])

        return cls(stack(fit), fit.labels, stack(score), score.labels, fit.findings, **kwargs)

    def embed(self, model: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
        """(N, D) frozen features (model in eval mode, its mode restored after)."""
        return trunk_features(model, images, self.features, batch_size=self.batch_size)

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        x_fit = self.embed(model, self.fit_images)
        x_score = self.embed(model, self.score_images)
        linear = fit_ridge_probe(x_fit, self.fit_labels).scores(x_score)
        knn = knn_scores(x_fit, self.fit_labels, x_score, k=KNN_K)
        out: dict[str, float] = {}
        for name, scores in (("linear", linear), ("knn", knn)):
            res = bootstrap_auroc(self.score_labels, scores, n_boot=self.n_boot, seed=self.seed)
            for f, a in zip(self.findings, res.per_finding):
                out[f"probe/{name}/{f}"] = float(a)
            out[f"probe/{name}/mean"] = float(res.mean)
            out[f"probe/{name}/mean_lo"] = float(res.mean_ci[0])
            out[f"probe/{name}/mean_hi"] = float(res.mean_ci[1])
        return out

"""Grad-CAM at every tap of a pretrained encoder, scored against the true lesion (pointing game).

A self-supervised encoder has no "finding" output, so, as in the paper's analysis, a linear probe is
fitted on its frozen trunk features first (:func:`probe_classifier`: the evaluation pipeline's
probe and classifier, with the ``eval.*`` keys); Grad-CAM then explains that probe's logit for one
finding, at any of the five taps (``stem`` ... ``layer4``), on the positive images with a region
(:func:`~.localisation.positive_examples`). The question is whether the peak of the heatmap falls on
the lesion (pointing game), and how that changes with depth.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ..config import LEVELS, EvalConfig
from ..data.subset import Subset
from .embeddings import extract_features
from .finetune import Classifier
from .gradcam import finding_cams, localisation_eval
from .localisation import positive_examples
from .probe import fit_probe


def probe_classifier(model, splits: dict, cache_dir=None, *,
                     config: EvalConfig | None = None) -> Classifier:
    """The frozen trunk of ``model`` with the kit's linear probe (:func:`~.probe.fit_probe`, fitted
    on ``splits['train']``, its ``C`` from ``eval.probe_cs`` chosen on ``splits['val']``) as head:
    the classifier the evaluation pipeline's Grad-CAM explains, in eval mode. ``config``: the
    ``eval.*`` keys (default: their defaults); ``cache_dir`` replaces ``eval.cache_dir``."""
    from .pipeline import check_gradcam_features

    c = config if config is not None else EvalConfig()
    if cache_dir is not None:
        c = c.replace(cache_dir=str(cache_dir))
    check_gradcam_features(c)
    tr, va = (extract_features(model, splits[s], c.features, gates=c.keep_gates,
                               batch_size=c.batch_size, device=c.device, cache_dir=c.cache_dir)
              for s in ("train", "val"))
    probe = fit_probe(tr.x, tr.labels, va.x, va.labels, c)
    return Classifier.with_probe(model, probe, c.keep_gates)


def cams_per_tap(classifier: Classifier, images: torch.Tensor, finding: int,
                 taps: Sequence[str] = LEVELS) -> dict[str, np.ndarray]:
    """``{tap: (N, H, W) heatmap in [0, 1]}`` of ``finding``'s logit at every tap."""
    return {tap: finding_cams(classifier, images, finding, tap) for tap in taps}


def _bar(total: int, desc: str, unit: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not progress)


def heatmaps_by_finding(classifiers: dict[str, Classifier], dataset, indices: np.ndarray,
                        findings: Sequence[str], n: int, taps: Sequence[str] = LEVELS,
                        progress: bool = True) -> dict[str, dict]:
    """Grad-CAM at every tap for up to ``n`` positive images of each finding, per encoder.

    Returns ``{finding: {"images": (N, 1, S, S), "regions": (N, S, S), "cams": {encoder:
    {tap: (N, S, S)}}}}``; a finding without a positive image holding a region maps to ``None``.
    ``progress``: one bar over finding x encoder, named after the pair being explained.
    """
    out: dict[str, dict] = {}
    bar = _bar(len(findings) * len(classifiers), "Grad-CAM heatmaps", "map set", progress)
    for finding in findings:
        k = dataset.findings.index(finding)
        pics, regions, _ = positive_examples(dataset, indices, k, n)
        if pics is None:
            out[finding] = None
            bar.update(len(classifiers))
            continue
        cams = {}
        for name, clf in classifiers.items():
            bar.set_description(f"Grad-CAM {name}: {finding}")
            cams[name] = cams_per_tap(clf, pics, k, taps)
            bar.update(1)
        out[finding] = {"images": pics, "regions": regions, "cams": cams}
    bar.set_description("Grad-CAM heatmaps")
    bar.close()
    return out


def pointing_by_tap(classifiers: dict[str, Classifier], dataset, indices: np.ndarray,
                    taps: Sequence[str] = LEVELS, findings: Sequence[int] | None = None,
                    max_images: int = 16, tolerance: float = 0.0,
                    progress: bool = True) -> pd.DataFrame:
    """Pointing game and energy-inside per encoder x tap x finding on ``dataset[indices]``.

    Columns: encoder, tap, finding, pointing_game, energy_inside, chance_pointing, chance_energy, n,
    n_energy, n_constant (constant maps, left out: see :mod:`~.evaluation.localisation`).
    Findings without a positive image holding a region get n = 0 and NaN scores. ``progress``: one
    bar over encoder x finding x tap, named after the combination being scored.
    """
    view = Subset(dataset, indices)
    findings = range(len(dataset.findings)) if findings is None else findings
    rows = []
    bar = _bar(len(classifiers) * len(findings) * len(taps), "pointing game", "map", progress)
    for enc, clf in classifiers.items():
        for k in findings:
            for tap in taps:
                bar.set_description(f"pointing game {enc}: {dataset.findings[k]} {tap}")
                res = localisation_eval(clf, view, k, tap=tap, tolerance=tolerance,
                                        max_images=max_images)
                rows.append({"encoder": enc, "tap": tap, "finding": dataset.findings[k], **res})
                bar.update(1)
    bar.set_description("pointing game")
    bar.close()
    return pd.DataFrame(rows)


def pointing_table(scores: pd.DataFrame) -> pd.DataFrame:
    """:func:`pointing_by_tap`'s rows as one row per finding: the hit rate of every encoder at
    every tap (columns ``(encoder, tap)``, encoders and taps in the order they were scored, i.e.
    network order stem ... layer4), then ``("chance", "")``, the hit rate of an uninformative map
    on the same images (mean over the encoder x tap rows: the images are the same), and
    ``("n", "")``, the most images scored for the finding."""
    encoders = list(dict.fromkeys(scores["encoder"]))
    taps = list(dict.fromkeys(scores["tap"]))
    wide = scores.set_index(["finding", "encoder", "tap"])["pointing_game"].unstack(
        ["encoder", "tap"])
    wide = wide.reindex(columns=pd.MultiIndex.from_product([encoders, taps]))
    per_finding = scores.groupby("finding", sort=False)
    wide[("chance", "")] = per_finding["chance_pointing"].mean()
    wide[("n", "")] = per_finding["n"].max()
    return wide.loc[list(dict.fromkeys(scores["finding"]))]


def constant_map_notes(scores: pd.DataFrame) -> list[str]:
    """One line per (encoder, finding, tap) whose Grad-CAM maps were constant on some images:
    such a map has no maximum to point with, so the image is left out of the hit rate, and a
    row with none left is NaN (:mod:`~.localisation`)."""
    return [f"{r.encoder} {r.finding} {r.tap}: {r.n_constant} of {r.n_constant + r.n} maps "
            "constant (no maximum to point with: left out"
            + ("; none left, hence NaN)" if r.n == 0 else ")")
            for r in scores[scores["n_constant"] > 0].itertuples()]

"""Encoders compared *paired* on the same test images: each one minus a reference encoder.

Every encoder's evaluation keeps its test labels and scores per ``(task, label fraction)``
(:attr:`~.pipeline.Evaluation.test_scores`). :func:`paired_table` turns those of several encoders
into the difference of mean test AUROC against one reference (usually random init of the same
network) with a paired percentile-bootstrap CI
(:func:`~.metrics.paired_auroc_difference`: every resample draws the same images for both, so the
image-to-image variation they share cancels) and a verdict. Notebook 03 and the results report
(per seed) read their "pretrained minus random init" from here; the demo calls
:func:`~.metrics.paired_auroc_difference` for its one pair directly.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .metrics import paired_auroc_difference

#: (task, label fraction) -> (test labels, test scores), as the evaluation pipeline keeps them
TestScores = Mapping[tuple[str, float], tuple[np.ndarray, np.ndarray]]
COLUMNS = ["task", "fraction", "encoder", "reference", "diff", "ci_low", "ci_high", "verdict"]


def verdict(ci_low: float, ci_high: float, reference: str = "random init") -> str:
    """Where a CI of "encoder minus reference" lies relative to zero."""
    return (f"above {reference}" if ci_low > 0 else f"below {reference}" if ci_high < 0
            else f"level with {reference}")


def paired_table(test_scores: Mapping[str, TestScores], reference: str = "random", *,
                 tasks: Sequence[str] | None = None, fractions: Sequence[float] | None = None,
                 n_boot: int = 1000, seed: int = 0,
                 reference_label: str = "random init") -> pd.DataFrame:
    """Every encoder of ``test_scores`` other than ``reference`` minus ``reference``, per (task,
    fraction) both were scored at (restricted to ``tasks`` / ``fractions`` when given), in the
    order of ``test_scores``. Columns :data:`COLUMNS`; ``verdict`` names ``reference_label``.
    The two encoders must have been scored on the same images: their labels are compared and a
    mismatch is an error naming the encoders, the task and the fraction."""
    if reference not in test_scores:
        raise KeyError(f"reference encoder {reference!r} not among {list(test_scores)}")
    ref = test_scores[reference]
    rows = []
    for enc, scored in test_scores.items():
        if enc == reference:
            continue
        for (task, fraction), (labels, scores) in scored.items():
            if ((tasks is not None and task not in tasks)
                    or (fractions is not None and fraction not in fractions)
                    or (task, fraction) not in ref):
                continue
            ref_labels, ref_scores = ref[(task, fraction)]
            if not np.array_equal(labels, ref_labels):
                raise ValueError(f"{enc} and {reference}: the {task} test labels at fraction "
                                 f"{fraction:g} differ; a paired difference needs the same test "
                                 "images for both")
            d, lo, hi = paired_auroc_difference(labels, scores, ref_scores, n_boot=n_boot,
                                                seed=seed)
            rows.append({"task": task, "fraction": fraction, "encoder": enc,
                         "reference": reference, "diff": d, "ci_low": lo, "ci_high": hi,
                         "verdict": verdict(lo, hi, reference_label)})
    return pd.DataFrame(rows, columns=COLUMNS)

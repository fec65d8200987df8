"""What else the embeddings encode: the factors an image was made with, read out like the findings.

Self-supervision learns what the two views of an image share and forgets what they change. A
dataset's ``metadata`` (one row per image) records other factors of each image: the synthetic
radiographs know every parameter they were drawn with (``mlvicx_core.data.phantom.FACTORS``:
position, rotation, zoom, body size, AP/PA view, dose, kVp, inspiration, display gamma, the side
marker and its corner, collimation, heart size, lung width); NIH's table has age, sex and the view.
The ``factors`` evaluation task fits the same linear probe as the findings
(:func:`~mlvicx_core.evaluation.probe.fit_linear_probe`, C on val, AUROC on test) to each factor
made binary:

- a column with two values (0/1, "M"/"F", "AP"/"PA") is the label itself (the second sorted value
  is the positive class, named ``column=value`` for strings);
- a numeric column with more values is split at its median on the *training* split
  (label = value > median), the same threshold on val and test;
- columns with one value, identifiers (``image``, ``patient_id`` and the like) and strings with
  more than two values are left out; NaN stays unknown.

Read a factor's AUROC next to random init: a factor the views change (position and zoom under
random crops, the marker's side under flips, brightness under jitter) should fall towards chance
after pretraining; one they keep (anatomy, dose, view) may rise.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

#: Metadata columns that identify an image rather than describe it.
ID_COLUMNS = frozenset({"image", "image_id", "path", "patient_id", "patient", "index",
                        "source_index", "set_id", "follow_up"})


def factor_labels(train: pd.DataFrame, *others: pd.DataFrame
                  ) -> tuple[list[str], list[np.ndarray]]:
    """Binary labels (N, F) in {0, 1, NaN} for every usable metadata column (module docstring):
    ``(names, [train labels, other labels...])``; thresholds come from ``train``."""
    names, cols = [], [[] for _ in range(1 + len(others))]
    frames = (train, *others)
    for c in train.columns:
        if str(c).lower().replace(" ", "_") in ID_COLUMNS:
            continue
        values = train[c].dropna()
        distinct = pd.unique(values)
        if len(distinct) < 2:
            continue
        numeric = pd.api.types.is_numeric_dtype(train[c])
        if len(distinct) == 2:
            positive = sorted(distinct, key=str)[1]
            name = str(c) if numeric and set(distinct) <= {0, 1} else f"{c}={positive}"
            for out, frame in zip(cols, frames):
                v = frame[c]
                out.append(np.where(v.isna(), np.nan, (v == positive).astype(float)))
        elif numeric:
            cut = float(np.median(values.to_numpy(dtype=np.float64)))
            name = str(c)
            for out, frame in zip(cols, frames):
                v = frame[c].to_numpy(dtype=np.float64)
                out.append(np.where(np.isnan(v), np.nan, (v > cut).astype(float)))
        else:
            continue
        names.append(name)
    arrays = [np.stack(c, axis=1) if c else np.zeros((len(f), 0)) for c, f in zip(cols, frames)]
    return names, arrays

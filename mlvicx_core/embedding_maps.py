"""UMAP maps of several encoders' embeddings, computed on the same images (notebook 02).

For each encoder and each embedding kind (``trunk``: pooled ResNet features, what transfers to
downstream tasks; ``global``: the global projector's output, what the VICReg loss sees; ``multi``:
the multi-level projector's output, MLVICX only) the embeddings of every image are reduced to 2-D
with UMAP (cosine metric, seeded). A kind the encoder does not have gives ``None``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .evaluation.embeddings import extract_features
from .evaluation.umap_view import umap_embed

KINDS = ("trunk", "global", "multi")


def umap_panels(models: dict, dataset, kinds: Sequence[str] = KINDS, seed: int = 0,
                cache_dir=None) -> dict[tuple[str, str], np.ndarray | None]:
    """``{(encoder, kind): (N, 2) coordinates or None}`` for every encoder in ``models``."""
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"kinds {bad}: expected some of {KINDS}")
    panels: dict[tuple[str, str], np.ndarray | None] = {}
    for name, model in models.items():
        for kind in kinds:
            if kind == "multi" and not model.config.multilevel:
                panels[(name, kind)] = None
                continue
            feats = extract_features(model, dataset, kind, cache_dir=cache_dir)
            panels[(name, kind)] = umap_embed(feats.x, seed=seed)
    return panels

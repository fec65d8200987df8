"""UMAP maps of embeddings, and the table they are coloured by (a finding or a metadata column).

``umap_embed`` is reproducible for a fixed ``seed`` (umap-learn runs single-threaded when seeded).
Drawing them is ``mlvicx_core.viz``: ``figures.plot_umap_grid`` (a static figure) and
``widgets.umap_selector`` (a "colour by" dropdown for notebooks).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

#: Fewest points a 2-D UMAP can place: its spectral initialisation takes 3 eigenvectors of the
#: N x N graph and needs N > 3 (with 3 points scipy fails with "k >= N").
UMAP_MIN_POINTS = 4


def umap_embed(x: np.ndarray, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1,
               metric: str = "cosine") -> np.ndarray:
    """(N, D) features -> (N, 2) UMAP coordinates (float32); N >= :data:`UMAP_MIN_POINTS`."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or len(x) < UMAP_MIN_POINTS:
        raise ValueError(f"features {x.shape}: expected (N, D) with N >= {UMAP_MIN_POINTS} "
                         "(a 2-D UMAP cannot place fewer points)")
    import umap  # imported here (after the check): numba compilation makes the import slow
    reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, len(x) - 1),
                        min_dist=min_dist, metric=metric, random_state=seed, n_jobs=1)
    return reducer.fit_transform(x).astype(np.float32)


def colour_table(labels: np.ndarray, findings: list[str],
                 metadata: pd.DataFrame | None = None) -> pd.DataFrame:
    """One column per finding (0/1/NaN) plus any metadata columns (row-aligned), for colouring."""
    table = pd.DataFrame(np.asarray(labels), columns=list(findings))
    if metadata is not None:
        if len(metadata) != len(table):
            raise ValueError(f"metadata has {len(metadata)} rows, labels {len(table)}")
        for col in metadata.columns:
            if col not in table:
                table[col] = metadata[col].to_numpy()
    return table


def umap_panels(models: dict, dataset, kinds=("trunk", "global", "multi"), seed: int = 0,
                cache_dir=None, progress: bool = True) -> dict[tuple[str, str], np.ndarray | None]:
    """``{(encoder, kind): (N, 2) coordinates or None}``: UMAP of every encoder's ``kind``
    embeddings (``eval.features``: :data:`~mlvicx_core.config.FEATURE_KINDS`) of the same images,
    seeded; a kind the encoder does not have (``multi`` for VICReg) gives ``None`` (notebook 02).
    ``progress``: a bar over the panels, named after the one being embedded and mapped."""
    from tqdm.auto import tqdm

    from ..config import FEATURE_KINDS
    from .embeddings import extract_features

    bad = [k for k in kinds if k not in FEATURE_KINDS]
    if bad:
        raise ValueError(f"kinds {bad}: expected some of {FEATURE_KINDS}")
    panels: dict[tuple[str, str], np.ndarray | None] = {}
    todo = [(name, model, kind) for name, model in models.items() for kind in kinds]
    bar = tqdm(total=len(todo), desc="embed + UMAP", unit="panel", disable=not progress)
    for name, model, kind in todo:
        bar.set_description(f"embed + UMAP {name}: {kind}")
        if kind == "multi" and not model.config.multilevel:
            panels[(name, kind)] = None
        else:
            feats = extract_features(model, dataset, kind, cache_dir=cache_dir)
            panels[(name, kind)] = umap_embed(feats.x, seed=seed)
        bar.update(1)
    bar.set_description("embed + UMAP")
    bar.close()
    return panels

"""UMAP pictures of embeddings, coloured by a finding or a metadata column.

``umap_embed`` is reproducible for a fixed ``seed`` (umap-learn runs single-threaded when seeded).
``plot_umap`` saves a static figure; ``interactive_scatter`` returns an ipywidgets box with a
"colour by" dropdown for notebooks; building it needs no frontend (without one it simply is not
displayed), so it also runs under papermill and in tests.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def umap_embed(x: np.ndarray, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1,
               metric: str = "cosine") -> np.ndarray:
    """(N, D) features -> (N, 2) UMAP coordinates (float32)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or len(x) < 3:
        raise ValueError(f"features {x.shape}: expected (N, D) with N >= 3")
    import umap  # imported here (after the check): numba compilation makes the import slow
    reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, len(x) - 1),
                        min_dist=min_dist, metric=metric, random_state=seed, n_jobs=1)
    return reducer.fit_transform(x).astype(np.float32)


def category_labels(values) -> pd.Series:
    """Legend labels of a colouring: a 0/1 finding reads ``absent`` / ``present``, anything else
    (sex, view position) its own value as text; unknown (NaN) stays NaN."""
    values = pd.Series(np.asarray(values)).reset_index(drop=True)
    if pd.api.types.is_numeric_dtype(values) and set(values.dropna().unique()) <= {0, 1}:
        return values.map({0: "absent", 1: "present"})
    return values.map(lambda v: v if pd.isna(v) else str(v))


def _draw(ax, coords: np.ndarray, values, title: str) -> None:
    values = pd.Series(np.asarray(values)).reset_index(drop=True)
    numeric = pd.api.types.is_numeric_dtype(values) and values.nunique(dropna=True) > 2
    if numeric:
        sc = ax.scatter(coords[:, 0], coords[:, 1], c=values, s=8, cmap="viridis")
        ax.figure.colorbar(sc, ax=ax, label=title)
    else:
        # categories (0/1 findings as absent/present): one colour each, unknown (NaN) in grey
        cats = category_labels(values).fillna("unknown")
        for cat in sorted(cats.unique(), key=lambda c: (c == "unknown", c != "absent", c)):
            sel = (cats == cat).to_numpy()
            ax.scatter(coords[sel, 0], coords[sel, 1], s=8, label=str(cat),
                       c="lightgrey" if cat == "unknown" else None)
        ax.legend(title=title, markerscale=2, fontsize="small")
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    ax.set_title(f"UMAP coloured by {title}")


def plot_umap(coords: np.ndarray, values, title: str, path: str | Path | None = None):
    """Scatter (N, 2) ``coords`` coloured by ``values`` (N,); saved to ``path`` when given.

    Numeric columns with more than two values get a colour bar; anything else (0/1 findings, sex,
    view position) one colour per category. Returns the matplotlib figure.
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    coords = np.asarray(coords)
    if coords.ndim != 2 or coords.shape[1] != 2 or len(values) != len(coords):
        raise ValueError(f"coords {coords.shape} and {len(values)} values: expected (N, 2) and N")
    fig, ax = plt.subplots(figsize=(6, 5))
    _draw(ax, coords, values, title)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig


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


def interactive_scatter(coords: np.ndarray, table: pd.DataFrame, colour_by: str | None = None):
    """An ipywidgets VBox: a dropdown over ``table``'s columns and the re-coloured scatter.

    Display it in a notebook (it is the cell's value); ``box.children[0]`` is the dropdown.
    """
    try:
        import ipywidgets as widgets
    except ImportError as err:  # pragma: no cover - ipywidgets is in the notebooks extra
        raise ImportError("interactive_scatter needs ipywidgets (pip install ipywidgets)") from err
    import matplotlib.pyplot as plt

    if len(table) != len(coords):
        raise ValueError(f"table has {len(table)} rows, coords {len(coords)}")
    columns = list(table.columns)
    if not columns:
        raise ValueError("table has no column to colour by")
    colour_by = colour_by or columns[0]
    if colour_by not in columns:
        raise ValueError(f"colour_by={colour_by!r}: expected one of {columns}")
    dropdown = widgets.Dropdown(options=columns, value=colour_by, description="colour by")
    out = widgets.Output()

    def redraw(column: str) -> None:
        out.clear_output(wait=True)
        with out:
            fig, ax = plt.subplots(figsize=(6, 5))
            _draw(ax, np.asarray(coords), table[column], column)
            plt.show()
            plt.close(fig)

    dropdown.observe(lambda change: redraw(change["new"]), names="value")
    redraw(colour_by)
    return widgets.VBox([dropdown, out])


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

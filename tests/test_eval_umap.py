"""UMAP: shape, seed reproducibility, separation kept, the colour table, saved figures."""
import numpy as np
import pandas as pd
import pytest

from mlvicx_core.evaluation.umap_view import colour_table, umap_embed
from mlvicx_core.viz.figures import plot_umap_grid, save


def test_umap_shape_reproducible_and_keeps_clusters(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat([0.0, 1.0], 40)
    x = rng.normal(size=(80, 10)) + 6 * y[:, None] * np.eye(10)[0]
    a = umap_embed(x, seed=3, n_neighbors=10)
    b = umap_embed(x, seed=3, n_neighbors=10)
    assert a.shape == (80, 2) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    # the two clusters stay apart: every point's nearest neighbour in 2-D has its label
    d = ((a[:, None] - a[None]) ** 2).sum(-1) + np.eye(80) * 1e9
    assert (y[d.argmin(1)] == y).mean() > 0.95
    meta = pd.DataFrame({"Patient Gender": ["M", "F"] * 40, "Patient Age": np.arange(80)})
    table = colour_table(np.stack([y, 1 - y], 1), ["disc", "bar"], meta)
    assert list(table.columns) == ["disc", "bar", "Patient Gender", "Patient Age"]
    for col in table.columns:
        path = tmp_path / f"{col}.png"
        save(plot_umap_grid({("A", "trunk"): a}, table[col], col), path)
        assert path.stat().st_size > 5000
    with pytest.raises(ValueError, match=r"features \(3, \d+\): expected \(N, D\) with N >= 4"):
        umap_embed(x[:3])  # scipy's "k >= N" before (issue 19)

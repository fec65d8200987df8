"""What the embeddings encode besides the findings: the phantom's factors (``phantom.image_factors``,
``SyntheticCXR.metadata``), their binary labels (``evaluation.factors``), the ``factors`` read-out
of the evaluation pipeline, and the paired AUROC difference the demo prints."""
import numpy as np
import pandas as pd
import pytest
from eval_fakes import BlobCXR, tiny_model

from mlvicx_core.config import EvalConfig
from mlvicx_core.data.phantom import FACTORS, image_factors, patient_anatomy, render
from mlvicx_core.data.phantom_dataset import SyntheticCXR
from mlvicx_core.data.subset import Subset
from mlvicx_core.evaluation.factors import factor_labels
from mlvicx_core.evaluation.metrics import auroc, paired_auroc_difference
from mlvicx_core.evaluation.pipeline import evaluate


# -- the phantom's factors -------------------------------------------------------------------------
def test_factors_are_what_the_renderer_drew():
    seen = {"ap": set(), "marker": set(), "collimation": set()}
    for index in range(40):
        f = image_factors(0, index, images_per_patient=2)
        assert set(f) == set(FACTORS)
        img, _, _, info = render(0, index, 64, images_per_patient=2, anatomy=True)
        assert f["ap_view"] == float(info["view"] == "AP")
        assert f["heart_size"] == patient_anatomy(0, index // 2).ctr
        seen["ap"].add(f["ap_view"])
        # the lead marker is a fully white "L" in the named corner: a white column at its left edge
        m, r0 = 64 // 20, 64 // 16
        corners = {}
        for right in (0, 1):
            for bottom in (0, 1):
                rr = r0 if not bottom else 64 - r0 - m
                cc = r0 if not right else 64 - r0 - m
                corners[(bottom, right)] = bool((img[rr:rr + m, cc] == 1.0).all())
        if f["marker"]:
            assert any(on for (b, r), on in corners.items() if r == f["marker_right"]), index
        else:
            assert np.isnan(f["marker_right"])
        seen["marker"].add(f["marker"])
        if f["collimation"] == 0:  # no shutter: no fully white image border row or column
            assert not any((edge == 1.0).all() for edge in (img[0], img[-1], img[:, 0],
                                                            img[:, -1]))
        seen["collimation"].add(f["collimation"])
    assert all(v == {0.0, 1.0} for v in seen.values()), seen  # both values occur


def test_synthetic_metadata_rows_follow_the_split_and_subsets():
    ds = SyntheticCXR(length=12, image_size=64, seed=3, split="val")
    meta = ds.metadata
    assert list(meta.columns) == list(FACTORS) and len(meta) == 12
    g = ds.global_index(np.arange(12))
    for i in (0, 5, 11):
        want = image_factors(3, int(g[i]), images_per_patient=2)
        got = meta.iloc[i].to_dict()
        assert got.keys() == want.keys()
        assert all(np.isnan(got[k]) if np.isnan(want[k]) else got[k] == want[k] for k in want)
    sub = Subset(ds, [7, 2])
    pd.testing.assert_frame_equal(sub.metadata, meta.iloc[[7, 2]].reset_index(drop=True))


# -- binary labels ---------------------------------------------------------------------------------
def test_factor_labels_binarise_by_kind_with_train_thresholds():
    train = pd.DataFrame({"image": ["a", "b", "c", "d"], "patient_id": ["p", "p", "q", "q"],
                          "age": [20.0, 40.0, 60.0, np.nan], "sex": ["M", "F", "F", "M"],
                          "ap_view": [0.0, 1.0, 0.0, 0.0], "site": ["x", "x", "x", "x"],
                          "scanner": ["s1", "s2", "s3", "s1"]})
    test = pd.DataFrame({"image": ["e", "f"], "patient_id": ["r", "s"], "age": [45.0, 30.0],
                         "sex": ["F", "M"], "ap_view": [1.0, np.nan], "site": ["y", "x"],
                         "scanner": ["s1", "s9"]})
    names, (ytr, yte) = factor_labels(train, test)
    # ids, a single-valued column and a string column of three values are left out
    assert names == ["age", "sex=M", "ap_view"]
    np.testing.assert_array_equal(ytr, [[0, 1, 0], [0, 0, 1], [1, 0, 0], [np.nan, 1, 0]])
    # the train median of age (40) splits the test ages too; unknown stays unknown
    np.testing.assert_array_equal(yte, [[1, 0, 1], [0, 1, np.nan]])


# -- the pipeline's factors task -------------------------------------------------------------------
class FactorBlobs(BlobCXR):
    """BlobCXR with metadata: ``bright`` (the image's overall gain, 0/1: readable from pixels) and
    ``coin`` (a seeded coin flip the pixels know nothing of)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        rng = np.random.default_rng(7)
        n = len(self.labels)
        self.metadata = pd.DataFrame({"image": [f"i{i}" for i in range(n)],
                                      "bright": (np.arange(n) % 2).astype(float),
                                      "coin": (rng.random(n) < 0.5).astype(float)})

    def load_image(self, index):
        return super().load_image(index) * (0.5 if self.metadata["bright"][index] == 0 else 1.0)


def test_factors_task_reads_a_pixel_factor_and_not_a_coin():
    ds = FactorBlobs(n=240, image_size=32)
    splits = {"train": Subset(ds, np.arange(0, 160)), "val": Subset(ds, np.arange(160, 200)),
              "test": Subset(ds, np.arange(200, 240))}
    cfg = EvalConfig(tasks=("factors",), fractions=(1.0,), n_boot=50)
    rows = evaluate({"random": tiny_model(0)}, splits, cfg, dataset="blobs")
    got = {r["finding"]: r for r in rows}
    assert set(got) == {"bright", "coin"}
    assert all(r["task"] == "factors" and r["metric"] == "auroc" and r["n"] == 40
               for r in rows)
    assert got["bright"]["value"] > 0.95
    assert abs(got["coin"]["value"] - 0.5) < 0.2
    for r in rows:
        assert r["ci_low"] <= r["value"] <= r["ci_high"]


def test_factors_task_without_metadata_is_a_note():
    ds = BlobCXR(n=60)
    splits = {s: Subset(ds, np.arange(i * 20, i * 20 + 20)) for i, s in
              enumerate(("train", "val", "test"))}
    rows = evaluate({"random": tiny_model(0)}, splits,
                    EvalConfig(tasks=("factors",), fractions=(1.0,)), dataset="blobs")
    assert len(rows) == 1 and rows[0]["note"] == "skipped: the dataset records no metadata"


# -- the paired difference -------------------------------------------------------------------------
def plain_paired(labels, a, b, n_boot, seed):
    """The same bootstrap written plainly: one draw of rows per resample, both encoders' mean
    AUROC over the findings on those rows, the difference; percentiles 2.5 and 97.5."""
    rng = np.random.default_rng(seed)
    n, k = labels.shape
    diffs = []
    for _ in range(n_boot):
        rows = rng.integers(0, n, size=n)
        d = [auroc(labels[rows, j], a[rows, j]) - auroc(labels[rows, j], b[rows, j])
             for j in range(k)]
        d = [x for x in d if not np.isnan(x)]
        diffs.append(np.mean(d))
    point = np.mean([auroc(labels[:, j], a[:, j]) - auroc(labels[:, j], b[:, j])
                     for j in range(k)])
    return point, *np.quantile(diffs, [0.025, 0.975])


def test_paired_difference_equals_the_plain_bootstrap_and_is_tighter_than_two_intervals():
    rng = np.random.default_rng(0)
    n = 300
    labels = (rng.random((n, 3)) < 0.3).astype(float)
    shared = rng.normal(size=(n, 3))  # image difficulty both encoders share
    a = labels * 1.0 + shared + 0.5 * rng.normal(size=(n, 3))
    b = labels * 0.8 + shared + 0.5 * rng.normal(size=(n, 3))
    got = paired_auroc_difference(labels, a, b, n_boot=200, seed=4)
    want = plain_paired(labels, a, b, 200, 4)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert got[1] < got[0] < got[2]
    # swapping the encoders mirrors the difference and its interval
    swapped = paired_auroc_difference(labels, b, a, n_boot=200, seed=4)
    np.testing.assert_allclose(swapped, (-got[0], -got[2], -got[1]), atol=1e-12)
    # an encoder against itself: exactly zero, with a zero-width interval
    assert paired_auroc_difference(labels, a, a, n_boot=50) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match=r"expected one shape \(N, K\)"):
        paired_auroc_difference(labels, a[:-1], b)


def test_paired_difference_skips_a_single_class_finding():
    rng = np.random.default_rng(1)
    labels = (rng.random((80, 2)) < 0.5).astype(float)
    labels[:, 1] = 0.0  # undefined AUROC: left out of the mean
    a, b = labels + rng.normal(size=(80, 2)), rng.normal(size=(80, 2))
    d, lo, hi = paired_auroc_difference(labels, a, b, n_boot=100)
    assert d == pytest.approx(auroc(labels[:, 0], a[:, 0]) - auroc(labels[:, 0], b[:, 0]))
    assert lo < d < hi

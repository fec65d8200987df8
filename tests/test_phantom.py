"""The phantom generator and SyntheticCXR: determinism, labels vs masks, anatomy, parameters."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mlvicx_core.data import FINDINGS, SyntheticCXR, render
from mlvicx_core.data.phantom_dataset import SPLITS, UNBOUNDED
from mlvicx_core.data.phantom_findings import DEFAULT_PREVALENCE, finding_labels, check_prevalence

K = len(FINDINGS)
HALF = {f: 0.5 for f in FINDINGS}


def splitmix_uniform(seed: int, index: int, stream: int) -> float:
    """Plain-Python reference of the label hash (splitmix64 finaliser on Python ints)."""
    m = (1 << 64) - 1

    def mix(z):
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
        return z ^ (z >> 31)

    z = mix((seed * 0x9E3779B97F4A7C15 + stream + 1) & m)
    z = mix(z ^ ((index * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & m))
    return (z >> 11) / 2.0 ** 53


def test_labels_match_reference_hash():
    prev = check_prevalence(None)
    for g in (0, 1, 17, 123456, 2 ** 31 - 2):
        ref = [splitmix_uniform(7, g * K + k, 0) < prev[k] for k in range(K)]
        np.testing.assert_array_equal(finding_labels(7, g, prev)[0], np.array(ref, np.float32))


def test_render_is_deterministic_and_index_dependent():
    a = render(3, 11, 64)
    b = render(3, 11, 64)
    assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
    assert not np.array_equal(render(3, 12, 64)[0], a[0])
    assert not np.array_equal(render(4, 11, 64)[0], a[0])
    ds1, ds2 = SyntheticCXR(20, 64, seed=3), SyntheticCXR(20, 64, seed=3)
    assert torch.equal(ds1[5]["image"], ds2[5]["image"])
    assert torch.equal(ds1[5]["image"][0], torch.from_numpy(render(3, 5, 64, images_per_patient=2)[0]))


@pytest.mark.parametrize("size", [64, 512])
def test_range_dtype_and_size(size):
    ds = SyntheticCXR(4, size, seed=1)
    s = ds[1]
    assert s["image"].dtype == torch.float32 and s["image"].shape == (1, size, size)
    assert 0.0 <= float(s["image"].min()) and float(s["image"].max()) <= 1.0
    assert float(s["image"].std()) > 0.1  # not a blank frame
    assert s["mask"].dtype == torch.bool and s["mask"].shape == (K, size, size)
    assert s["labels"].dtype == torch.float32 and s["labels"].shape == (K,)
    assert s["patient_id"] == "p0" and s["index"] == 1


def test_cheap_labels_equal_rendered_labels_and_masks_follow_labels():
    ds = SyntheticCXR(60, 64, seed=5, prevalence=HALF)
    seen = np.zeros((2, K), int)
    for i in range(len(ds)):
        img, masks, labels = ds.render(i)
        np.testing.assert_array_equal(labels, ds.labels[i])
        nonempty = masks.reshape(K, -1).any(1)
        np.testing.assert_array_equal(nonempty, labels.astype(bool))
        seen[labels.astype(int), np.arange(K)] += 1
    assert (seen > 5).all()  # every finding seen both present and absent


def test_masks_respect_anatomy():
    """Nodules lie in the lung field, effusions in its lower half, pneumothorax at its edge."""
    checked = dict.fromkeys(FINDINGS, 0)
    for i in range(40):
        img, masks, labels, info = render(9, i, 128, prevalence=HALF, anatomy=True)
        lung = info["lung"]
        rows = np.nonzero(lung.any(1))[0]
        mid = 0.5 * (rows[0] + rows[-1])
        if labels[0]:
            assert (masks[0] <= lung).all(), f"nodule outside the lung in image {i}"
            checked["nodule"] += 1
        if labels[2]:
            r = np.nonzero(masks[2].any(1))[0]
            assert r[0] > mid, f"effusion reaches the upper half in image {i}"
            checked["effusion"] += 1
        if labels[4]:
            assert (masks[4] <= (lung | info["heart"])).all()
            checked["pneumothorax"] += 1
        if labels[1]:
            assert (masks[1] <= (lung | info["heart"])).all()
    assert min(checked["nodule"], checked["effusion"], checked["pneumothorax"]) >= 5


def _ctr(heart: np.ndarray, lung: np.ndarray) -> float:
    """Cardiothoracic ratio measured on masks: widest heart extent / widest lung-field extent."""
    hc, lc = np.nonzero(heart.any(0))[0], np.nonzero(lung.any(0))[0]
    return (hc[-1] - hc[0] + 1) / (lc[-1] - lc[0] + 1)


def test_cardiomegaly_raises_measured_ctr():
    pos, neg = [], []
    for i in range(60):
        _, _, labels, info = render(2, i, 128, prevalence={"cardiomegaly": 0.5}, anatomy=True)
        if info["view"] != "PA":
            continue
        ctr = _ctr(info["heart"], info["lung"])
        assert abs(ctr - info["ctr"]) < 0.03, (i, ctr, info["ctr"])
        (pos if labels[3] else neg).append(ctr)
    assert len(pos) >= 8 and len(neg) >= 8
    assert np.mean(pos) - np.mean(neg) > 0.08
    assert min(pos) > 0.50 and 0.36 < min(neg) and max(neg) < 0.49


def test_ap_view_magnifies_heart_only():
    for i in range(40):
        _, _, labels, info = render(2, i, 128, anatomy=True)
        if info["view"] == "AP":
            ctr = _ctr(info["heart"], info["lung"])
            assert ctr == pytest.approx(info["ctr"] * info["ap_magnification"], abs=0.03)
            return
    pytest.fail("no AP view among 40 images")


def test_prevalence_is_honoured_statistically():
    n = 2000
    ds = SyntheticCXR(n, 64, seed=11, prevalence={"nodule": 0.3, "mass": 0.05})
    p = np.asarray(ds.labels).mean(0)
    expected = np.array([0.3, 0.05] + [DEFAULT_PREVALENCE[f] for f in FINDINGS[2:]])
    tol = 4 * np.sqrt(expected * (1 - expected) / n)
    assert (np.abs(p - expected) < tol).all(), (p, expected)
    # findings independent: joint rate of nodule & effusion close to the product
    y = np.asarray(ds.labels)
    joint = (y[:, 0] * y[:, 2]).mean()
    assert abs(joint - 0.3 * expected[2]) < 4 * np.sqrt(0.09 / n)
    assert np.asarray(SyntheticCXR(200, 64, prevalence={"pneumothorax": 0.0}).labels)[:, 4].sum() == 0


def test_patient_disjoint_splits():
    ds = {s: SyntheticCXR(600, 64, seed=4, images_per_patient=3, split=s) for s in SPLITS}
    ids = {s: set(d.patient_ids) for s, d in ds.items()}
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"])
    assert not (ids["val"] & ids["test"])
    # consecutive triples share a patient, and images map to the unsplit stream's images
    tr = ds["train"]
    assert tr.patient_ids[0] == tr.patient_ids[2] != tr.patient_ids[3]
    g = int(tr.global_index(4))
    assert tr.patient_ids[4] == f"p{g // 3}"
    np.testing.assert_array_equal(tr.render(4)[0], render(4, g, 64, images_per_patient=3)[0])
    # the train share of patients is 14/20 within every block of 20
    all_p = set().union(*ids.values())
    small = {int(p[1:]) for p in all_p if int(p[1:]) < 60}
    assert small == set(range(60))


def test_unbounded_length_is_lazy():
    ds = SyntheticCXR(None, 64, seed=2, images_per_patient=1)
    assert len(ds) == UNBOUNDED
    i = UNBOUNDED - 1
    np.testing.assert_array_equal(ds.labels[i], finding_labels(2, i, check_prevalence(None))[0])
    assert ds.patient_ids[i] == f"p{i}"
    assert ds[i]["image"].shape == (1, 64, 64)


def test_labelled_false_hides_labels_and_boxes_match_masks():
    ds = SyntheticCXR(30, 64, seed=6, labelled=False, prevalence=HALF)
    assert torch.isnan(ds[0]["labels"]).all() and not np.isnan(ds.labels).any()
    for i in range(30):
        boxes = ds.boxes(i)
        assert [b[0] for b in boxes] == [f for f, y in zip(FINDINGS, ds.labels[i]) if y]
        for name, x, y, w, h in boxes:
            m = ds[i]["mask"][FINDINGS.index(name)].numpy()
            assert m[int(y):int(y + h), int(x):int(x + w)].sum() == m.sum()


def test_anatomy_contrast_physics():
    """Bone and heart attenuate more than aerated lung; the air outside the body is black."""
    img, _, _, info = render(1, 0, 128, prevalence={f: 0.0 for f in FINDINGS}, anatomy=True)
    lung, heart = info["lung"], info["heart"]
    assert img[heart].mean() > img[lung].mean() + 0.1
    assert img[:20, :8].mean() < 0.1  # upper corners: air beside the neck


@pytest.mark.parametrize("kwargs, name", [
    (dict(image_size=32), "image_size"),
    (dict(image_size=600), "image_size"),
    (dict(prevalence={"nodule": 1.5}), "prevalence"),
    (dict(prevalence={"tumour": 0.2}), "unknown finding"),
    (dict(difficulty=2.0), "difficulty"),
    (dict(difficulty="medium"), "difficulty"),
    (dict(split="holdout"), "split"),
    (dict(images_per_patient=0), "images_per_patient"),
    (dict(length=0), "length"),
])
def test_bad_parameters_raise_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SyntheticCXR(**{"length": 10, **kwargs})


def test_pneumothorax_rim_is_darker_than_without_it():
    """Same image with and without a pneumothorax (labels of the other findings, anatomy, pose and
    noise are shared): inside the rim, away from the pleural line, lung tissue became air."""
    from scipy.ndimage import binary_erosion

    done = 0
    for i in range(12):
        img, masks, labels, info = render(8, i, 128, "easy", prevalence={"pneumothorax": 1.0},
                                          anatomy=True)
        ref, ref_masks, ref_labels = render(8, i, 128, "easy", prevalence={"pneumothorax": 0.0})
        np.testing.assert_array_equal(labels[:4], ref_labels[:4])
        assert not ref_masks[4].any()
        core = binary_erosion(masks[4], iterations=2) & info["lung"]
        if core.sum() < 20:
            continue
        assert img[core].mean() < ref[core].mean() - 0.01, i
        done += 1
    assert done >= 5

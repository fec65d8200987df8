"""Patient splits and label fractions: disjoint, reproducible, honoured, multi-label aware."""
import numpy as np
import pytest

from mlvicx_core.data.splits import label_fraction, patient_split


def _cohort(n_patients=500, seed=0):
    rng = np.random.default_rng(seed)
    per = rng.integers(1, 4, n_patients)  # 1-3 images per patient
    pids = np.repeat([f"P{i:04d}" for i in range(n_patients)], per)
    labels = (rng.random((len(pids), 3)) < [0.3, 0.1, 0.0]).astype(float)
    labels[rng.random(labels.shape) < 0.05] = np.nan
    # finding 2 is rare: one positive patient only (all of their images)
    labels[pids == "P0123", 2] = 1.0
    return pids, labels


def test_patient_split_disjoint_complete_reproducible():
    pids, _ = _cohort()
    a = patient_split(pids, (0.7, 0.1, 0.2), seed=3)
    b = patient_split(pids, (0.7, 0.1, 0.2), seed=3)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    sets = {k: set(pids[v]) for k, v in a.items()}
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"])
    assert not (sets["val"] & sets["test"])
    assert sorted(np.concatenate(list(a.values()))) == list(range(len(pids)))
    assert (len(sets["val"]), len(sets["test"])) == (50, 100)
    c = patient_split(pids, (0.7, 0.1, 0.2), seed=4)
    assert not np.array_equal(a["test"], c["test"])
    with pytest.raises(ValueError, match="summing to 1"):
        patient_split(pids, (0.5, 0.5, 0.5))


def test_patient_split_gives_tiny_cohorts_a_val_and_a_test_patient():
    """round() would leave val empty for 4 patients at 0.7/0.1/0.2; one patient moves from train."""
    pids = np.array(["a", "a", "b", "c", "d"])
    s = patient_split(pids, (0.7, 0.1, 0.2), seed=0)
    counts = {k: len(set(pids[v])) for k, v in s.items()}
    assert counts == {"train": 2, "val": 1, "test": 1}
    with pytest.raises(ValueError, match="too few"):
        patient_split(np.array(["a", "b"]), (0.7, 0.1, 0.2))


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5])
def test_label_fraction_per_patient_honoured_reproducible(fraction):
    pids, labels = _cohort()
    idx = label_fraction(pids, labels, fraction, seed=0)
    np.testing.assert_array_equal(idx, label_fraction(pids, labels, fraction, seed=0))
    chosen = set(pids[idx])
    assert len(chosen) == max(1, round(fraction * 500))
    # whole patients: every image of a chosen patient is in, no other image is
    np.testing.assert_array_equal(idx, np.flatnonzero(np.isin(pids, list(chosen))))
    assert not np.array_equal(idx, label_fraction(pids, labels, fraction, seed=1))


def test_label_fraction_multilabel_aware():
    pids, labels = _cohort()
    # 1 % = 5 patients; the one patient positive for finding 2 must be among them
    for seed in range(5):
        idx = label_fraction(pids, labels, 0.01, seed=seed)
        sub = labels[idx]
        for k in range(3):
            assert np.nansum(sub[:, k] == 1) > 0 and np.nansum(sub[:, k] == 0) > 0, (seed, k)
    # without the guarantee, 5 random patients almost never include P0123
    misses = sum("P0123" not in set(pids[label_fraction(pids, labels, 0.01, seed=s,
                                                        both_classes=False)]) for s in range(5))
    assert misses >= 4


def test_label_fraction_full_and_bad_input():
    pids, labels = _cohort(20)
    np.testing.assert_array_equal(label_fraction(pids, labels, 1.0), np.arange(len(pids)))
    with pytest.raises(ValueError, match="fraction=10"):
        label_fraction(pids, labels, 10)
    with pytest.raises(ValueError, match="labels"):
        label_fraction(pids, labels[:-1], 0.5)

"""AUROC, bootstrap CIs, Dice and localisation scores against independent references."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mlvicx_core.evaluation.localisation import (
    boxes_to_mask,
    energy_inside,
    localisation_scores,
    pointing_hit,
)
from mlvicx_core.evaluation.metrics import auroc, bootstrap_auroc, dice, per_finding_auroc


def test_auroc_matches_sklearn_with_ties_and_unknowns():
    rng = np.random.default_rng(0)
    y = (rng.random(200) < 0.3).astype(float)
    s = np.round(rng.normal(size=200) + y, 1)  # rounding creates ties
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    y_unknown = y.copy()
    y_unknown[::7] = np.nan
    keep = ~np.isnan(y_unknown)
    assert auroc(y_unknown, s) == pytest.approx(roc_auc_score(y[keep], s[keep]), abs=1e-12)


def test_auroc_hand_value():
    # positives 0.8, 0.4; negatives 0.5, 0.1 -> pairs won: (0.8>0.5),(0.8>0.1),(0.4>0.1) = 3 of 4
    assert auroc(np.array([1, 1, 0, 0]), np.array([0.8, 0.4, 0.5, 0.1])) == 0.75


def test_single_class_finding_is_nan_not_zero_and_excluded_from_mean():
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]], dtype=float)
    s = np.array([[0.9, 0.1], [0.2, 0.3], [0.8, 0.5], [0.1, 0.7]])
    per = per_finding_auroc(y, s)
    assert per[0] == 1.0 and np.isnan(per[1])
    res = bootstrap_auroc(y, s, n_boot=50, seed=0)
    assert res.mean == 1.0  # the mean of the defined findings only
    assert np.isnan(res.per_finding_ci[1]).all()


def test_bootstrap_ci_contains_point_reproducible_and_matches_plain_loop():
    rng = np.random.default_rng(1)
    y = (rng.random((300, 3)) < 0.4).astype(float)
    s = y * 0.8 + rng.normal(size=y.shape)
    a = bootstrap_auroc(y, s, n_boot=200, seed=7)
    b = bootstrap_auroc(y, s, n_boot=200, seed=7)
    c = bootstrap_auroc(y, s, n_boot=200, seed=8)
    np.testing.assert_array_equal(a.per_finding_ci, b.per_finding_ci)
    assert not np.array_equal(a.per_finding_ci, c.per_finding_ci)
    assert np.all(a.per_finding_ci[:, 0] <= a.per_finding) and np.all(a.per_finding <= a.per_finding_ci[:, 1])
    assert a.mean_ci[0] <= a.mean <= a.mean_ci[1]
    # independent re-implementation with sklearn
    r = np.random.default_rng(7)
    vals = []
    for _ in range(200):
        rows = r.integers(0, 300, 300)
        vals.append([roc_auc_score(y[rows, k], s[rows, k]) for k in range(3)])
    vals = np.array(vals)
    np.testing.assert_allclose(a.per_finding_ci, np.quantile(vals, [0.025, 0.975], axis=0).T,
                               atol=1e-12)
    np.testing.assert_allclose(a.mean_ci, np.quantile(vals.mean(1), [0.025, 0.975]), atol=1e-12)


def test_dice_hand_values_and_siim_empty_convention():
    pred = np.zeros((3, 4, 4), dtype=bool)
    tgt = np.zeros((3, 4, 4), dtype=bool)
    pred[0, :2, :2] = True        # 4 pixels
    tgt[0, :2, 1:3] = True        # 4 pixels, overlap 2 -> 2*2/8 = 0.5
    tgt[1, 0, 0] = True           # predicted empty, truth not -> 0
    # image 2: both empty -> 1 (SIIM)
    np.testing.assert_allclose(dice(pred, tgt), [0.5, 0.0, 1.0])
    with pytest.raises(ValueError, match="one shape"):
        dice(pred, tgt[:, :3])


def test_pointing_game_and_energy_on_hand_made_maps():
    h = np.zeros((10, 10))
    h[2, 3] = 5.0
    h[7, 7] = 1.0
    h[0, 0] = -4.0  # negative values carry no energy
    region = np.zeros((10, 10), dtype=bool)
    region[6:9, 6:9] = True
    assert pointing_hit(h, region) == 0.0
    # nearest region pixel to (2, 3) is (6, 6): distance sqrt(16 + 9) = 5
    assert pointing_hit(h, region, tolerance=4.9) == 0.0
    assert pointing_hit(h, region, tolerance=5.0) == 1.0
    assert energy_inside(h, region) == pytest.approx(1.0 / 6.0)
    assert np.isnan(pointing_hit(h, np.zeros_like(region)))
    scores = localisation_scores(np.stack([h, h.T]), np.stack([region, region]))
    # h.T has its max at (3, 2): also outside; energy the same by symmetry of the region
    assert scores == {"pointing_game": 0.0, "energy_inside": pytest.approx(1 / 6), "n": 2,
                      "n_energy": 2, "n_constant": 0, "chance_pointing": 0.09,
                      "chance_energy": 0.09}


def test_boxes_to_mask_pixel_centres():
    m = boxes_to_mask([("nodule", 1.0, 2.0, 3.0, 2.0), ("mass", 0, 0, 1, 1)], 6, finding="nodule")
    expected = np.zeros((6, 6), dtype=bool)
    expected[2:4, 1:4] = True
    np.testing.assert_array_equal(m, expected)
    half = boxes_to_mask([("x", 0.6, 0.0, 1.0, 1.0)], 3)  # covers the centre of column 1 only
    assert half.sum() == 1 and half[0, 1]


def test_pointing_game_is_decided_by_all_maximal_pixels_not_the_first():
    """Issue 12 item 16: ties were broken by numpy's argmax (first pixel in row-major order): an
    all-zero map was a miss at (0, 0) and a plateau's top-left pixel decided. Now a map scores the
    share of its maximal pixels inside the (dilated) region (the expected hit when pointing at one
    of them uniformly at random); a constant map is undefined and counted separately."""
    region = np.zeros((8, 8), dtype=bool)
    region[2:6, 2:6] = True
    plateau = np.zeros((8, 8))
    plateau[0:4, 0:4] = 1.0  # 16 maximal pixels, 4 of them (rows 2-3, cols 2-3) in the region
    assert pointing_hit(plateau, region) == 0.25
    # tolerance 1 adds (1, 2), (1, 3), (2, 1), (3, 1) (distance 1; (1, 1) is sqrt(2) away)
    assert pointing_hit(plateau, region, tolerance=1.0) == 0.5
    two = np.zeros((8, 8))
    two[0, 0] = two[4, 4] = 3.0  # two separate maxima, one inside
    assert pointing_hit(two, region) == 0.5
    single = np.zeros((8, 8))
    single[3, 3] = 2.0
    assert pointing_hit(single, region) == 1.0
    for constant in (np.zeros((8, 8)), np.full((8, 8), 0.5)):
        assert np.isnan(pointing_hit(constant, region))
    with pytest.raises(ValueError, match="finite"):
        pointing_hit(np.full((8, 8), np.nan), region)

    zero = np.zeros((8, 8))
    scores = localisation_scores(np.stack([plateau, zero, single]), np.stack([region] * 3))
    # pointing over the two informative maps; energy: plateau 4/16 inside, single 1/1
    assert scores["pointing_game"] == pytest.approx((0.25 + 1.0) / 2)
    assert scores["energy_inside"] == pytest.approx((0.25 + 1.0) / 2)
    assert (scores["n"], scores["n_energy"], scores["n_constant"]) == (2, 2, 1)
    # chance: a uniformly random pointer / a uniform map, on the same two images
    assert scores["chance_pointing"] == scores["chance_energy"] == 16 / 64
    dilated = localisation_scores(np.stack([plateau, zero]), np.stack([region] * 2), 1.0)
    assert dilated["chance_pointing"] == (16 + 4 * 4) / 64 and dilated["n_constant"] == 1
    only_constant = localisation_scores(zero[None], region[None])
    assert np.isnan(only_constant["pointing_game"]) and np.isnan(only_constant["chance_pointing"])
    assert (only_constant["n"], only_constant["n_constant"]) == (0, 1)

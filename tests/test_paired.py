"""Paired comparisons (evaluation/paired.py) and the Grad-CAM pointing table (tap_localisation),
against hand-built inputs and a plain recomputation written here."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from mlvicx_core.evaluation.paired import paired_table, verdict
from mlvicx_core.evaluation.tap_localisation import constant_map_notes, pointing_table


def scored(rng, labels, strength):
    """Scores that follow the labels with the given strength, plus noise."""
    return labels * strength + rng.normal(size=labels.shape)


def test_paired_table_against_sklearn_and_a_plain_bootstrap():
    rng = np.random.default_rng(0)
    y = (rng.random((300, 3)) < 0.3).astype(float)
    enc = {"random": {("probe", 1.0): (y, scored(rng, y, 0.2)), ("knn", 1.0): (y, scored(rng, y, 0.2))},
           "good": {("probe", 1.0): (y, scored(rng, y, 2.0)), ("knn", 1.0): (y, scored(rng, y, 2.0))},
           "same": {}}
    enc["same"] = {k: (v[0], v[1].copy()) for k, v in enc["random"].items()}
    t = paired_table(enc, "random", n_boot=200, seed=3)
    assert list(t.encoder) == ["good", "good", "same", "same"]
    for r in t.itertuples():
        a = enc[r.encoder][(r.task, r.fraction)][1]
        b = enc["random"][(r.task, r.fraction)][1]
        plain = np.mean([roc_auc_score(y[:, j], a[:, j]) - roc_auc_score(y[:, j], b[:, j])
                         for j in range(3)])
        assert r.diff == pytest.approx(plain, abs=1e-12)
    good = t[(t.encoder == "good") & (t.task == "probe")].iloc[0]
    assert good.ci_low > 0.2 and good.verdict == "above random init"
    same = t[t.encoder == "same"]
    assert (same["diff"] == 0).all() and (same.ci_low == 0).all() and (same.ci_high == 0).all()
    assert (same.verdict == "level with random init").all()
    # a plain paired bootstrap with the same generator draws gives the same interval
    rng2 = np.random.default_rng(3)
    a, b = enc["good"][("probe", 1.0)][1], enc["random"][("probe", 1.0)][1]
    boots = []
    for _ in range(200):
        i = rng2.integers(0, 300, size=300)
        boots.append(np.mean([roc_auc_score(y[i, j], a[i, j]) - roc_auc_score(y[i, j], b[i, j])
                              for j in range(3)]))
    assert (good.ci_low, good.ci_high) == pytest.approx(
        tuple(np.percentile(boots, [2.5, 97.5])), abs=1e-9)
    only = paired_table(enc, "random", tasks=("knn",), fractions=(1.0,), n_boot=10)
    assert set(only.task) == {"knn"} and len(only) == 2


def test_paired_table_refuses_different_images_and_a_missing_reference():
    y = np.array([[0.0], [1.0], [0.0], [1.0]])
    s = np.arange(4.0)[:, None]
    with pytest.raises(ValueError, match="b and a: the probe test labels at fraction 1 differ"):
        paired_table({"a": {("probe", 1.0): (y, s)}, "b": {("probe", 1.0): (1 - y, s)}}, "a")
    with pytest.raises(KeyError, match="'random' not among"):
        paired_table({"a": {}}, "random")


def test_verdict_wording():
    assert verdict(0.01, 0.05) == "above random init"
    assert verdict(-0.05, -0.01, "VICReg") == "below VICReg"
    assert verdict(-0.01, 0.01) == "level with random init"


def test_pointing_table_one_row_per_finding_in_network_order():
    rows = []
    for enc in ("random", "MLVICX"):
        for k, finding in enumerate(("mass", "nodule")):
            for t, tap in enumerate(("stem", "layer1", "layer4")):
                rows.append({"encoder": enc, "tap": tap, "finding": finding,
                             "pointing_game": 0.1 * t + 0.01 * k + (0.5 if enc == "MLVICX" else 0),
                             "chance_pointing": 0.05 + 0.1 * k, "n": 10 - k - t,
                             "n_constant": 1 if (enc, finding, tap) == ("random", "nodule", "stem")
                             else 0})
    scores = pd.DataFrame(rows)
    wide = pointing_table(scores)
    assert list(wide.index) == ["mass", "nodule"]
    assert list(wide.columns) == [("random", "stem"), ("random", "layer1"), ("random", "layer4"),
                                  ("MLVICX", "stem"), ("MLVICX", "layer1"), ("MLVICX", "layer4"),
                                  ("chance", ""), ("n", "")]
    assert wide.loc["nodule", ("MLVICX", "layer4")] == pytest.approx(0.5 + 0.2 + 0.01)
    assert wide.loc["mass", ("chance", "")] == pytest.approx(0.05)
    assert wide.loc["nodule", ("n", "")] == 9  # the most images scored for the finding
    assert constant_map_notes(scores) == [
        "random nodule stem: 1 of 10 maps constant (no maximum to point with: left out)"]
    scores.loc[0, ["n", "n_constant"]] = [0, 4]
    assert constant_map_notes(scores)[0] == (
        "random mass stem: 4 of 4 maps constant (no maximum to point with: left out; none left, "
        "hence NaN)")

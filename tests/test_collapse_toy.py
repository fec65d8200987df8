"""The collapse demonstration: without the variance term the toy encoder collapses, with it not."""
import pandas as pd

from mlvicx_core.experiments.collapse_toy import collapse_demo


def test_variance_term_prevents_collapse():
    frame = collapse_demo(steps=120)
    last = frame.groupby("std_coeff").tail(1).set_index("std_coeff")
    # without the hinge every dimension shrinks towards one point
    assert last.loc[0.0, "std_mean"] < 0.01 and last.loc[0.0, "invariance"] < 1e-4
    # with it every dimension keeps a standard deviation near the target of 1
    assert last.loc[25.0, "std_min"] > 0.8 and last.loc[25.0, "variance"] < 0.1
    # both runs start from the same weights and data
    first = frame[frame.step == 1].set_index("std_coeff")
    assert first.loc[0.0, "std_mean"] == first.loc[25.0, "std_mean"]


def test_deterministic_given_a_seed():
    a, b = collapse_demo(steps=5, seed=3), collapse_demo(steps=5, seed=3)
    pd.testing.assert_frame_equal(a, b)

"""Linear probe and kNN on synthetic features with known answers."""
import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from mlvicx_core.evaluation.knn import knn_scores, select_k
from mlvicx_core.evaluation.metrics import per_finding_auroc
from mlvicx_core.evaluation.probe import fit_linear_probe


def _separable(n, seed, d=16, k=3):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, k)) < 0.4).astype(float)
    x = rng.normal(size=(n, d))
    x[:, :k] += 4.0 * (2 * y - 1)  # finding k lives on feature k, margin 8 sigma
    return x, y


def test_probe_separable_reaches_one_and_shuffled_is_chance():
    x, y = _separable(900, 0)
    tr, va, te = slice(0, 500), slice(500, 650), slice(650, 900)
    probe = fit_linear_probe(x[tr], y[tr], x[va], y[va])
    assert per_finding_auroc(y[te], probe.scores(x[te])).min() > 0.99
    rng = np.random.default_rng(1)
    y_shuf = y[rng.permutation(len(y))]
    probe = fit_linear_probe(x[tr], y_shuf[tr], x[va], y_shuf[va])
    per = per_finding_auroc(y_shuf[te], probe.scores(x[te]))
    assert np.all(np.abs(per - 0.5) < 0.12), per


def test_probe_selects_C_on_validation_and_matches_sklearn():
    x, y = _separable(300, 2, k=1)
    y[:, 0] = np.where(np.random.default_rng(0).random(300) < 0.15, 1 - y[:, 0], y[:, 0])
    probe = fit_linear_probe(x[:200], y[:200], x[200:], y[200:], Cs=(0.001, 1.0))
    assert set(probe.val_auroc) == {0.001, 1.0}
    assert probe.val_auroc[probe.C] == max(probe.val_auroc.values())
    # the chosen model equals a plain sklearn fit on standardised features
    mean, std = x[:200].mean(0), x[:200].std(0)
    ref = LogisticRegression(C=probe.C, max_iter=2000).fit((x[:200] - mean) / std, y[:200, 0])
    np.testing.assert_allclose(probe.scores(x[200:])[:, 0],
                               ref.decision_function((x[200:] - mean) / std), atol=1e-4)
    head = probe.as_torch_head()
    np.testing.assert_allclose(head(torch.as_tensor(x[200:], dtype=torch.float32)).detach().numpy(),
                               probe.scores(x[200:]), atol=1e-4)


def test_probe_untrainable_finding_and_unknown_labels():
    x, y = _separable(200, 3, k=2)
    y[:, 1] = 0.0  # single class in training
    y[::5, 0] = np.nan  # unknown labels are skipped, not treated as negatives
    probe = fit_linear_probe(x[:150], y[:150], x[150:], y[150:])
    assert probe.untrainable == [1]
    s = probe.scores(x[150:])
    assert np.ptp(s[:, 1]) == 0  # constant score
    assert per_finding_auroc(y[150:], s)[0] > 0.99
    with pytest.raises(ValueError, match="validation shapes"):
        fit_linear_probe(x[:150], y[:150], x[150:, :3], y[150:])


def test_knn_hand_example_and_separable():
    xt = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    yt = np.array([[1.0], [np.nan], [0.0], [1.0]])
    q = np.array([[2.0, 0.1], [0.05, 1.0]])
    # q0's two nearest (cosine): rows 0, 1 -> known labels {1} -> 1.0
    # q1's two nearest: rows 2, 3 -> (0 + 1) / 2
    np.testing.assert_allclose(knn_scores(xt, yt, q, k=2), [[1.0], [0.5]])
    x, y = _separable(600, 4)
    k, by_k = select_k(x[:400], y[:400], x[400:500], y[400:500], ks=(1, 5, 25))
    assert k in (1, 5, 25) and by_k[k] == max(by_k.values())
    assert per_finding_auroc(y[500:], knn_scores(x[:400], y[:400], x[500:], k)).min() > 0.99

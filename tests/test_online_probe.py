"""The online probe (``mlvicx_core.train.online_probe``): its closed-form read-outs against plain
re-computations written here, the records of ``OnlineProbe``, and the probe inside a pretraining run
(metrics.jsonl and the training figure)."""
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from train_helpers import TINY_MODEL, TinyCXR, simple_augment, tiny_config

from mlvicx_core.data.splits import patient_split
from mlvicx_core.evaluation.baselines import reference_encoder
from mlvicx_core.evaluation.embeddings import trunk_features
from mlvicx_core.model import MLVICX
from mlvicx_core.train.metrics import read_metrics
from mlvicx_core.train.online_probe import OnlineProbe, knn_vote, ridge_scores
from mlvicx_core.train.trainer import pretrain, seed_everything


# -- plain references ------------------------------------------------------------------------------
def primal_ridge(x_fit, y_fit, x_score, alpha=1.0):
    """Ridge in its primal form: standardise with the fit mean/std (constant features left at
    std 1), centre the labels (unknown ones at the finding's mean), solve
    (X^T X + alpha n I) W = X^T (Y - mean Y) in float64."""
    x_fit = np.asarray(x_fit, dtype=np.float64)
    x_score = np.asarray(x_score, dtype=np.float64)
    mean, std = x_fit.mean(axis=0), x_fit.std(axis=0)
    std[std <= 1e-8] = 1.0
    a, b = (x_fit - mean) / std, (x_score - mean) / std
    y = np.array(y_fit, dtype=np.float64)
    for k in range(y.shape[1]):
        known = ~np.isnan(y[:, k])
        if known.any():
            y[known, k] -= y[known, k].mean()
        y[~known, k] = 0.0
    n, d = a.shape
    w = np.linalg.solve(a.T @ a + alpha * n * np.eye(d), a.T @ y)
    return b @ w


def brute_knn(x_fit, y_fit, x_score, k=20):
    """For every score row: cosine similarity to every fit row, the k most similar, the share of
    positives among those with a known label."""
    x_fit = np.asarray(x_fit, dtype=np.float64)
    y_fit = np.asarray(y_fit, dtype=np.float64)
    k = min(k, len(x_fit))
    out = np.zeros((len(x_score), y_fit.shape[1]))
    for i, q in enumerate(np.asarray(x_score, dtype=np.float64)):
        sims = [float(q @ f) / (np.linalg.norm(q) * np.linalg.norm(f)) for f in x_fit]
        nearest = sorted(range(len(x_fit)), key=lambda j: -sims[j])[:k]
        for c in range(y_fit.shape[1]):
            known = [y_fit[j, c] for j in nearest if not np.isnan(y_fit[j, c])]
            if not known:  # no neighbour has a known label: the fit half's share of positives
                known = [v for v in y_fit[:, c] if not np.isnan(v)] or [0.0]
            out[i, c] = sum(known) / len(known)
    return out


def reference_records(model, images, labels, patient_ids, findings, seed, kind="trunk"):
    """The probe's records recomputed: same features, same patient halves, sklearn's AUROC."""
    x = trunk_features(model, images, kind)
    halves = patient_split(patient_ids, (0.5, 0.0, 0.5), seed)
    fit, score = halves["train"], halves["test"]
    out = {}
    for name, scores in (("linear", primal_ridge(x[fit], labels[fit], x[score])),
                         ("knn", brute_knn(x[fit], labels[fit], x[score]))):
        defined = []
        for k, f in enumerate(findings):
            y = labels[score, k]
            known = ~np.isnan(y)
            if len(set(y[known])) == 2:
                auc = roc_auc_score(y[known], scores[known, k])
                defined.append(auc)
            else:
                auc = float("nan")
            out[f"probe/{name}/{f}"] = auc
        out[f"probe/{name}/mean"] = float(np.mean(defined)) if defined else float("nan")
    return out


def assert_records_equal(got, want, atol=1e-9):
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        if np.isnan(value):
            assert np.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(value, abs=atol), key


# -- (a) ridge -------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, d", [(10, 30), (50, 6), (24, 24)])
@pytest.mark.parametrize("alpha", [1.0, 0.05])
def test_ridge_equals_the_primal_solution(n, d, alpha):
    rng = np.random.default_rng(n * 100 + d)
    x_fit = rng.normal(2.0, 3.0, (n, d)) * rng.uniform(0.1, 5, d)  # unequal scales and offsets
    x_fit[:, 1] = 4.0  # a constant feature (std 0) is left unscaled
    x_score = rng.normal(2.0, 3.0, (15, d))
    y_fit = (rng.random((n, 3)) < 0.4).astype(float)
    got = ridge_scores(x_fit, y_fit, x_score, alpha=alpha)
    want = primal_ridge(x_fit, y_fit, x_score, alpha=alpha)
    assert got.shape == (15, 3)
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-8 * max(scale, 1.0))


def test_ridge_unknown_labels_sit_at_the_finding_mean():
    rng = np.random.default_rng(1)
    x_fit, x_score = rng.normal(size=(30, 8)), rng.normal(size=(12, 8))
    y_fit = (rng.random((30, 2)) < 0.5).astype(float)
    y_fit[[0, 3, 7, 11], 0] = np.nan
    got = ridge_scores(x_fit, y_fit, x_score)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, primal_ridge(x_fit, y_fit, x_score), rtol=0, atol=1e-8)
    # the same as filling the unknown labels with the known ones' mean
    filled = y_fit.copy()
    filled[np.isnan(filled[:, 0]), 0] = np.nanmean(y_fit[:, 0])
    np.testing.assert_allclose(got, ridge_scores(x_fit, filled, x_score), rtol=0, atol=1e-10)
    # and the finding without unknowns is not affected by the other one's
    np.testing.assert_allclose(got[:, 1], ridge_scores(x_fit, y_fit[:, 1:], x_score)[:, 0],
                               rtol=0, atol=1e-10)


# -- (b) kNN ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, k", [(40, 20), (40, 1), (25, 7)])
def test_knn_equals_a_brute_force_loop(n, k):
    # continuous random features: no two cosine similarities tie (probability 0)
    rng = np.random.default_rng(n + k)
    x_fit, x_score = rng.normal(size=(n, 5)), rng.normal(size=(9, 5))
    y_fit = (rng.random((n, 3)) < 0.3).astype(float)
    got = knn_vote(x_fit, y_fit, x_score, k=k)
    np.testing.assert_allclose(got, brute_knn(x_fit, y_fit, x_score, k=k), rtol=0, atol=1e-12)
    assert got.shape == (9, 3)
    # cosine: rescaling rows changes nothing
    scaled = knn_vote(x_fit * rng.uniform(0.1, 10, (n, 1)), y_fit, x_score * 7.0, k=k)
    np.testing.assert_allclose(scaled, got, rtol=0, atol=1e-12)


def test_knn_k_above_n_is_capped_to_every_fit_image():
    rng = np.random.default_rng(3)
    x_fit, x_score = rng.normal(size=(7, 4)), rng.normal(size=(5, 4))
    y_fit = (rng.random((7, 2)) < 0.5).astype(float)
    got = knn_vote(x_fit, y_fit, x_score, k=100)
    np.testing.assert_allclose(got, np.tile(y_fit.mean(0), (5, 1)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(got, brute_knn(x_fit, y_fit, x_score, k=100), atol=1e-12)


def test_knn_leaves_unknown_labels_out_of_the_share():
    rng = np.random.default_rng(4)
    x_fit, x_score = rng.normal(size=(30, 5)), rng.normal(size=(10, 5))
    y_fit = (rng.random((30, 2)) < 0.4).astype(float)
    y_fit[::4, 0] = np.nan
    got = knn_vote(x_fit, y_fit, x_score, k=6)
    np.testing.assert_allclose(got, brute_knn(x_fit, y_fit, x_score, k=6), rtol=0, atol=1e-12)


# -- (c) OnlineProbe -------------------------------------------------------------------------------
N_IMAGES = 48


def tiny_probe_data():
    """48 TinyCXR images of 24 patients (two each) and three findings: the blob's side (both
    classes), a seeded random label with some unknowns (both classes), and one that is never
    positive (single class: undefined AUROC, left out of the mean)."""
    ds = TinyCXR(N_IMAGES)
    images = torch.stack([ds[i]["image"] for i in range(N_IMAGES)])
    side = np.array([float(np.random.default_rng(i).random(2)[0] > 0.5) for i in range(N_IMAGES)])
    noise = (np.random.default_rng(99).random(N_IMAGES) < 0.4).astype(float)
    noise[[1, 6, 17, 30]] = np.nan
    labels = np.stack([side, noise, np.zeros(N_IMAGES)], axis=1)
    pids = np.array([f"q{i // 2}" for i in range(N_IMAGES)], dtype=object)
    return images, labels, pids, ("side", "noise", "never")


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return MLVICX(TINY_MODEL)


@pytest.mark.parametrize("kind", ["trunk", "layer3+layer4", "global"])
def test_probe_records_equal_a_recomputation(tiny_model, kind):
    images, labels, pids, findings = tiny_probe_data()
    probe = OnlineProbe(images, labels, pids, findings, seed=3, features=kind)
    got = probe(tiny_model)
    want = reference_records(tiny_model, images, labels, pids, findings, seed=3, kind=kind)
    assert np.isnan(want["probe/linear/never"]) and np.isfinite(want["probe/linear/mean"])
    assert_records_equal(got, want)
    assert got["probe/knn/mean"] == pytest.approx(
        (got["probe/knn/side"] + got["probe/knn/noise"]) / 2, abs=1e-12)
    assert 0.0 <= got["probe/linear/mean"] <= 1.0


def test_probe_halves_split_patients():
    images, labels, pids, findings = tiny_probe_data()
    for seed in (0, 1, 2):
        probe = OnlineProbe(images, labels, pids, findings, seed=seed)
        fit, score = set(probe.fit.tolist()), set(probe.score.tolist())
        assert fit.isdisjoint(score) and fit | score == set(range(N_IMAGES))
        assert set(pids[list(fit)]).isdisjoint(set(pids[list(score)]))
        assert len(set(pids[list(fit)])) == len(set(pids[list(score)])) == 12
    other = OnlineProbe(images, labels, pids, findings, seed=1)
    assert not np.array_equal(OnlineProbe(images, labels, pids, findings, seed=0).fit, other.fit)


@pytest.mark.parametrize("kind", ["trunk", "global"])
def test_probe_restores_the_model_mode_and_changes_nothing(tiny_model, kind):
    images, labels, pids, findings = tiny_probe_data()
    probe = OnlineProbe(images, labels, pids, findings, features=kind)
    model = tiny_model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for mode in (True, False):
        model.train(mode)
        first = probe(model)
        assert all(m.training is mode for m in model.modules())
        # eval mode inside: the BatchNorm statistics did not move, no gradient was kept
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[k]), k
        assert all(p.grad is None for p in model.parameters())
        assert_records_equal(probe(model), first, atol=0)  # the same in either mode
    model.eval()


def test_probe_refuses_bad_shapes_and_labels():
    images, labels, pids, findings = tiny_probe_data()
    with pytest.raises(ValueError, match=r"images \(48, 32, 32\).*expected \(N, 1, S, S\)"):
        OnlineProbe(images[:, 0], labels, pids, findings)
    with pytest.raises(ValueError, match=r"images \(48, 1, 32, 32\), labels \(47, 3\)"):
        OnlineProbe(images, labels[:-1], pids, findings)
    with pytest.raises(ValueError, match=r"labels \(48,\).*\(N, K\)"):
        OnlineProbe(images, labels[:, 0], pids, findings)
    with pytest.raises(ValueError, match=r"47 patient ids for 48 images"):
        OnlineProbe(images, labels, pids[:-1], findings)
    with pytest.raises(ValueError, match=r"2 findings \['side', 'noise'\] for 3 label columns"):
        OnlineProbe(images, labels, pids, findings[:2])
    bad = labels.copy()
    bad[5, 0] = 2.0
    with pytest.raises(ValueError, match=r"labels: expected 0, 1 or NaN \(unknown\), got 2\.0"):
        OnlineProbe(images, bad, pids, findings)


def test_knn_without_a_known_neighbour_takes_the_fit_share():
    x_fit = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0], [0.0, -1.0]])
    y_fit = np.array([[np.nan, 1.0], [np.nan, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, np.nan]])
    x_score = np.array([[1.0, 0.05], [0.05, 1.0]])
    got = knn_vote(x_fit, y_fit, x_score, k=2)
    # row 0: both neighbours unknown for finding 0 -> its known fit share 1/3; row 1: 1/2
    np.testing.assert_allclose(got, [[1 / 3, 0.5], [0.5, 1.0]], atol=1e-12)
    np.testing.assert_allclose(got, brute_knn(x_fit, y_fit, x_score, k=2), atol=1e-12)


def test_probe_survives_a_finding_unknown_in_the_fit_half(tiny_model, recwarn):
    """A finding without one known label in the fit half has nothing to read out: both read-outs
    score it as a constant (AUROC 0.5), with no NaN score (which the AUROC refuses), no warning."""
    images, labels, pids, findings = tiny_probe_data()
    probe = OnlineProbe(images, labels, pids, findings)
    labels = labels.copy()
    labels[probe.fit, 1] = np.nan
    got = OnlineProbe(images, labels, pids, findings)(tiny_model)
    assert [str(w.message) for w in recwarn if issubclass(w.category, RuntimeWarning)] == []
    assert got["probe/linear/noise"] == got["probe/knn/noise"] == 0.5
    assert_records_equal(got, reference_records(tiny_model, images, labels, pids, findings, 0))


# -- (d) in a pretraining run ----------------------------------------------------------------------
def probe_run_config(tmp_path, eval_every):
    # the synthetic data (64 px, the smallest it renders) feeds the probe's validation split
    return tiny_config(tmp_path, **{"data.image_size": 64, "data.length": 24,
                                    "train.max_steps": 5, "train.eval_every": eval_every,
                                    "train.probe_images": 48, "train.diag_every": 100})


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("probe-run")
    cfg = probe_run_config(tmp, 2)
    res = pretrain(cfg, augment=simple_augment, run_dir=tmp / "r")
    return cfg, res


def probe_steps(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if any(k.startswith("probe/") for k in r)]


def test_run_records_the_probe_at_step_0_and_every_eval_every_steps(probe_run):
    cfg, res = probe_run
    rows = probe_steps(res.run_dir)
    # step 0 (random init), every train.eval_every = 2 steps, and the last step (5)
    assert [r["step"] for r in rows] == [0, 2, 4, 5]
    probe = OnlineProbe.from_config(cfg)
    keys = {f"probe/{r}/{f}" for r in ("linear", "knn") for f in (*probe.findings, "mean")}
    for r in rows:
        assert keys <= set(r) and r["probe/seconds"] > 0
        assert 0.0 <= r["probe/linear/mean"] <= 1.0 and 0.0 <= r["probe/knn/mean"] <= 1.0
    assert rows[0]["epoch"] == 0 and "loss" not in rows[0]  # step 0 holds only the probe
    assert all("loss" in r for r in rows[1:])  # the others are the step records
    # the final record is the finished model's read-out
    assert_records_equal({k: v for k, v in rows[-1].items() if k in keys},
                         reference_records(res.model, probe.images, probe.labels,
                                           probe_patient_ids(cfg), probe.findings,
                                           cfg.data.seed, kind=cfg.eval.features), atol=1e-9)


def probe_patient_ids(cfg):
    from mlvicx_core.data.registry import dataset_from_config

    return dataset_from_config(cfg.data, split="val", length=cfg.train.probe_images).patient_ids


def test_step_0_is_the_network_at_random_init(probe_run):
    cfg, res = probe_run
    step0 = {k: v for k, v in probe_steps(res.run_dir)[0].items() if k.startswith("probe/")
             and k != "probe/seconds"}
    probe = OnlineProbe.from_config(cfg)
    pids = probe_patient_ids(cfg)
    seed_everything(cfg.train.seed)
    init = MLVICX(cfg.model)
    want = reference_records(init, probe.images, probe.labels, pids, probe.findings,
                             cfg.data.seed, kind=cfg.eval.features)
    assert_records_equal(step0, want, atol=1e-9)
    # the demo's "random init" baseline is that same network
    ref = reference_encoder("random", cfg.model, seed=cfg.train.seed)
    for k, v in init.state_dict().items():
        assert torch.equal(v, ref.state_dict()[k]), k


def test_no_probe_records_when_eval_every_is_0(tmp_path):
    cfg = probe_run_config(tmp_path, 0).set(["train.max_steps=2"])
    res = pretrain(cfg, augment=simple_augment, run_dir=tmp_path / "r")
    assert probe_steps(res.run_dir) == []
    assert [r["step"] for r in read_metrics(res.run_dir).to_dict("records")] == [1, 2]
    panel = probe_panel(res.run_dir)
    assert len(panel.lines) == 0 and "online probe off" in panel.texts[0].get_text()


def probe_panel(run_dir):
    """The online-probe axes of ``plot_training``'s figure (the figure is caught before closing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mlvicx_core.viz.training import plot_training

    caught = []
    real_close = plt.close

    def keep(fig=None):
        caught.append(fig)

    plt.close = keep
    try:
        out = plot_training(run_dir)
    finally:
        plt.close = real_close
    assert out.is_file() and out.stat().st_size > 10_000
    fig = caught[0]
    panel = next(ax for ax in fig.axes if ax.get_title() == "online probe: held-out mean AUROC")
    real_close(fig)
    return panel


def test_training_figure_draws_the_probe_with_the_random_init_line(probe_run):
    cfg, res = probe_run
    rows = probe_steps(res.run_dir)
    panel = probe_panel(res.run_dir)
    lines = {ln.get_label(): ln for ln in panel.lines}
    assert set(lines) == {"linear read-out", "knn read-out", "linear: random init (step 0)",
                          "knn: random init (step 0)"}
    for readout in ("linear", "knn"):
        curve = lines[f"{readout} read-out"]
        assert list(curve.get_xdata()) == [r["step"] for r in rows]
        np.testing.assert_allclose(curve.get_ydata(), [r[f"probe/{readout}/mean"] for r in rows])
        ref = lines[f"{readout}: random init (step 0)"]
        np.testing.assert_allclose(ref.get_ydata(), [rows[0][f"probe/{readout}/mean"]] * 2)
        assert list(ref.get_xdata()) == [0, 1]  # axhline: the whole width, in axes coordinates
        assert ref.get_linestyle() == "--" and ref.get_color() == curve.get_color()

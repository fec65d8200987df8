"""The online probe (``mlvicx_core.train.online_probe``): its ridge read-out with leave-one-out
strength against plain refits written here, its records against a recomputation, the probe inside a
pretraining run (metrics.jsonl and the training figure), and its agreement with the held-out probe
on trunks of different quality."""
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from train_helpers import TINY_MODEL, TinyCXR, simple_augment, tiny_config

from mlvicx_core.evaluation.baselines import reference_encoder
from mlvicx_core.evaluation.embeddings import trunk_features
from mlvicx_core.evaluation.probe import RIDGE_ALPHAS, fit_ridge_probe
from mlvicx_core.model import MLVICX
from mlvicx_core.train.metrics_log import read_metrics
from mlvicx_core.train.online_probe import KNN_K, OnlineProbe
from mlvicx_core.train.trainer import pretrain, seed_everything

# -- plain references ------------------------------------------------------------------------------
def plain_ridge(z, y, lam):
    """Ridge with an unpenalised intercept, written plainly: centre z and y, solve
    (Zc^T Zc + lam I) w = Zc^T yc; returns (w, intercept)."""
    zm, ym = z.mean(0), y.mean()
    zc = z - zm
    w = np.linalg.solve(zc.T @ zc + lam * np.eye(z.shape[1]), zc.T @ (y - ym))
    return w, ym - zm @ w


def brute_loo_auroc(z, y, lam):
    """Leave each image out, refit, predict it: the AUROC of those predictions."""
    preds = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        w, b = plain_ridge(z[keep], y[keep], lam)
        preds.append(z[i] @ w + b)
    return roc_auc_score(y, preds)


def reference_scores(x_fit, y_fit, x_score, alphas=RIDGE_ALPHAS):
    """The linear read-out recomputed: standardise with the fit set, per finding the alpha whose
    brute-force LOO AUROC is best (ties: the larger), refit on the known labels, score."""
    mean, std = x_fit.mean(0), x_fit.std(0)
    std[std <= 1e-8] = 1.0
    z, zs = (x_fit - mean) / std, (x_score - mean) / std
    out = np.zeros((len(x_score), y_fit.shape[1]))
    for k in range(y_fit.shape[1]):
        known = ~np.isnan(y_fit[:, k])
        zk, yk = z[known], y_fit[known, k]
        n = len(yk)
        loo = {a: brute_loo_auroc(zk, yk, a * n) for a in alphas}
        best = max(alphas, key=lambda a: (loo[a], a))
        w, b = plain_ridge(zk, yk, best * n)
        out[:, k] = zs @ w + b
    return out


# -- (a) the ridge read-out --------------------------------------------------------------------------
@pytest.mark.parametrize("n, d", [(30, 8), (24, 40)])
def test_ridge_probe_equals_brute_force_leave_one_out(n, d):
    rng = np.random.default_rng(n + d)
    x = rng.normal(1.0, 2.0, (n, d)) * rng.uniform(0.2, 4, d)  # unequal scales and offsets
    y = (rng.random((n, 2)) < 0.4).astype(float)
    x[:, 0] += 3 * y[:, 0]  # finding 0 is readable, finding 1 is noise
    x[:, 1] = 5.0  # a constant feature stays at 0 after centring
    y[[2, 5], 1] = np.nan  # unknown labels leave the fit of that finding only
    x_score = rng.normal(1.0, 2.0, (9, d))
    alphas = (0.01, 0.3, 10.0)
    probe = fit_ridge_probe(x, y, alphas=alphas)
    want = reference_scores(x, y, x_score, alphas)
    # the scores differ from the recomputation by the intercept shift only where labels are unknown
    np.testing.assert_allclose(probe.scores(x_score), want, rtol=0, atol=1e-8)
    for a in alphas:  # the recorded LOO AUROC per alpha is the mean over findings
        mean, std = x.mean(0), x.std(0)
        std[std <= 1e-8] = 1
        z = (x - mean) / std
        ks = [brute_loo_auroc(z[~np.isnan(y[:, k])], y[~np.isnan(y[:, k]), k], a * int(
            (~np.isnan(y[:, k])).sum())) for k in range(2)]
        assert probe.val_auroc[a] == pytest.approx(np.mean(ks), abs=1e-12)


def test_ridge_probe_reads_a_signal_among_noise_features_on_new_images():
    rng = np.random.default_rng(0)

    def draw(n, d=50):
        x = rng.normal(size=(n, d))
        y = np.stack([x[:, 0] + 0.3 * rng.normal(size=n) > 0, rng.random(n) < 0.5], 1)
        return x, y.astype(float)

    x, y = draw(200)
    probe = fit_ridge_probe(x, y)
    assert np.argmax(np.abs(probe.coef[0])) == 0  # finding 0 sits on feature 0
    xt, yt = draw(2000)
    s = probe.scores(xt)
    assert roc_auc_score(yt[:, 0], s[:, 0]) > 0.9  # x0 alone, the best possible, gives ~0.94
    assert abs(roc_auc_score(yt[:, 1], s[:, 1]) - 0.5) < 0.05  # a coin stays a coin
    with pytest.raises(ValueError, match=r"x \(200, 50\), y \(199, 2\)"):
        fit_ridge_probe(x, y[:-1])


def test_ridge_probe_single_class_is_constant_at_the_prevalence():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 5))
    y = np.stack([np.zeros(40), rng.random(40) < 0.5], 1).astype(float)
    probe = fit_ridge_probe(x, y)
    assert probe.untrainable == [0]
    s = probe.scores(rng.normal(size=(6, 5)))
    assert np.ptp(s[:, 0]) == 0 and np.isfinite(s).all()


# -- (b) OnlineProbe ---------------------------------------------------------------------------------
N_FIT, N_SCORE = 48, 32


def tiny_probe_data():
    """TinyCXR images: a fit and a score set, three findings: the blob's side (both classes), a
    seeded random label with some unknowns, and one that is never positive in the score set
    (single class: undefined AUROC, left out of the mean)."""
    ds = TinyCXR(N_FIT + N_SCORE)
    images = torch.stack([ds[i]["image"] for i in range(len(ds))])
    side = np.array([float(np.random.default_rng(i).random(2)[0] > 0.5) for i in range(len(ds))])
    noise = (np.random.default_rng(99).random(len(ds)) < 0.4).astype(float)
    noise[[1, 6, 17, 30, 60]] = np.nan
    never = np.zeros(len(ds))
    never[:3] = 1.0  # positives in the fit set only
    labels = np.stack([side, noise, never], axis=1)
    f, s = slice(0, N_FIT), slice(N_FIT, None)
    return images[f], labels[f], images[s], labels[s], ("side", "noise", "never")


def reference_records(model, fit_images, fit_labels, score_images, score_labels, findings,
                      kind="trunk"):
    """The probe's records recomputed: same features, the plain ridge and a brute-force kNN,
    sklearn's AUROC (the intervals are checked separately)."""
    xf = trunk_features(model, fit_images, kind).astype(np.float64)
    xs = trunk_features(model, score_images, kind).astype(np.float64)
    out = {}
    norm = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    sims = norm(xs) @ norm(xf).T
    k = min(KNN_K, len(xf))
    knn = np.zeros((len(xs), fit_labels.shape[1]))
    for i in range(len(xs)):
        nearest = np.argsort(-sims[i], kind="stable")[:k]
        for c in range(fit_labels.shape[1]):
            known = fit_labels[nearest, c][~np.isnan(fit_labels[nearest, c])]
            knn[i, c] = known.mean() if known.size else np.nanmean(fit_labels[:, c])
    for name, scores in (("linear", reference_scores(xf, fit_labels, xs)), ("knn", knn)):
        defined = []
        for c, f in enumerate(findings):
            y = score_labels[:, c]
            known = ~np.isnan(y)
            auc = (roc_auc_score(y[known], scores[known, c]) if len(set(y[known])) == 2
                   else float("nan"))
            out[f"probe/{name}/{f}"] = auc
            if not np.isnan(auc):
                defined.append(auc)
        out[f"probe/{name}/mean"] = float(np.mean(defined))
    return out


def assert_records_equal(got, want, atol=1e-9):
    for key, value in want.items():
        if np.isnan(value):
            assert np.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(value, abs=atol), key


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return MLVICX(TINY_MODEL)


@pytest.mark.parametrize("kind", ["trunk", "layer3+layer4", "global"])
def test_probe_records_equal_a_recomputation(tiny_model, kind):
    data = tiny_probe_data()
    got = OnlineProbe(*data, features=kind)(tiny_model)
    want = reference_records(tiny_model, *data, kind=kind)
    assert np.isnan(want["probe/linear/never"]) and np.isfinite(want["probe/linear/mean"])
    assert_records_equal(got, want)
    assert got["probe/knn/mean"] == pytest.approx(
        (got["probe/knn/side"] + got["probe/knn/noise"]) / 2, abs=1e-12)
    for r in ("linear", "knn"):
        assert got[f"probe/{r}/mean_lo"] <= got[f"probe/{r}/mean"] <= got[f"probe/{r}/mean_hi"]
        assert got[f"probe/{r}/mean_hi"] - got[f"probe/{r}/mean_lo"] > 0.01  # 32 score images


@pytest.mark.parametrize("kind", ["trunk", "global"])
def test_probe_restores_the_model_mode_and_changes_nothing(tiny_model, kind):
    probe = OnlineProbe(*tiny_probe_data(), features=kind)
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
    fi, fl, si, sl, findings = tiny_probe_data()
    with pytest.raises(ValueError, match=r"fit set: images \(48, 32, 32\).*expected"):
        OnlineProbe(fi[:, 0], fl, si, sl, findings)
    with pytest.raises(ValueError, match=r"score set: images \(32, 1, 32, 32\), labels \(31, 3\)"):
        OnlineProbe(fi, fl, si, sl[:-1], findings)
    with pytest.raises(ValueError, match=r"2 findings \['side', 'noise'\] for 3 fit"):
        OnlineProbe(fi, fl, si, sl, findings[:2])
    bad = fl.copy()
    bad[5, 0] = 2.0
    with pytest.raises(ValueError, match=r"fit set labels: expected 0, 1 or NaN \(unknown\), got 2"):
        OnlineProbe(fi, bad, si, sl, findings)


# -- (d) in a pretraining run ----------------------------------------------------------------------
def probe_run_config(tmp_path, eval_every):
    # the synthetic data (64 px, the smallest it renders) feeds the probe's train and val splits
    return tiny_config(tmp_path, **{"data.view_size": 64, "data.length": 24,
                                    "train.max_steps": 5, "train.eval_every": eval_every,
                                    "train.probe_images": 40, "train.probe_val_images": 32,
                                    "train.diag_every": 100})


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("probe-run")
    cfg = probe_run_config(tmp, 2)
    res = pretrain(cfg, augment=simple_augment, run_dir=tmp / "r")
    return cfg, res


def probe_steps(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if any(k.startswith("probe/") for k in r)]


def probe_sets(cfg):
    """The fit (train split) and score (val split) images and labels the run's probe reads."""
    from mlvicx_core.data.registry import dataset_from_config

    out = []
    for split, n in (("train", cfg.train.probe_images), ("val", cfg.train.probe_val_images)):
        ds = dataset_from_config(cfg.data, split=split, length=n)
        out += [torch.stack([ds[i]["image"] for i in range(len(ds))]),
                np.asarray(ds.labels, dtype=np.float64)]
    return (*out, ds.findings)


def test_run_records_the_probe_at_step_0_and_every_eval_every_steps(probe_run):
    cfg, res = probe_run
    rows = probe_steps(res.run_dir)
    # step 0 (random init), every train.eval_every = 2 steps, and the last step (5)
    assert [r["step"] for r in rows] == [0, 2, 4, 5]
    *sets, findings = probe_sets(cfg)
    keys = {f"probe/{r}/{f}" for r in ("linear", "knn") for f in (*findings, "mean")}
    for r in rows:
        assert keys | {"probe/linear/mean_lo", "probe/linear/mean_hi"} <= set(r)
        assert r["probe/seconds"] > 0
        assert r["probe/linear/mean_lo"] <= r["probe/linear/mean"] <= r["probe/linear/mean_hi"]
    assert rows[0]["epoch"] == 0 and "loss" not in rows[0]  # step 0 holds only the probe
    assert all("loss" in r for r in rows[1:])  # the others are the step records
    # the final record is the finished model's read-out
    assert_records_equal({k: v for k, v in rows[-1].items() if k in keys},
                         reference_records(res.model, *sets, findings, kind=cfg.eval.features))


def test_step_0_is_the_network_at_random_init(probe_run):
    cfg, res = probe_run
    step0 = {k: v for k, v in probe_steps(res.run_dir)[0].items() if k.startswith("probe/")
             and k != "probe/seconds"}
    seed_everything(cfg.train.seed)
    init = MLVICX(cfg.model)
    *sets, findings = probe_sets(cfg)
    want = reference_records(init, *sets, findings, kind=cfg.eval.features)
    assert_records_equal(step0, want)
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


def probe_panel(run_dir, held_out=None):
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
        out = plot_training(run_dir, held_out=held_out)
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


def test_training_figure_shows_the_intervals_and_the_held_out_result(probe_run):
    cfg, res = probe_run
    rows = probe_steps(res.run_dir)
    held = {"random init": (0.70, 0.68, 0.72), "pretrained": (0.75, 0.73, 0.77)}
    panel = probe_panel(res.run_dir, held_out=held)
    bands = {c.get_label(): c for c in panel.collections
             if c.get_label().endswith("95 % interval")}
    assert set(bands) == {"linear: 95 % interval", "knn: 95 % interval"}
    for readout in ("linear", "knn"):
        ys = bands[f"{readout}: 95 % interval"].get_paths()[0].vertices[:, 1]
        assert ys.min() == pytest.approx(min(r[f"probe/{readout}/mean_lo"] for r in rows))
        assert ys.max() == pytest.approx(max(r[f"probe/{readout}/mean_hi"] for r in rows))
    bars = {c.get_label(): c for c in panel.containers}
    assert set(bars) == {"held-out probe, random init", "held-out probe, pretrained"}
    for name, (v, lo, hi) in held.items():
        data_line, _, (whisker, *_) = bars[f"held-out probe, {name}"].lines
        x, y = data_line.get_data()
        assert y[0] == v and x[0] > rows[-1]["step"]  # beside the last online read-out
        (x0, y0), (x1, y1) = whisker.get_segments()[0]
        assert (y0, y1) == pytest.approx((lo, hi))


# -- (e) it tells the truth ----------------------------------------------------------------------
@pytest.mark.slow
def test_online_probe_agrees_with_the_held_out_probe_on_trunks_of_different_quality():
    """Three frozen trunks of known, different quality: a width-16 ResNet-18 at random init, and
    the same network after 100 and 200 supervised steps (BCE on the five findings). On the same
    images (fit on the held-out probe's 1600 training radiographs, scored on its 400 test ones) the
    online probe's closed-form read-out orders them as the held-out logistic probe does and falls
    inside the held-out probe's 95 % interval for each. (In a run the online probe scores
    validation radiographs instead, never the test split; the demo prints how the two compare.)"""
    import copy

    from mlvicx_core.config import load_config
    from mlvicx_core.data.registry import evaluation_splits
    from mlvicx_core.evaluation.pipeline import evaluate, mean_auroc

    cfg = load_config("teaching", ["model.width=16", "model.projector_last_bn=true"])
    splits = evaluation_splits(cfg.data, cfg.eval.split_sizes, in_memory=True)
    train = splits["train"]
    x = torch.stack([train[i]["image"] for i in range(len(train))])
    y = torch.as_tensor(np.asarray(train.labels), dtype=torch.float32)
    trunks = {"random init": reference_encoder("random", cfg.model, seed=0)}
    model = reference_encoder("random", cfg.model, seed=0).train()
    torch.manual_seed(0)
    head = torch.nn.Linear(model.feature_dim, y.shape[1])
    opt = torch.optim.AdamW([*model.backbone.parameters(), *head.parameters()], lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for step in range(1, 201):
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            head(model.encode(x[idx])), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step in (100, 200):
            trunks[f"supervised {step} steps"] = copy.deepcopy(model).eval()
    held = evaluate(trunks, splits, cfg.eval.replace(tasks=("probe",), fractions=(1.0,)),
                    dataset="synthetic")
    probe = OnlineProbe.from_datasets(splits["train"], splits["test"])
    online = {name: probe(m)["probe/linear/mean"] for name, m in trunks.items()}
    ref = {name: mean_auroc(held, name) for name in trunks}
    # the held-out probe separates the three beyond its intervals' overlap...
    values = [ref[n][0] for n in trunks]
    assert values == sorted(values) and values[-1] - values[0] > 0.07
    # ...the online probe orders them the same and lands inside each interval
    assert sorted(trunks, key=online.get) == sorted(trunks, key=lambda n: ref[n][0])
    for name, (v, lo, hi) in ref.items():
        assert lo <= online[name] <= hi, (name, online[name], (v, lo, hi))

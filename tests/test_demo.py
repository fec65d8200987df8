"""``mlvicx demo`` (``mlvicx_core.experiments.demo``), shrunk to seconds: the files it leaves, that
every number it prints is the one its results file and metrics hold (the paired difference
recomputed here), the factor table, and that a second call reuses the finished run."""
import contextlib
import io
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
import train_helpers  # noqa: F401  (one math thread per test worker)
from sklearn.metrics import roc_auc_score

from mlvicx_core.cli import main
from mlvicx_core.evaluation import metrics

TEST_IMAGES = 48
SETS = ["data.length=32", "train.batch_size=8", "train.max_steps=2", "train.tensorboard=false",
        "train.progress=false", "model.projector=[32,32]", "model.ml_projector=[32,32]",
        "model.fusion_size=8", "model.fusion_channels=16", "model.pool_size=2",
        "model.width=16", "train.diag_every=1", "train.eval_every=1", "train.probe_images=32",
        "train.probe_val_images=32", f"eval.split_sizes=[64,32,{TEST_IMAGES}]", "eval.n_boot=50"]
CI = r"(\d\.\d{3}) \[(\d\.\d{3}), (\d\.\d{3})\]"
DIFF = r"([+-]\d\.\d{3}) \[([+-]\d\.\d{3}), ([+-]\d\.\d{3})\]"
READOUTS = {"linear probe, pooled layer4": ("probe", "trunk"),
            "linear probe, layer3+layer4": ("probe", "layer3+layer4"),
            "kNN, pooled layer4": ("knn", "trunk")}


def run_demo(out):
    argv = ["demo", "--out", str(out)]
    for s in SETS:
        argv += ["--set", s]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(argv) == 0
    return buf.getvalue()


@pytest.fixture(scope="module")
def paired():
    """The inputs (labels, pretrained scores, random-init scores, keywords) of every paired
    difference the demo computes, in the order of its read-outs (filled by ``demo``)."""
    return []


@pytest.fixture(scope="module")
def demo(tmp_path_factory, paired):
    out = tmp_path_factory.mktemp("demo")
    real = metrics.paired_auroc_difference

    def spy(labels, a, b, **kwargs):  # records what the demo passes, returns what the kit returns
        paired.append((np.array(labels), np.array(a), np.array(b), kwargs))
        return real(labels, a, b, **kwargs)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(metrics, "paired_auroc_difference", spy)
        text = run_demo(out)
    (run,) = sorted(out.glob("teaching-*"))  # <out>/<preset>-<hash>, the notebooks' folder too
    return run, text, out


def sk_auroc(y, s):
    """sklearn's AUROC of one finding over its known labels; NaN with a single class."""
    known = ~np.isnan(y)
    y, s = y[known], s[known]
    return roc_auc_score(y, s) if len(np.unique(y)) == 2 else np.nan


def paired_difference_by_hand(labels, a, b, n_boot, seed):
    """The paired percentile bootstrap written plainly with sklearn: the point is the mean over the
    findings with both classes of AUROC(a) - AUROC(b); each of ``n_boot`` resamples draws the same
    N image indices for both encoders (``default_rng(seed).integers(0, N, N)``, the kit's
    stream) and averages the differences of those findings that are defined in it; the interval
    is the 2.5 and 97.5 % quantiles of those means."""
    defined = [j for j in range(labels.shape[1]) if not np.isnan(sk_auroc(labels[:, j], a[:, j]))]

    def mean_diff(rows):
        d = [sk_auroc(labels[rows, j], a[rows, j]) - sk_auroc(labels[rows, j], b[rows, j])
             for j in defined]
        return np.nanmean(d) if not np.isnan(d).all() else np.nan
    rng = np.random.default_rng(seed)
    n = len(labels)
    boot = [mean_diff(rng.integers(0, n, size=n)) for _ in range(n_boot)]
    lo, hi = np.quantile([m for m in boot if not np.isnan(m)], [0.025, 0.975])
    return mean_diff(np.arange(n)), lo, hi


def printed(text):
    """{read-out: (random (v, lo, hi), pretrained (v, lo, hi), difference (d, lo, hi))}."""
    got = {}
    for label in READOUTS:
        m = re.search(rf"^  {re.escape(label)}\s+{CI}\s+{CI}\s+{DIFF}$", text, re.M)
        assert m, f"no {label!r} line in:\n{text}"
        v = [float(x) for x in m.groups()]
        got[label] = (tuple(v[0:3]), tuple(v[3:6]), tuple(v[6:9]))
    return got


def heldout(run):
    return pd.read_csv(run / "heldout" / "results.csv")


def test_demo_writes_its_files(demo):
    run, text, _ = demo
    for name in ("training.png", "probe.png"):
        assert (run / name).stat().st_size > 10_000, name
    for name in ("metrics.jsonl", "config.yaml", "done.json", "trunk.pt", "heldout/results.csv",
                 "heldout/results.md"):
        assert (run / name).is_file(), name
    assert json.loads((run / "done.json").read_text())["step"] == 2
    assert f"Results are in {run}/:" in text
    listed = re.findall(r"^  (?:figure|probe|results|metrics|checkpoint|trunk)\s+(\S+)", text,
                        re.M)
    assert len(listed) == 6 and all(p.startswith(str(run)) for p in listed)
    for p in listed:
        assert (run.parent / p).exists(), p


def test_printed_numbers_equal_the_results_file(demo, paired):
    """The printed difference and its interval against :func:`paired_difference_by_hand` on the
    test scores the demo compared, which are those of the rows (their mean AUROCs, recomputed
    with sklearn, are the rows' values)."""
    run, text, _ = demo
    df = heldout(run)
    mean = df[(df["finding"] == "mean") & (df["metric"] == "auroc")]
    assert len(paired) == len(READOUTS)
    for (label, (task, features)), (labels, a, b, kwargs) in zip(READOUTS.items(), paired):
        rows = mean[(mean["task"] == task) & mean["note"].str.startswith(features + ";")]
        by_enc = rows.set_index("encoder")
        rnd, pre, diff = printed(text)[label]
        for enc, want in (("random init", rnd), ("pretrained", pre)):
            got = tuple(round(float(by_enc.loc[enc, c]), 3) for c in ("value", "ci_low",
                                                                        "ci_high"))
            assert got == want, (label, enc)
            assert (by_enc.loc[enc, "n"] == TEST_IMAGES)
        assert labels.shape == a.shape == b.shape == (TEST_IMAGES, 5)
        for enc, scores in (("pretrained", a), ("random init", b)):
            sk = np.nanmean([sk_auroc(labels[:, j], scores[:, j]) for j in range(5)])
            assert by_enc.loc[enc, "value"] == pytest.approx(sk, abs=1e-12), (label, enc)
        # the point difference is the difference of the two means (same findings, same images),
        # printed to 3 decimals
        assert diff[0] == pytest.approx(by_enc.loc["pretrained", "value"]
                                        - by_enc.loc["random init", "value"], abs=5e-4 + 1e-9)
        assert diff[1] <= diff[0] <= diff[2]
        assert kwargs == {"n_boot": 50, "seed": 0}
        ref = paired_difference_by_hand(labels, a, b, **kwargs)
        assert diff == pytest.approx(ref, abs=5e-4 + 1e-9), label
    assert (f"{TEST_IMAGES} test radiographs of patients never pretrained on, mean AUROC over 5 "
            "findings") in text
    # width 16: the absolute reference line names ResNet-18 at width 64
    ref = re.search(rf"ResNet-18 at width 64, random init, linear probe, pooled layer4: {CI}",
                    text)
    w64 = mean[(mean["encoder"] == "ResNet-18 w64, random init") & (mean["task"] == "probe")
               & mean["note"].str.startswith("trunk;")].iloc[0]
    assert tuple(float(x) for x in ref.groups()) == tuple(
        round(float(w64[c]), 3) for c in ("value", "ci_low", "ci_high"))


def test_verdict_follows_the_interval_of_the_difference(demo):
    _, text, _ = demo
    _, _, (d, lo, hi) = printed(text)["linear probe, pooled layer4"]
    verdict = re.search(r"^Verdict \(linear probe, pooled layer4\): the pretrained trunk is "
                        r"(above|below|not distinguishable from) random init", text, re.M)
    want = "above" if lo > 0 else "below" if hi < 0 else "not distinguishable from"
    assert verdict and verdict.group(1) == want


def test_online_probe_line_is_the_last_record_and_says_where_it_falls(demo):
    run, text, _ = demo
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    probed = [r for r in rows if "probe/linear/mean" in r]
    assert [r["step"] for r in probed] == [0, 1, 2]  # step 0 (random init) and every step
    last = probed[-1]
    m = re.search(rf"^Online probe at step 2: {CI} \((inside|outside) the held-out interval "
                  rf"\[(\d\.\d{{3}}), (\d\.\d{{3}})\]\)", text, re.M)
    assert m, text
    assert tuple(float(x) for x in m.groups()[:3]) == tuple(round(last[f"probe/linear/{k}"], 3)
                                                           for k in ("mean", "mean_lo", "mean_hi"))
    _, (v, lo, hi), _ = printed(text)["linear probe, pooled layer4"]
    assert (float(m.group(5)), float(m.group(6))) == (lo, hi)
    inside = lo <= last["probe/linear/mean"] <= hi
    assert m.group(4) == ("inside" if inside else "outside")
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert "trained 2 steps in " in text


def test_factor_table_equals_the_factor_rows(demo):
    run, text, _ = demo
    df = heldout(run)
    f = df[df["task"] == "factors"]
    found = re.findall(r"^  (\w+)\s+(\d\.\d{3})\s+(\d\.\d{3})\s+[+-]\d\.\d{3}$", text, re.M)
    table = {name: (float(rnd), float(pre)) for name, rnd, pre in found}
    from mlvicx_core.data.phantom import FACTORS

    assert set(table) <= set(FACTORS) and len(table) >= 10
    for name, (rnd, pre) in table.items():
        for enc, v in (("random init", rnd), ("pretrained", pre)):
            row = f[(f["finding"] == name) & (f["encoder"] == enc)]
            assert round(float(row["value"].iloc[0]), 3) == v, (name, enc)
    # sorted by the change, most lost first
    changes = [pre - rnd for rnd, pre in table.values()]
    assert changes == sorted(changes)


def test_second_call_reuses_the_finished_run(demo):
    run, text, out = demo
    before = {p: (run / p).read_bytes() for p in ("metrics.jsonl", "done.json")}
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    weights = torch.load(run / "trunk.pt", weights_only=True)
    again = run_demo(out)
    assert "\nreused the finished run\n" in again and not re.search(r"^trained ", again, re.M)
    assert "starting a new run" not in again and "resuming" not in again
    assert printed(again) == printed(text)  # the same weights, the same held-out numbers
    for p, data in before.items():
        assert (run / p).read_bytes() == data, p
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ckpts
    for k, v in torch.load(run / "trunk.pt", weights_only=True).items():
        assert torch.equal(v, weights[k]), k

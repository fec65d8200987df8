"""``mlvicx demo`` (``mlvicx_core.cli: cmd_demo``), shrunk to seconds: the files it leaves and that
what it prints is what they hold; a second call reuses the finished run."""
import contextlib
import io
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
import train_helpers  # noqa: F401  (one math thread per test worker)

from mlvicx_core.cli import main

TEST_IMAGES = 48
SETS = ["data.length=32", "train.batch_size=8", "train.max_steps=2", "train.tensorboard=false",
        "train.progress=false", "model.projector=[32,32]", "model.ml_projector=[32,32]",
        "model.fusion_size=8", "model.fusion_channels=16", "model.pool_size=2",
        "train.diag_every=1", "train.eval_every=1", "train.probe_images=32",
        f"eval.split_sizes=[64,32,{TEST_IMAGES}]", "eval.n_boot=50"]
LINE = r"  {name}\s+(\d\.\d{{3}}) \[(\d\.\d{{3}}), (\d\.\d{{3}})\]"


def run_demo(out):
    argv = ["demo", "--out", str(out)]
    for s in SETS:
        argv += ["--set", s]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(argv) == 0
    return buf.getvalue()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out / "teaching", run_demo(out), out


def printed(text):
    """{encoder: (value, low, high)} of the before/after lines, and the printed difference."""
    got = {}
    for name in ("random init", "pretrained"):
        m = re.search(LINE.format(name=name), text)
        assert m, f"no {name!r} line in:\n{text}"
        got[name] = tuple(float(v) for v in m.groups())
    diff = re.search(r"\(([+-]\d\.\d{3}) over random init\)", text)
    assert diff, text
    return got, float(diff.group(1))


def test_demo_writes_its_files(demo):
    run, text, _ = demo
    for name in ("training.png", "probe.png"):
        assert (run / name).stat().st_size > 10_000, name
    for name in ("metrics.jsonl", "config.yaml", "done.json", "trunk.pt", "probe/results.csv",
                 "probe/results.md"):
        assert (run / name).is_file(), name
    assert json.loads((run / "done.json").read_text())["step"] == 2
    assert f"Results are in {run}/:" in text
    # every path of the closing list exists
    listed = re.findall(r"^  (?:figure|probe|metrics|checkpoint|trunk)\s+(\S+)", text, re.M)
    assert len(listed) == 5 and all(p.startswith(str(run)) for p in listed)
    for p in listed:
        assert (run.parent / p).exists(), p
    assert re.search(r"and (\S+results\.csv)", text).group(1) == str(run / "probe" / "results.csv")


def test_results_csv_holds_both_encoders_with_intervals(demo):
    run, _, _ = demo
    df = pd.read_csv(run / "probe" / "results.csv")
    assert set(df["task"]) == {"probe"} and set(df["metric"]) == {"auroc"}
    assert list(dict.fromkeys(df["encoder"])) == ["random init", "pretrained"]
    for enc, rows in df.groupby("encoder"):
        rows = rows.set_index("finding")
        assert "mean" in rows.index and len(rows) == 6, enc  # five synthetic findings + mean
        assert (rows["n"] == TEST_IMAGES).all() and (rows["fraction"] == 1.0).all()
        v, lo, hi = rows["value"], rows["ci_low"], rows["ci_high"]
        assert ((0 <= lo) & (lo <= v) & (v <= hi) & (hi <= 1)).all(), enc
        per_finding = rows.drop("mean")["value"]
        assert rows.loc["mean", "value"] == pytest.approx(per_finding.mean(), abs=1e-12)


def test_printed_before_after_equals_results_csv(demo):
    run, text, _ = demo
    df = pd.read_csv(run / "probe" / "results.csv")
    mean = df[df["finding"] == "mean"].set_index("encoder")
    got, diff = printed(text)
    for enc, (v, lo, hi) in got.items():
        assert (v, lo, hi) == tuple(round(float(mean.loc[enc, c]), 3)
                                    for c in ("value", "ci_low", "ci_high")), enc
    assert diff == round(mean.loc["pretrained", "value"] - mean.loc["random init", "value"], 3)
    assert f"{TEST_IMAGES} test radiographs of unseen patients, mean AUROC over 5 findings" in text


def test_metrics_hold_the_online_probe_and_the_steps(demo):
    run, text, _ = demo
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    probed = [r["step"] for r in rows if "probe/linear/mean" in r]
    assert probed == [0, 1, 2]  # train.eval_every=1: step 0 (random init) and every step
    for r in rows:
        if "probe/linear/mean" in r:
            assert 0 <= r["probe/linear/mean"] <= 1 and 0 <= r["probe/knn/mean"] <= 1
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert "trained 2 steps in " in text and f"final loss {losses[-1]:.2f}" in text


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

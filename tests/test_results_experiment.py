"""The results experiment's smoke version, end to end, and the report generator's arithmetic.

The smoke run (2 pretraining steps of 8 images per method, one seed, 16 images per split) goes
through the same code as the full experiment; the checks recompute the report's numbers from the
CSV with plain pandas/numpy here, so a report that drifts from its data fails. The real datasets
(NIH 64 px, PneumoniaMNIST) join when MLVICX_DATA_DIR (or ../shared/data) holds them; otherwise the
report names them as skipped.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlvicx_core.cli import main
from mlvicx_core.config import load_config
from mlvicx_core.experiments.results import ENCODERS, schedule
from mlvicx_core.experiments.results_report import compare, fmt, gain_verdict, seed_interval

METHODS = ENCODERS


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    out, report = root / "out", root / "report"
    assert main(["results", "--smoke", "--out", str(out), "--report", str(report)]) == 0
    runs = pd.read_csv(report / "results" / "runs.csv")
    done = [(Path(d) / "done.json").is_file() for d in runs[runs.encoder != "random"].run_dir]
    shutil.rmtree(out / "runs")  # checkpoints: ~100 MB per run, not needed by the checks
    return {"out": out, "report": report, "md": (report / "RESULTS.md").read_text(),
            "csv": pd.read_csv(report / "results" / "results.csv"), "runs": runs, "done": done}


def md_tables(md: str) -> list[list[list[str]]]:
    """Every Markdown table as a list of rows (header first, separator dropped)."""
    tables, cur = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= {"-"} for c in cells):
                cur.append(cells)
        elif cur:
            tables.append(cur)
            cur = []
    return tables


def table_with(md: str, header_start: list[str]) -> list[list[str]]:
    found = [t for t in md_tables(md) if t[0][:len(header_start)] == header_start]
    assert found, f"no table with header {header_start}"
    return found[0]


def reference_cell(values: np.ndarray) -> str:
    """A second implementation of the report's ``mean ± std`` cell."""
    v = [float(x) for x in values if np.isfinite(x)]
    if not v:
        return "–"
    m = sum(v) / len(v)
    if len(v) == 1:
        return f"{m:.3f}"
    sd = (sum((x - m) ** 2 for x in v) / (len(v) - 1)) ** 0.5
    return f"{m:.3f} ± {sd:.3f}"


def test_smoke_writes_report_figures_and_csv(smoke):
    rep = smoke["report"]
    for name in ("results_auroc.png", "results_gradcam.png"):
        data = (rep / "figures" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    assert "![AUROC vs label fraction](figures/results_auroc.png)" in smoke["md"]
    assert "![Grad-CAM heatmaps](figures/results_gradcam.png)" in smoke["md"]
    assert "mlvicx results --smoke" in smoke["md"]
    df = smoke["csv"]
    assert set(df.encoder) == set(METHODS)
    assert "synthetic" in set(df.dataset)
    # AUROCs and CIs are proper: within [0, 1] and the point inside its interval
    a = df[(df.metric == "auroc") & np.isfinite(df.value)]
    assert ((a.value >= 0) & (a.value <= 1)).all()
    b = a[np.isfinite(a.ci_low)]
    assert ((b.ci_low <= b.value + 1e-12) & (b.value <= b.ci_high + 1e-12)).all()


def test_every_pretraining_run_has_the_same_budget(smoke):
    runs = smoke["runs"]
    trained = runs[runs.encoder != "random"]
    assert set(trained.steps) == {load_config("results-smoke").train.max_steps}
    for ds, g in trained.groupby("dataset"):
        assert g.images.nunique() == 1, ds  # same images per run for every method
        assert len(g) == len(METHODS) - 1
    assert (runs[runs.encoder == "random"].steps == 0).all()
    assert smoke["done"] and all(smoke["done"])  # every run finished through the engine


def test_main_table_equals_the_csv(smoke):
    df, methods = smoke["csv"], list(METHODS)
    table = table_with(smoke["md"], ["dataset", "label fraction"])
    assert table[0][2:] == methods
    mean = df[(df.task == "probe") & (df.finding == "mean") & (df.metric == "auroc")]
    expected_cells = {(d, f) for d, f, v in zip(mean.dataset, mean.fraction, mean.value)
                      if np.isfinite(v)}
    seen = set()
    for row in table[1:]:
        ds, fr = row[0], float(row[1])
        seen.add((ds, fr))
        for m, cell in zip(methods, row[2:]):
            vals = mean[(mean.dataset == ds) & (mean.fraction == fr) & (mean.encoder == m)].value
            assert cell == reference_cell(vals.to_numpy()), (ds, fr, m)
    assert seen == expected_cells


def test_per_seed_ci_table_equals_the_csv(smoke):
    df = smoke["csv"]
    table = table_with(smoke["md"], ["dataset", "fraction", "seed"])
    methods = table[0][3:]
    for row in table[1:]:
        ds, fr, seed = row[0], float(row[1]), int(row[2])
        for m, cell in zip(methods, row[3:]):
            r = df[(df.dataset == ds) & (df.fraction == fr) & (df.seed == seed) &
                   (df.encoder == m) & (df.finding == "mean") & (df.task == "probe")].iloc[0]
            assert cell == f"{r.value:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]"


def test_paired_gains_equal_the_csv_and_a_plain_recomputation(smoke):
    """Each paired gain's point estimate is the encoder's mean test AUROC minus random init's of
    the same seed in results.csv, and recomputes from the saved test scores with sklearn."""
    from sklearn.metrics import roc_auc_score

    df, out = smoke["csv"], smoke["out"]
    gains = pd.read_csv(smoke["report"] / "results" / "paired_gains.csv")
    mean = df[(df.task == "probe") & (df.finding == "mean") & (df.metric == "auroc")]
    pretrained = [m for m in METHODS if m != "random"]
    assert set(gains.encoder) == set(pretrained)
    for r in gains.itertuples():
        pick = mean[(mean.dataset == r.dataset) & (mean.fraction == r.fraction) &
                    (mean.seed == r.seed)]
        expected = (pick[pick.encoder == r.encoder].value.iloc[0]
                    - pick[pick.encoder == "random"].value.iloc[0])
        assert r.diff == pytest.approx(expected, abs=1e-12), r
        assert r.ci_low <= r.ci_high
    r = gains.iloc[-1]  # one row by hand from the raw scores
    key = f"probe@{r.fraction:g}"
    with np.load(out / "scores" / f"{r.dataset}-{r.encoder}-seed{r.seed}.npz") as z, \
            np.load(out / "scores" / f"{r.dataset}-random-seed{r.seed}.npz") as zr:
        y, a, b = z[f"{key}/labels"], z[f"{key}/scores"], zr[f"{key}/scores"]
    diffs = [roc_auc_score(y[:, j], a[:, j]) - roc_auc_score(y[:, j], b[:, j])
             for j in range(y.shape[1]) if 0 < y[:, j].sum() < len(y)]
    assert r["diff"] == pytest.approx(np.mean(diffs), abs=1e-12)
    table = table_with(smoke["md"], ["dataset", "label fraction", "encoder"])
    assert len(table) - 1 == len(gains)
    for row in table[1:]:
        g = gains[(gains.dataset == row[0]) & (gains.fraction == float(row[1])) &
                  (gains.encoder == row[2])]
        assert row[3] == f"{g['diff'].iloc[0]:+.3f} [{g.ci_low.iloc[0]:+.3f}, {g.ci_high.iloc[0]:+.3f}]"
        assert row[-3] == reference_cell(g["diff"].to_numpy())
        assert row[-1] == "one seed: no seed interval"  # the smoke run has one seed


def test_seed_interval_and_verdict_by_hand():
    # diffs 0.01, 0.03, 0.05: mean 0.03, sd 0.02, t(0.975, 2) = 4.302653 -> half width 0.049683;
    # 2 SE = 2 * 0.02 / sqrt(3) = 0.023094 < 0.03: above by 2 SE, not by the t-interval
    m, lo, hi = seed_interval([0.01, 0.03, 0.05])
    assert (m, lo, hi) == pytest.approx((0.03, -0.019683, 0.079683), abs=1e-6)
    assert gain_verdict([0.01, 0.03, 0.05]) == "above by 2 SE; t-interval includes 0"
    # 0.05, 0.06, 0.07: sd 0.01, half width 0.024841 -> [0.035159, 0.084841], above zero
    m, lo, hi = seed_interval([0.05, 0.06, 0.07])
    assert lo == pytest.approx(0.035159, abs=1e-6)
    assert gain_verdict([0.05, 0.06, 0.07]) == "above random init (t-interval above 0)"
    assert gain_verdict([-0.07, -0.06, -0.05]) == "below random init (t-interval below 0)"
    assert gain_verdict([-0.05, -0.03, -0.01]) == "below by 2 SE; t-interval includes 0"
    # -0.01, 0.01, 0.03: mean 0.01 < 2 SE = 0.023094: noise by both rules
    assert gain_verdict([-0.01, 0.01, 0.03]) == "within seed noise"
    assert np.isnan(seed_interval([0.02])[1])
    assert gain_verdict([0.02]) == "one seed: no seed interval"


def test_closing_statement_equals_the_csv(smoke):
    df = smoke["csv"]
    mean = df[(df.task == "probe") & (df.finding == "mean") & (df.metric == "auroc") &
              np.isfinite(df.value)]
    piv = mean.groupby(["dataset", "fraction", "encoder"]).value.mean().unstack()
    d = (piv["mlvicx"] - piv["vicreg"]).dropna()
    text = smoke["md"]
    assert f"MLVICX was ahead at all in {(d > 0).sum()} of {len(d)};" in text
    assert (f"mlvicx had the higher mean AUROC in {(d > 0).sum()} of {len(d)} dataset/fraction "
            f"cells; mean difference {d.mean():+.3f} (range {d.min():+.3f} to {d.max():+.3f})"
            in text)
    g = df[(df.task == "gradcam") & (df.dataset == "synthetic")]
    chance = g[g.metric == "chance_pointing"].groupby("finding").value.mean().mean()
    pg = g[(g.metric == "pointing_game") & (g.encoder == "mlvicx")].groupby("finding").value.mean()
    assert f"uniform-map chance {chance:.3f}" in text
    assert re.search(rf"mlvicx {pg.mean():.3f}[,.]", text)


def test_schedule_spans_exactly_the_budget():
    # hand-derived: 24 steps of 64 over 700 images -> 3 epochs of 8 steps on 512 images
    assert schedule(24, 64, 700) == {"epochs": 3, "steps_per_epoch": 8, "images": 512, "total": 24}
    assert schedule(20, 64, 1600) == {"epochs": 1, "steps_per_epoch": 20, "images": 1280,
                                      "total": 20}
    assert schedule(2, 8, 16) == {"epochs": 1, "steps_per_epoch": 2, "images": 16, "total": 2}
    with pytest.raises(ValueError, match="fewer than one batch"):
        schedule(10, 64, 40)


def test_cell_format_and_comparison_arithmetic():
    assert fmt([0.5, 0.7]) == "0.600 ± 0.141"  # std (ddof 1) = 0.2 / sqrt(2)
    assert fmt([0.25, float("nan")]) == "0.250"
    assert fmt([]) == "–"
    rows = []
    # two cells; A beats B by 0.10 in cell 1 (tight seeds) and loses by 0.01 in cell 2
    for seed, (a1, b1, a2, b2) in enumerate([(0.80, 0.70, 0.60, 0.61), (0.82, 0.72, 0.62, 0.63)]):
        for m, v1, v2 in (("mlvicx", a1, a2), ("vicreg", b1, b2)):
            rows += [{"dataset": "d", "fraction": 1.0, "encoder": m, "seed": seed, "task": "probe",
                      "finding": "mean", "metric": "auroc", "value": v1},
                     {"dataset": "d", "fraction": 0.1, "encoder": m, "seed": seed, "task": "probe",
                      "finding": "mean", "metric": "auroc", "value": v2}]
    c = compare(pd.DataFrame(rows), "mlvicx", "vicreg")
    assert (c["n"], c["wins"], c["claim"]) == (2, 1, 1)
    assert c["mean"] == pytest.approx((0.10 - 0.01) / 2)
    assert (c["min"], c["max"]) == (pytest.approx(-0.01), pytest.approx(0.10))
    # cell 1: se = sqrt(2 * 0.01414^2 / 2) = 0.01414, |0.10| > 2 se -> beyond noise in A's favour;
    # cell 2: same se, |0.01| < 2 se -> not beyond noise
    assert (c["beyond_pos"], c["beyond_neg"]) == (1, 0)


def test_unknown_dataset_is_refused_by_the_command_line(capsys):
    assert main(["results", "--datasets", "chexpert"]) == 2
    err = capsys.readouterr().err
    assert "mlvicx results: error: --datasets chexpert: expected some of synthetic nih " \
           "pneumoniamnist" in err

"""The notebooks executed with papermill at small, non-default parameters.

Each test executes the notebook's source (``notebooks/NN_name.py`` converted as ``build.py`` does),
so these tests check the code a rebuild would run, whether or not the committed ``.ipynb`` files
were rebuilt yet; nbval and ``test_notebook_files.py`` check the committed files.

nbval (``--nbval-lax``) runs the committed notebooks at their defaults; these tests run them with
other parameters (tiny pretraining, few images, a temporary output folder) and check what they wrote
against the parameters. All executions share one output folder, so the pretraining runs are trained
once and reused by the later notebooks (as in a classroom). Every test here starts kernels
(``kernel`` marker: ``make test`` runs them in its serial step); kernels run over IPC
(:mod:`mlvicx_core.experiments.notebook_run`). No executed notebook may write to stderr. One test
re-runs notebook 03 in a fresh folder under another thread setting and requires the same numbers;
one runs notebook 03 on the real NIH images (skipped when they are absent).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

papermill = pytest.importorskip("papermill")

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"

# 4 pretraining steps of batch 16 on 64 synthetic images; 120 labelled images for the read-outs
SMALL = {"data_length": 64, "epochs": 1, "batch_size": 16, "eval_length": 120}


def source(name: str, folder: Path) -> Path:
    """``notebooks/<name>.py`` as an unexecuted ``<folder>/<name>.ipynb`` (as build.py writes it)."""
    import jupytext

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.ipynb"
    if not path.is_file():
        nb = jupytext.read(NOTEBOOKS / f"{name}.py")
        nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python",
                                     "name": "python3"}
        nbformat.write(nb, path)
    return path


def execute(name: str, out: Path, env: dict[str, str] | None = None, stderr_ok: bool = False,
            **params) -> nbformat.NotebookNode:
    """Execute the source of notebook ``name`` with papermill (cwd notebooks/) and return the
    result; ``env``: environment variables for the kernel. Fails when a cell wrote to stderr
    (unless ``stderr_ok``: real data may warn, e.g. about images missing from a subset)."""
    from mlvicx_core.experiments.notebook_run import execute_notebook

    src = source(name, out / "sources")
    dst = out / f"{name}.executed.ipynb"
    saved = dict(os.environ)
    # the kernel must import this checkout's mlvicx_core, whatever the caller's PYTHONPATH
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), saved.get("PYTHONPATH", "")) if p)
    os.environ.update(env or {})
    try:
        # a per-cell limit: a lost kernel message must fail the test, not block the suite
        execute_notebook(src, dst, params, cwd=NOTEBOOKS, timeout=600)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    nb = nbformat.read(dst, as_version=4)
    stderr = [o["text"] for c in nb.cells for o in c.get("outputs", [])
              if o.get("output_type") == "stream" and o.get("name") == "stderr"]
    assert stderr_ok or not stderr, f"{name} wrote to stderr: {stderr}"
    return nb


def text_outputs(nb) -> str:
    parts = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            parts.append(o.get("text", "") or o.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def n_images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("notebook-runs")


def run_folders(out: Path) -> dict[str, dict]:
    """{run folder name: its resolved config} for every finished run under ``out``."""
    import yaml

    return {d.name: yaml.safe_load((d / "config.yaml").read_text())
            for d in sorted(out.glob("*-*")) if (d / "done.json").is_file()}


def test_01_pretraining_small(shared):
    nb = execute("01_pretraining", shared, out_dir=str(shared), data_length=64, epochs=1,
                 batch_size=16)
    runs = run_folders(shared)
    # the healthy run and the std_coeff=0 run, each 64 / 16 = 4 steps
    assert sorted(cfg["loss"]["std_coeff"] for cfg in runs.values()) == [0.0, 25.0]
    for name in runs:
        assert json.loads((shared / name / "done.json").read_text())["step"] == 4
        metrics = pd.read_json(shared / name / "metrics.jsonl", lines=True)
        assert metrics["step"].max() == 4
    text = text_outputs(nb)
    assert "1 epochs x 4 steps of batch 16 at 32 px" in text
    # the model summary is computed from the config: 1024-wide projector outputs of the teaching net
    assert "global embedding (6, 1024)" in text
    assert n_images(nb) >= 3  # views, loss terms, collapse diagnostics


def test_02_umap_small(shared):
    nb = execute("02_embeddings_umap", shared, out_dir=str(shared), colour_by="nodule", **SMALL)
    assert f"{SMALL['eval_length']} images" in text_outputs(nb)
    variants = sorted(cfg["model"]["multilevel"] for cfg in run_folders(shared).values())
    assert True in variants and False in variants  # an MLVICX and a VICReg run exist
    assert n_images(nb) >= 1
    # features were cached per encoder and kind: trunk + global for both, multi for MLVICX only
    kinds = sorted(p.name.split("-")[0] for p in (shared / "features").glob("*.npz"))
    assert kinds.count("multi") == 1 and kinds.count("global") == 2 and kinds.count("trunk") == 2


def check_results(csv: Path, encoders: set[str], fractions: set[float]) -> pd.DataFrame:
    df = pd.read_csv(csv)
    auroc = df[df["metric"] == "auroc"]
    assert set(auroc["encoder"]) == encoders
    assert set(auroc["fraction"]) == fractions
    assert {"probe", "knn"} <= set(auroc["task"])
    assert auroc[auroc["task"] == "knn"]["k"].notna().all()
    means = auroc[auroc["finding"] == "mean"]
    assert len(means) == len(encoders) * len(fractions) * 2
    ok = means.dropna(subset=["value"])
    assert ((ok["value"] >= 0) & (ok["value"] <= 1)).all()
    assert ((ok["ci_low"] <= ok["value"] + 1e-12) & (ok["value"] <= ok["ci_high"] + 1e-12)).all()
    return df


def test_03_probe_small(shared):
    results = shared / "probe"
    execute("03_linear_probe", shared, out_dir=str(shared), results_dir=str(results),
            fractions=[0.5, 1.0], n_boot=50, **SMALL)
    df = check_results(results / "results.csv", {"random", "vicreg", "mlvicx"}, {0.5, 1.0})
    # the test split holds 20 % of eval_length (120) images: n is constant for the findings
    findings = df[(df["metric"] == "auroc") & df["task"].isin(["probe", "knn"])]
    assert list(findings["n"].unique()) == [round(SMALL["eval_length"] * 0.2)]
    # the factor read-out: every encoder, the phantom's factors (n: images where one is defined)
    factors = df[df["task"] == "factors"]
    assert set(factors["encoder"]) == {"random", "vicreg", "mlvicx"}
    assert {"shift_x", "rotation", "dose"} <= set(factors["finding"])
    assert (factors["n"] <= round(SMALL["eval_length"] * 0.2)).all()


def test_03_same_numbers_in_a_fresh_folder_and_another_thread_setting(shared, tmp_path):
    """A fresh execution (nothing cached, OMP_NUM_THREADS=2 instead of the suite's 1) trains the
    same weights and writes the same numbers: notebooks fix torch's thread count themselves."""
    first = shared / "probe" / "results.csv"
    if not first.is_file():  # this test alone: make the reference execution first
        test_03_probe_small(shared)
    fresh = tmp_path / "fresh"
    execute("03_linear_probe", tmp_path, env={"OMP_NUM_THREADS": "2"}, out_dir=str(fresh),
            results_dir=str(fresh / "probe"), fractions=[0.5, 1.0], n_boot=50, **SMALL)
    pd.testing.assert_frame_equal(pd.read_csv(fresh / "probe" / "results.csv"), pd.read_csv(first))
    # equal weights give equal fingerprints: the fresh feature cache has the same file names
    # (shared/ also holds 02's global and multi-level features, hence a subset)
    names = {p.name for p in (fresh / "features").glob("*.npz")}
    assert names and names <= {p.name for p in (shared / "features").glob("*.npz")}
    for name in names:
        a, b = np.load(fresh / "features" / name), np.load(shared / "features" / name)
        np.testing.assert_array_equal(a["x"], b["x"])


def test_04_gradcam_small(shared):
    nb = execute("04_gradcam", shared, out_dir=str(shared), show_findings=["effusion"],
                 n_show=1, max_images=3, **SMALL)
    text = text_outputs(nb)
    assert "findings shown: ['effusion']" in text
    # the pointing-game table lists every finding x tap, with both encoders as columns
    for tap in ("stem", "layer1", "layer2", "layer3", "layer4"):
        assert tap in text
    assert "MLVICX" in text and "VICReg" in text
    # 2 heatmap grids (one per encoder), the pointing figure, >= 1 static browser figure
    assert n_images(nb) >= 4


def test_05_sweep_small(shared):
    execute("05_experiments", shared, out_dir=str(shared), lams=[0.5], level_sets=[],
            bottleneck_off=False, fractions=[1.0], n_boot=50, **SMALL)
    sweep = shared / "sweep"
    points = sorted(p.name for p in sweep.iterdir() if (p / "results.csv").is_file())
    assert points == ["mlvicx", "mlvicx_lam_0.5", "vicreg"]
    for point in points:
        params = json.loads((sweep / point / "params.json").read_text())
        assert params["data_length"] == SMALL["data_length"]
        enc = "vicreg" if point == "vicreg" else "mlvicx"
        check_results(sweep / point / "results.csv", {enc}, {1.0})
    params = json.loads((sweep / "mlvicx_lam_0.5" / "params.json").read_text())
    assert params["overrides"] == {"loss.lam": 0.5}
    # the lambda=0.5 point pretrained its own encoder: a run with loss.lam 0.5 exists
    assert 0.5 in {cfg["loss"]["lam"] for cfg in run_folders(shared).values()}
    # a second execution reuses every point: no results file is rewritten
    stamps = {p: (sweep / p / "results.csv").stat().st_mtime_ns for p in points}
    execute("05_experiments", shared, out_dir=str(shared), lams=[0.5], level_sets=[],
            bottleneck_off=False, fractions=[1.0], n_boot=50, **SMALL)
    assert stamps == {p: (sweep / p / "results.csv").stat().st_mtime_ns for p in points}


def nih_images() -> Path | None:
    base = Path(os.environ.get("MLVICX_DATA_DIR", ROOT.parent / "shared" / "data"))
    folder = base / "nih" / "images-64px"
    return folder if folder.is_dir() and any(folder.glob("*.png")) else None


@pytest.mark.realdata
@pytest.mark.skipif(nih_images() is None, reason="real NIH images not found: set MLVICX_DATA_DIR "
                    "to a folder holding nih/images-64px (default ../shared/data)")
def test_03_probe_on_nih(tmp_path):
    folder = nih_images()
    results = tmp_path / "probe-nih"
    execute("03_linear_probe", tmp_path, stderr_ok=True, dataset="nih", data_root=str(folder),
            out_dir=str(tmp_path),
            results_dir=str(results), max_steps=3, batch_size=16, encoders=["random", "mlvicx"],
            fractions=[1.0], n_boot=50)
    df = check_results(results / "results.csv", {"random", "mlvicx"}, {1.0})
    from mlvicx_core.data.nih import NIH_FINDINGS

    auroc = df[(df["metric"] == "auroc") & df["task"].isin(["probe", "knn"])]
    assert set(auroc["finding"]) - {"mean"} == set(NIH_FINDINGS)
    # the pretraining run read the NIH folder, 3 steps
    (run,) = [d for d in tmp_path.glob("teaching-*") if (d / "done.json").is_file()]
    cfg = run_folders(tmp_path)[run.name]
    assert cfg["data"]["dataset"] == "nih" and cfg["data"]["root"] == str(folder)
    assert pd.read_json(run / "metrics.jsonl", lines=True)["step"].max() == 3
    # step 0 holds only the online probe (random init); every training step has a finite loss
    losses = pd.read_json(run / "metrics.jsonl", lines=True).query("step > 0")["loss"]
    assert len(losses) and np.isfinite(losses).all()

"""The notebook support modules: experiment configs, sweeps, result tables, widgets, figures."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import nbformat
import numpy as np
import pandas as pd
import pytest
import torch

from mlvicx_core.config import LEVELS, ConfigError, config_hash
from mlvicx_core.experiments import (
    collect_results,
    diagnostics_table,
    eval_config,
    eval_splits,
    label_fraction_table,
    pretrain_config,
    run_sweep,
    sweep_grid,
)
from mlvicx_core.model import Embeddings

ROOT = Path(__file__).resolve().parents[1]


def test_pretrain_config_variants_and_sharing():
    m = pretrain_config("mlvicx", data_length=100, epochs=2, batch_size=10, seed=3,
                        overrides={"loss.lam": 0.5}, out_dir="x")
    assert (m.model.multilevel, m.model.context_bottleneck, m.loss.lam) == (True, True, 0.5)
    assert m.model.levels == LEVELS
    assert (m.data.length, m.data.seed, m.train.epochs, m.train.batch_size, m.train.seed) == \
        (100, 3, 2, 10, 3)
    assert m.train.out_dir == "x" and m.data.dataset == "synthetic" and m.data.root is None
    v = pretrain_config("vicreg")
    assert (v.model.multilevel, v.model.context_bottleneck) == (False, False)
    assert pretrain_config("mlvicx-no-cb").model.context_bottleneck is False
    # the same parameters from two notebooks give the same run
    assert config_hash(pretrain_config()) == config_hash(pretrain_config())
    collapse = pretrain_config(overrides={"loss.std_coeff": 0.0})
    assert config_hash(collapse) != config_hash(pretrain_config())
    ab = pretrain_config(overrides={"model.levels": ["layer3", "layer4"],
                                    "aug.crop_scale": [0.5, 1.0]}, max_steps=7)
    assert ab.model.levels == ("layer3", "layer4") and ab.aug.crop_scale == (0.5, 1.0)
    assert ab.train.max_steps == 7
    # image_size is the stored/evaluated radiograph side; the views are the preset's, at most that
    assert (m.data.stored_size, m.data.view_size) == (64, 32)
    big = pretrain_config(image_size=128)
    assert (big.data.stored_size, big.data.view_size) == (128, 32)
    paper = pretrain_config(preset="paper", image_size=64)
    assert (paper.data.stored_size, paper.data.view_size) == (64, 64)
    # notebooks.yaml changes no result key: at the defaults a notebook's run is the demo's run,
    # the teaching preset in the demo's folder (runs/teaching-<hash>)
    from mlvicx_core.config import load_config
    from mlvicx_core.train.runs import run_dir_for

    default = pretrain_config(out_dir="runs")
    teaching = load_config("teaching", ["train.out_dir=runs"])
    assert config_hash(default) == config_hash(teaching)
    assert run_dir_for(default) == run_dir_for(teaching)
    assert (default.data.length, default.train.epochs, default.train.batch_size) == (
        teaching.data.length, teaching.train.epochs, teaching.train.batch_size)
    assert (m.train.eval_every, m.train.probe_images) == (teaching.train.eval_every,
                                                          teaching.train.probe_images)
    with pytest.raises(ConfigError, match="aug.crop_scale"):
        pretrain_config(overrides={"aug.crop_scale": [2, 1]})


def test_pretrain_config_errors(tmp_path):
    with pytest.raises(ValueError, match="dataset='mnist'"):
        pretrain_config(dataset="mnist")
    with pytest.raises(ValueError, match="needs data_root"):
        pretrain_config(dataset="nih")
    with pytest.raises(ValueError, match="is not a folder"):
        pretrain_config(dataset="nih", data_root=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="variant='simclr'"):
        pretrain_config("simclr")
    assert pretrain_config(dataset="nih", data_root=str(tmp_path)).data.root == str(tmp_path)


def test_eval_splits_are_patient_disjoint_from_each_other_and_from_pretraining():
    ev = eval_splits(length=20, image_size=64, seed=0)
    assert [len(ev[s]) for s in ("train", "val", "test")] == [14, 2, 4]
    assert ev["test"].has_masks
    pre = pretrain_config(data_length=40)
    from mlvicx_core.data.registry import dataset_from_config

    pre_ids = set(dataset_from_config(pre.data).patient_ids)
    assert not pre_ids & set(ev["val"].patient_ids) and not pre_ids & set(ev["test"].patient_ids)


def test_eval_config_is_typed():
    c = eval_config(fractions=[0.1, 1], n_boot=20)
    assert c.fractions == (0.1, 1.0) and c.n_boot == 20
    with pytest.raises(ConfigError, match="eval.n_boot"):
        eval_config(n_boot="many")


def test_sweep_grid_one_factor_at_a_time():
    grid = sweep_grid(lams=[0.5, 2], level_sets=[["layer4"]], bottleneck_off=True)
    assert list(grid) == ["mlvicx", "vicreg", "mlvicx lam=0.5", "mlvicx lam=2",
                          "mlvicx levels=layer4", "mlvicx-no-cb"]
    for name, point in grid.items():
        changed = len(point["overrides"]) + (point["encoders"] != ["mlvicx"])
        assert changed == (0 if name == "mlvicx" else 1), name
    assert grid["mlvicx lam=2"]["overrides"] == {"loss.lam": 2.0}
    assert grid["vicreg"]["encoders"] == ["vicreg"]
    with pytest.raises(ValueError, match="level set"):
        sweep_grid(level_sets=[["layer9"]])
    assert list(sweep_grid(vicreg=False, bottleneck_off=False)) == ["mlvicx"]


def _results_csv(path: Path, rows: list[tuple]) -> Path:
    cols = ["encoder", "task", "k", "fraction", "finding", "metric", "value", "ci_low", "ci_high",
            "n"]
    pd.DataFrame(rows, columns=cols).to_csv(path, index=False)
    return path


def test_collect_results_and_fraction_table(tmp_path):
    a = _results_csv(tmp_path / "a.csv", [
        ("mlvicx", "probe", None, 1.0, "mean", "auroc", 0.7, 0.6, 0.8, 40),
        ("mlvicx", "probe", None, 1.0, "nodule", "auroc", 0.9, 0.8, 1.0, 40),
        ("mlvicx", "knn", 5, 1.0, "mean", "auroc", 0.65, 0.55, 0.75, 40),
        ("mlvicx", "probe", None, 0.1, "mean", "auroc", 0.6, 0.5, 0.7, 40)])
    b = _results_csv(tmp_path / "b.csv", [
        ("vicreg", "probe", None, 1.0, "mean", "auroc", 0.55, 0.45, 0.65, 40)])
    table = collect_results({"A": a, "B": b}, tasks=("probe",))
    assert list(table["point"]) == ["A", "A", "B"]
    assert list(table["value"]) == [0.7, 0.6, 0.55]
    both = collect_results({"A": a})
    assert len(both) == 3  # probe at two fractions + kNN; the per-finding row is left out
    assert both[both.task == "knn"]["k"].item() == 5
    pivot = label_fraction_table(a)
    assert pivot.loc[("probe", "mlvicx"), 1.0] == "0.700 [0.600, 0.800]"
    assert pivot.loc[("knn", "mlvicx"), 1.0] == "0.650 [0.550, 0.750] k=5"
    assert pd.isna(pivot.loc[("knn", "mlvicx"), 0.1])
    with pytest.raises(ValueError, match="no results"):
        collect_results({})


def test_run_sweep_trains_reads_out_reuses_and_redoes(tmp_path):
    """Each point pretrains its own run (2 steps of 16 images) and is read out in this process;
    the same parameters reuse the results, changed ones compute them again."""
    common = {"data_length": 32, "epochs": 1, "batch_size": 16, "out_dir": str(tmp_path / "runs"),
              "eval_length": 60, "fractions": [1.0], "n_boot": 20}
    off = {"train.eval_every": 0}  # no online probe: not what this test is about
    grid = {"mlvicx": {"encoders": ["mlvicx"], "overrides": off},
            "lam two": {"encoders": ["mlvicx"], "overrides": {**off, "loss.lam": 2.0}}}
    csvs = run_sweep(grid, tmp_path / "sweep", common, progress=False)
    assert set(csvs) == {"mlvicx", "lam two"} and csvs["lam two"].parent.name == "lam_two"
    table = collect_results(csvs)
    assert set(table["task"]) == {"probe", "knn"} and table["value"].between(0, 1).all()
    runs = sorted((tmp_path / "runs").glob("teaching-*/done.json"))
    assert len(runs) == 2  # one run per point: loss.lam is part of the content hash
    assert json.loads((tmp_path / "sweep" / "lam_two" / "params.json").read_text())[
        "overrides"] == {**off, "loss.lam": 2.0}
    stamp = csvs["mlvicx"].stat().st_mtime_ns
    run_sweep({"mlvicx": grid["mlvicx"]}, tmp_path / "sweep", common, progress=False)
    assert csvs["mlvicx"].stat().st_mtime_ns == stamp  # same parameters: reused
    run_sweep({"mlvicx": grid["mlvicx"]}, tmp_path / "sweep", {**common, "n_boot": 30},
              progress=False)
    assert csvs["mlvicx"].stat().st_mtime_ns != stamp  # changed: computed again
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['probe_notebook'\]"):
        run_sweep(grid, tmp_path / "sweep", {"probe_notebook": "03.ipynb"})


class _Fixed(torch.nn.Module):
    def __init__(self, z: torch.Tensor) -> None:
        super().__init__()
        self.z = z

    def forward(self, x):
        return Embeddings(self.z, None)


def test_diagnostics_table_matches_hand_computation():
    z = torch.tensor([[0.0, 1.0], [2.0, 1.0], [4.0, 4.0]])
    table = diagnostics_table({"toy": _Fixed(z), "dead": _Fixed(torch.ones(3, 2))},
                              torch.zeros(3, 1, 8, 8))
    std = np.std(z.numpy(), axis=0, ddof=1)  # [2, sqrt(3)]
    assert table.loc["toy", "std_min"] == pytest.approx(std.min())
    assert table.loc["toy", "std_mean"] == pytest.approx(std.mean())
    corr = np.corrcoef(z.numpy().T)[0, 1]
    assert table.loc["toy", "corr_offdiag"] == pytest.approx(abs(corr))
    assert table.loc["dead", "std_min"] == 0.0 and table.loc["toy", "embedding dim"] == 2


def test_positive_examples_returns_true_masks():
    from mlvicx_core.evaluation.tap_localisation import positive_examples

    ds = eval_splits(length=40, image_size=64, seed=0)["train"]
    k = ds.findings.index("effusion")
    images, regions, picked = positive_examples(ds, np.arange(len(ds)), k, 3)
    assert len(picked) == len(images) == len(regions) <= 3
    for i, idx in enumerate(picked):
        assert ds.labels[idx, k] == 1
        np.testing.assert_array_equal(regions[i], ds[idx]["mask"][k].numpy())
        np.testing.assert_array_equal(images[i].numpy(), ds[idx]["image"].numpy())
    none = positive_examples(ds, np.array([], dtype=int), k, 3)
    assert none == (None, None, [])


def test_widgets_build_without_frontend():
    import ipywidgets

    from mlvicx_core.viz.widgets import browser_figure, image_browser, umap_selector

    rng = np.random.default_rng(0)
    imgs = rng.random((3, 16, 16)).astype(np.float32)
    cams = {"layer3": rng.random((3, 16, 16)).astype(np.float32)}
    box = image_browser(imgs, imgs, imgs, cams, imgs > 0.5, finding="effusion")
    slider, caption = box.children[:2]
    assert isinstance(slider, ipywidgets.IntSlider) and (slider.min, slider.max) == (0, 2)
    assert slider.description == "effusion image"
    assert caption.value == "image 1 of 3 test images positive for effusion"
    slider.value = 2  # redraws without a frontend
    assert caption.value == "image 3 of 3 test images positive for effusion"
    fig = browser_figure(1, imgs, imgs, imgs, cams, title="image 2 of 3")
    # four panels, then the heat maps' colour bar; titles readable on a projector
    assert [ax.get_title() for ax in fig.axes[:4]] == ["image", "view 1", "view 2",
                                                       "Grad-CAM layer3"]
    assert len(fig.axes) == 5 and "Grad-CAM" in fig.axes[4].get_ylabel()
    assert min(ax.title.get_fontsize() for ax in fig.axes[:4]) >= 11
    assert fig._suptitle.get_text() == "image 2 of 3"
    with pytest.raises(IndexError, match="image 3"):
        browser_figure(3, imgs, imgs, imgs, cams)
    table = pd.DataFrame({"nodule": [0, 1, np.nan], "sex": ["F", "M", "F"]})
    panels = {("A", "trunk"): rng.random((3, 2)), ("B", "multi"): None}
    sel = umap_selector(panels, table, colour_by="sex")
    assert sel.children[0].options == ("nodule", "sex") and sel.children[0].value == "sex"
    sel.children[0].value = "nodule"
    with pytest.raises(ValueError, match="colour_by='age'"):
        umap_selector(panels, table, colour_by="age")


def test_figures_read_on_a_projector_and_do_not_exaggerate():
    from mlvicx_core.viz.figures import (
        category_labels,
        plot_cam_grid,
        plot_pointing,
        plot_sweep,
        plot_umap_grid,
    )

    assert list(category_labels([0.0, 1.0, np.nan])[:2]) == ["absent", "present"]
    assert pd.isna(category_labels([0.0, 1.0, np.nan])[2])
    assert list(category_labels(["F", "M"])) == ["F", "M"]
    rng = np.random.default_rng(0)
    fig = plot_umap_grid({("A", "trunk"): rng.random((4, 2))}, pd.Series([0, 1, 1, np.nan]),
                         "nodule")
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["absent", "present", "unknown"]
    sweep = pd.DataFrame({"point": ["a", "b"], "task": ["probe"] * 2, "fraction": [1.0, 1.0],
                          "value": [0.6, 0.62], "ci_low": [0.55, 0.57], "ci_high": [0.65, 0.67]})
    ax = plot_sweep(sweep).axes[0]
    assert ax.get_xlim() == (0.0, 1.0)  # bars from 0: their lengths are the AUROCs
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["chance"]
    pointing = pd.DataFrame({"encoder": ["A", "B"], "tap": ["stem", "stem"],
                             "finding": ["nodule"] * 2, "pointing_game": [0.2, 0.4],
                             "chance_pointing": [0.1, 0.1], "n": [5, 5]})
    ax = plot_pointing(pointing).axes[0]
    assert ax.get_ylim() == (0.0, 1.0) and ax.title.get_fontsize() >= 11
    imgs = rng.random((2, 16, 16)).astype(np.float32)
    fig = plot_cam_grid(imgs, {"stem": imgs, "layer4": imgs}, imgs > 0.5, "A: nodule")
    assert len(fig.axes) == 2 * 3 + 1 and "Grad-CAM" in fig.axes[-1].get_ylabel()
    assert min(ax.title.get_fontsize() for ax in fig.axes[:3]) >= 11


def test_fraction_curves_plot_the_csv_values(tmp_path):
    from mlvicx_core.viz.figures import plot_fraction_curves

    csv = _results_csv(tmp_path / "r.csv", [
        ("mlvicx", "probe", None, 0.1, "mean", "auroc", 0.6, 0.5, 0.7, 40),
        ("mlvicx", "probe", None, 1.0, "mean", "auroc", 0.7, 0.6, 0.8, 40),
        ("random", "probe", None, 0.1, "mean", "auroc", 0.5, 0.45, 0.55, 40),
        ("random", "probe", None, 1.0, "mean", "auroc", 0.52, 0.5, 0.6, 40)])
    fig = plot_fraction_curves(csv)
    ax = fig.axes[0]
    ys = {c.get_label(): list(c.lines[0].get_ydata()) for c in ax.containers}
    assert ys == {"mlvicx": [0.6, 0.7], "random": [0.5, 0.52]}
    assert ax.get_title() == "probe"


def test_notebook_sources_have_one_plain_parameters_cell():
    import ast

    import jupytext

    for src in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py")):
        nb = jupytext.read(src)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, src.name
        for node in ast.parse(tagged[0].source).body:
            assert isinstance(node, ast.Assign), f"{src.name}: only assignments in parameters"
            ast.literal_eval(node.value)  # plain values only: no calls, no names
        names = {t.id for node in ast.parse(tagged[0].source).body for t in node.targets}
        assert {"dataset", "data_root", "preset", "image_size", "epochs", "batch_size", "seed",
                "out_dir"} <= names, src.name
        committed = src.with_suffix(".ipynb")
        assert committed.is_file(), f"{committed.name} not built (python notebooks/build.py)"
        built = nbformat.read(committed, as_version=4)
        assert [c.source for c in built.cells] == [c.source for c in nb.cells], \
            f"{committed.name} is out of date with {src.name}: rebuild it"

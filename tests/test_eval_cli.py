"""End to end: ``mlvicx evaluate`` on a fake dataset writes the CSV, the Markdown and the figures."""
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from eval_fakes import BlobCXR, tiny_model
from PIL import Image

from mlvicx_core.checkpoints import save_model
from mlvicx_core.cli import main
from mlvicx_core.config import load_config
from mlvicx_core.data.registry import split_subset
from mlvicx_core.evaluation.pipeline import evaluate
from mlvicx_core.evaluation.report import ROW_COLUMNS, markdown_table, results_frame, write_results

TESTS = str(Path(__file__).parent)


def test_report_csv_and_markdown(tmp_path):
    rows = [
        {"encoder": "mlvicx", "task": "probe", "fraction": 0.1, "finding": "disc",
         "metric": "auroc", "value": 0.8123, "ci_low": 0.75, "ci_high": 0.86, "n": 30, "note": ""},
        {"encoder": "mlvicx", "task": "probe", "fraction": 0.1, "finding": "bar",
         "metric": "auroc", "value": float("nan"), "n": 30, "note": "bar: single class"},
        {"encoder": "mlvicx", "task": "knn", "k": 5, "fraction": 0.1, "finding": "disc",
         "metric": "auroc", "value": 0.7, "ci_low": 0.6, "ci_high": 0.8, "n": 30, "note": "x"},
        {"encoder": "mlvicx", "task": "knn", "k": 5, "fraction": 0.1, "finding": "bar",
         "metric": "auroc", "value": 0.6, "ci_low": 0.5, "ci_high": 0.7, "n": 30, "note": "x"},
        {"encoder": "imagenet", "task": "all", "note": "skipped: no weights"},
    ]
    csv_path, md_path = write_results(rows, tmp_path)
    frame = pd.read_csv(csv_path)
    assert list(frame.columns) == ROW_COLUMNS
    assert frame.loc[0, "value"] == 0.8123 and math.isnan(frame.loc[1, "value"])
    md = md_path.read_text()
    assert "| mlvicx | 0.1 | 0.812 [0.750, 0.860] | undefined |" in md
    # k is a column: one kNN table, the chosen k in its own column
    assert md.count("## knn: auroc") == 1 and "| mlvicx | 0.1 | 5 | 0.700 [0.600, 0.800] |" in md
    assert "- skipped: no weights (imagenet / all)" in md
    # a note repeated on several rows is listed once
    assert md.count("- x (") == 1
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['auc'\]"):
        results_frame([{"auc": 1}])
    assert markdown_table(results_frame(rows[:1])).startswith("# Evaluation results")


@pytest.mark.slow
def test_evaluate_command_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(TESTS)
    save_model(tiny_model(seed=1), tmp_path / "mlvicx.pt")
    save_model(tiny_model(seed=2, multilevel=False, context_bottleneck=False),
               tmp_path / "vicreg.pt")
    out = tmp_path / "eval"
    code = main([
        "evaluate", "--checkpoint", f"mlvicx={tmp_path / 'mlvicx.pt'}",
        "--checkpoint", f"vicreg={tmp_path / 'vicreg.pt'}",
        "--baseline", "random", "--baseline", "imagenet",
        "--set", "data.dataset=eval_fakes:make_blobs", "--set", "data.stored_size=32",
        "--set", "data.length=60", "--set", "eval.split_sizes=null",
        "--set", "eval.fractions=[0.5,1.0]",
        "--set", "eval.tasks=[probe,knn,gradcam,umap,finetune,segmentation]",
        "--set", "eval.finetune_epochs=1", "--set", "eval.seg_epochs=1",
        "--set", "eval.n_boot=50", "--set", "eval.gradcam_images=6",
        "--set", f"eval.cache_dir={tmp_path / 'cache'}", "--out", str(out),
        "--set", "eval.colour_by=[disc,bar]",
    ])
    assert code == 0, capsys.readouterr().err
    frame = pd.read_csv(out / "results.csv")
    probe = frame[(frame.task == "probe") & (frame.finding == "mean")]
    assert set(probe.encoder) == {"mlvicx", "vicreg", "random"}
    assert set(probe.fraction) == {0.5, 1.0}
    assert set(probe.dataset) == {"eval_fakes:make_blobs"}
    assert probe.value.between(0, 1).all()
    assert (probe.ci_low <= probe.value).all() and (probe.value <= probe.ci_high).all()
    knn = frame[frame.task == "knn"]
    assert knn.k.notna().all() and set(knn.k) <= {5, 10, 20, 50}
    cam = frame[(frame.task == "gradcam") & (frame.metric != "figure")]
    assert {"pointing_game", "energy_inside", "chance_pointing", "chance_energy"} <= set(cam.metric)
    for task, metric in (("finetune", "auroc"), ("segmentation", "dice")):
        sel = frame[(frame.task == task) & (frame.metric == metric)]
        assert set(sel.encoder) == {"mlvicx", "vicreg", "random"}
        assert sel.value.dropna().between(0, 1).all() and sel.value.notna().any()
    imagenet = frame[frame.encoder == "imagenet"]
    assert len(imagenet) == 1 and imagenet.note.iloc[0].startswith("skipped: ImageNet weights")
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert "gradcam-mlvicx.png" in figures and "umap-vicreg-bar.png" in figures
    assert "## probe: auroc" in (out / "results.md").read_text()
    # the cache was used: one file per encoder and split
    assert len(list((tmp_path / "cache").glob("trunk-*.npz"))) == 3 * 3


def test_evaluate_command_bad_inputs(tmp_path, capsys):
    with pytest.raises(SystemExit, match="nothing to evaluate"):
        main(["evaluate", "--set", "data.dataset=synthetic", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="expected NAME=PATH"):
        main(["evaluate", "--checkpoint", "x.pt", "--out", "o"])
    assert main(["evaluate", "--baseline", "random", "--set", "data.dataset=no_such_module:X",
                 "--out", str(tmp_path)]) == 2
    assert "cannot import X from no_such_module" in capsys.readouterr().err
    # a wrong colour column is refused before any work, naming the key and the choices
    assert main(["evaluate", "--baseline", "random", "--set", "eval.tasks=[probe,umap]",
                 "--set", "eval.colour_by=[Sex]", "--set", "eval.split_sizes=[20,10,10]",
                 "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "eval.colour_by=['Sex']" in err and "nodule" in err
    assert not (tmp_path / "x" / "results.csv").exists()
    assert main(["evaluate", "--baseline", "random", "--set", "eval.n_boot=0",
                 "--out", str(tmp_path)]) == 2
    assert "eval.n_boot=0: expected every value >= 1" in capsys.readouterr().err


def test_evaluate_with_boxes_and_metadata(tmp_path):
    """NIH-like data: boxes instead of masks, a metadata table to colour the UMAP by."""
    ds = BlobCXR(n=30, image_size=32, masks=False)
    ds.metadata = pd.DataFrame({"view": ["PA", "AP", "PA"] * 10})
    splits = {s: split_subset(ds, s) for s in ("train", "val", "test")}
    assert list(splits["test"].metadata["view"]) == [ds.metadata["view"][i]
                                                      for i in splits["test"].indices]
    cfg = load_config("teaching", {"eval.fractions": [1.0], "eval.n_boot": 20,
                                   "eval.tasks": ["probe", "gradcam", "umap", "segmentation"],
                                   "eval.gradcam_tap": "layer2", "eval.gradcam_images": 4,
                                   "eval.colour_by": ["view"]}).eval
    evaluate({"m": tiny_model()}, splits, cfg, out_dir=tmp_path)
    frame = pd.read_csv(tmp_path / "results.csv")
    cam = frame[(frame.task == "gradcam") & (frame.metric == "pointing_game")]
    assert (cam.n > 0).all()  # regions came from the boxes
    seg = frame[frame.task == "segmentation"]
    assert seg.note.iloc[0] == "skipped: the dataset has no masks"
    assert (tmp_path / "figures" / "umap-m-view.png").is_file()
    with pytest.raises(ValueError, match=r"eval.colour_by=\['Sex'\]"):
        evaluate({"m": tiny_model()}, splits, cfg.replace(tasks=("umap",), colour_by=("Sex",)))
    with pytest.raises(ValueError, match="add 'probe'"):
        evaluate({"m": tiny_model()}, splits, cfg.replace(tasks=("gradcam",)))


def test_a_failing_task_keeps_the_others(tmp_path):
    """UMAP on a 3-image test split fails; the probe's rows are still written, with a note that
    says the split is too small (issue 19 item 6: it was scipy's "k >= N")."""
    ds = BlobCXR(n=40, image_size=32)
    splits = {"train": split_subset(ds, "train"), "val": split_subset(ds, "val"),
              "test": BlobCXR(n=3, image_size=32, seed=3)}
    cfg = load_config("teaching", {"eval.fractions": [1.0], "eval.n_boot": 10,
                                   "eval.tasks": ["probe", "umap"]}).eval
    with pytest.warns(UserWarning, match="umap failed"):
        evaluate({"m": tiny_model()}, splits, cfg, out_dir=tmp_path)
    frame = pd.read_csv(tmp_path / "results.csv")
    assert (frame.task == "probe").any()
    umap = frame[frame.task == "umap"]
    assert list(umap.note) == [("failed: ValueError: the test split has 3 images; a 2-D UMAP needs "
                               "at least 4: use a larger test split (eval.split_sizes, or more "
                               "data)")]


def _evaluate(tmp_path, *argv) -> int:
    return main(["evaluate", "--set", "data.stored_size=32", "--set", "eval.n_boot=20",
                 "--set", "eval.fractions=[1.0]", *argv, "--out", str(tmp_path / "eval")])


def test_evaluate_command_keeps_finished_tasks_when_one_fails(tmp_path, monkeypatch, capsys):
    """A 2-image test split: UMAP cannot run; probe and kNN results are written, UMAP gets a
    note (issue 12, item 11: nothing was written before)."""
    monkeypatch.syspath_prepend(TESTS)
    with pytest.warns(UserWarning, match="random / umap failed, continuing"):
        code = _evaluate(tmp_path, "--baseline", "random",
                         "--set", "data.dataset=eval_fakes:make_blobs",
                         "--set", "data.length=40", "--set", "eval.split_sizes=null",
                         "--set", "data.split_fractions=[0.85,0.1,0.05]",
                         "--set", "eval.tasks=[probe,knn,umap]")
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert out.index("random / probe done") < out.index("random / knn done") < \
        out.index("random / umap done")
    frame = pd.read_csv(tmp_path / "eval" / "results.csv")
    assert {"probe", "knn"} <= set(frame.task) and (frame[frame.task == "probe"].n == 2).all()
    umap = frame[frame.task == "umap"]
    assert list(umap.note) == [("failed: ValueError: the test split has 2 images; a 2-D UMAP needs "
                               "at least 4: use a larger test split (eval.split_sizes, or more "
                               "data)")]
    assert "- failed: ValueError: the test split has 2 images" in \
        (tmp_path / "eval" / "results.md").read_text()


def test_evaluate_checks_colour_columns_before_any_work(tmp_path, capsys):
    """NIH metadata columns are `sex` and `view` (the documented names); a wrong name is refused
    before any checkpoint is read (item 12: the documented command failed after all the work)."""
    from test_nih import _fixture

    _fixture(tmp_path)  # tmp_path/images/... and tmp_path/Data_Entry_2017.csv
    missing = tmp_path / "no-such-checkpoint.pt"
    argv = ["evaluate", "--set", "data.dataset=nih", "--set", f"data.root={tmp_path}",
            "--set", "data.stored_size=32", "--checkpoint", f"m={missing}",
            "--set", "eval.tasks=[probe,umap]", "--out", str(tmp_path / "eval")]
    assert main([*argv, "--set", "eval.colour_by=[Patient Gender,View Position]"]) == 2
    err = capsys.readouterr().err
    assert "eval.colour_by=['Patient Gender', 'View Position']: ['Patient Gender', " \
           "'View Position'] unknown" in err
    assert "'sex'" in err and "'view'" in err and str(missing) not in err
    # the documented names pass the check: the next thing is reading the checkpoint
    assert main([*argv, "--set", "eval.colour_by=[sex,view]"]) == 2
    assert f"checkpoint {missing} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "eval" / "results.csv").exists()


def test_evaluate_command_on_unlabelled_data_says_so(tmp_path, monkeypatch, capsys):
    """Item 17: a probe on unlabelled data "succeeded" with one undefined row and no note."""
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        Image.fromarray(np.full((40, 40), 20 * i, np.uint8)).save(images / f"{i}.png")
    assert _evaluate(tmp_path, "--baseline", "random", "--set", "data.dataset=folder",
                     "--set", f"data.root={images}", "--set", "eval.tasks=[probe]") == 2
    assert capsys.readouterr().err == ("mlvicx evaluate: error: data.dataset='folder' is "
                                       "unlabelled pretraining data: it has no 'val' split to "
                                       "evaluate on\n")
    monkeypatch.syspath_prepend(TESTS)
    assert _evaluate(tmp_path, "--baseline", "random",
                     "--set", "data.dataset=eval_fakes:make_unlabelled",
                     "--set", "data.length=40", "--set", "eval.split_sizes=null",
                     "--set", "eval.tasks=[probe,knn]") == 0
    frame = pd.read_csv(tmp_path / "eval" / "results.csv")
    assert list(zip(frame.task, frame.note)) == [("probe", "skipped: the dataset has no labels"),
                                                 ("knn", "skipped: the dataset has no labels")]
    assert "- skipped: the dataset has no labels (random / probe, random / knn)" in \
        (tmp_path / "eval" / "results.md").read_text()


def test_evaluate_report_lists_each_note_once_and_one_knn_table(tmp_path, monkeypatch, capsys):
    """Item 17: results.md repeated notes (one line per row) and split the kNN tables by k."""
    monkeypatch.syspath_prepend(TESTS)
    save_model(tiny_model(seed=1), tmp_path / "m.pt")
    assert _evaluate(tmp_path, "--checkpoint", f"m={tmp_path / 'm.pt'}", "--baseline", "random",
                     "--set", "data.dataset=eval_fakes:make_blobs", "--set", "data.length=60",
                     "--set", "eval.split_sizes=null", "--set", "eval.fractions=[0.5,1.0]",
                     "--set", "eval.knn_ks=[1,3,5,10]", "--set", "eval.gradcam_images=4",
                     "--set", "eval.tasks=[probe,knn,gradcam]") == 0, capsys.readouterr().err
    frame = pd.read_csv(tmp_path / "eval" / "results.csv")
    ks = frame[frame.task == "knn"].groupby(["encoder", "fraction"]).k.first()
    assert ks.nunique() > 1  # several chosen k: the old report made one table per k
    md = (tmp_path / "eval" / "results.md").read_text()
    assert md.count("## knn: auroc") == 1 and "| encoder | fraction | k |" in md
    for enc, frac in ks.index:
        assert f"| {enc} | {frac:g} | {int(ks[enc, frac])} |" in md
    notes = [line for line in md.split("## Notes", 1)[1].splitlines() if line.startswith("- ")]
    assert len(notes) == len(set(notes)) and len(notes) < len(frame.dropna(subset=["note"]))
    for line in notes:
        places = line.rsplit(" (", 1)[1].rstrip(")").split(" and ")[0].split(", ")
        assert len(places) == len(set(places)), line


@pytest.mark.parametrize("overrides", [
    {},  # resnet18, width 64, imagenet stem, gates
    {"backbone": "resnet34", "width": 8, "stem": "cifar", "context_bottleneck": False},
    {"backbone": "resnet50", "width": 8, "multilevel": False},
])
def test_an_exported_trunk_is_read_back_with_its_architecture(tmp_path, overrides):
    """Issue 19 item 7: the architecture of a trunk.pt follows from its tensors."""
    import torch

    from mlvicx_core.checkpoints import export_trunk, load_model

    model = tiny_model(seed=3, **overrides)
    for with_gates in (False, True):
        path = export_trunk(model, tmp_path / f"trunk-{with_gates}.pt", with_gates=with_gates)
        back = load_model(path, allow_trunk=True)
        c = back.config
        assert (c.backbone, c.width, c.stem) == (model.config.backbone, model.config.width,
                                                 model.config.stem)
        assert back.trunk_only and c.multilevel is False
        assert c.context_bottleneck == (with_gates and model.config.context_bottleneck)
        sd, ref = back.backbone.state_dict(), model.backbone.state_dict()
        assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref)
        x = torch.rand(2, 1, 32, 32)
        if c.context_bottleneck or not model.config.context_bottleneck:  # same gates: same taps
            with torch.no_grad():
                assert torch.equal(back.taps(x)["layer4"], model.taps(x)["layer4"])
    with pytest.raises(Exception, match=r"trunk-False\.pt: expected a 'model' entry.*an exported "
                                        r"trunk"):
        load_model(tmp_path / "trunk-False.pt")  # where a network with heads is needed
    odd = {k: v for k, v in torch.load(tmp_path / "trunk-False.pt").items()
           if not k.startswith("layer3.0.")}  # a block missing: no torchvision ResNet
    torch.save(odd, tmp_path / "odd.pt")
    with pytest.raises(Exception, match=r"odd\.pt: layer3 has blocks \[1(, 2, 3, 4, 5)?\]; "
                                        r"expected blocks numbered from 0 without gaps"):
        load_model(tmp_path / "odd.pt", allow_trunk=True)
    torch.save({k: v for k, v in odd.items() if not k.startswith("layer3.")}, tmp_path / "odd.pt")
    layout = "(3, 4, 0, 3)" if model.config.backbone != "resnet18" else "(2, 2, 0, 2)"
    with pytest.raises(Exception, match=rf"odd\.pt: a ResNet trunk with {re.escape(layout)} "):
        load_model(tmp_path / "odd.pt", allow_trunk=True)


def test_evaluate_reads_an_exported_trunk_like_its_checkpoint(tmp_path, monkeypatch, capsys):
    """``evaluate --checkpoint t=trunk.pt`` (issue 19 item 7: refused before, although --help
    said "checkpoint or model file"): the trunk's probe equals its network's, value for value."""
    from mlvicx_core.checkpoints import export_trunk

    monkeypatch.syspath_prepend(TESTS)
    model = tiny_model(seed=1, context_bottleneck=False)  # a plain trunk: the same network
    save_model(model, tmp_path / "m.pt")
    export_trunk(model, tmp_path / "trunk.pt")
    argv = ["--checkpoint", f"m={tmp_path / 'm.pt'}", "--checkpoint", f"t={tmp_path / 'trunk.pt'}",
            "--set", "data.dataset=eval_fakes:make_blobs", "--set", "data.length=40",
            "--set", "eval.split_sizes=null", "--set", "eval.tasks=[probe]"]
    assert _evaluate(tmp_path, *argv) == 0, capsys.readouterr().err
    frame = pd.read_csv(tmp_path / "eval" / "results.csv")
    m, t = (frame[frame.encoder == e].drop(columns="encoder").reset_index(drop=True)
            for e in ("m", "t"))
    assert len(m) > 1
    pd.testing.assert_frame_equal(m, t)
    capsys.readouterr()
    for features, head in (("global", "global"), ("multi", "multi-level")):
        assert _evaluate(tmp_path, *argv, "--set", f"eval.features={features}") == 2
        assert capsys.readouterr().err == (
            f"mlvicx evaluate: error: --checkpoint t={tmp_path / 'trunk.pt'} is an exported trunk, "
            f"which has no projector heads: eval.features={features} reads the {head} projector. "
            "Use eval.features=trunk or layer3+layer4, or give the training checkpoint\n")

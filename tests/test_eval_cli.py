"""End to end: ``evaluate_main`` on a fake dataset writes the CSV, the Markdown and the figures."""
import math
from pathlib import Path

import pandas as pd
import pytest

from eval_fakes import parse_evaluate as _parse, tiny_model
from mlvicx_core.evaluation.checkpoint import save_encoder
from mlvicx_core.evaluation.cli import evaluate_main
from mlvicx_core.evaluation.report import markdown_table, results_frame, write_results

TESTS = str(Path(__file__).parent)


def test_report_csv_and_markdown(tmp_path):
    rows = [
        {"encoder": "mlvicx", "task": "linear probe", "fraction": 0.1, "finding": "disc",
         "metric": "auroc", "value": 0.8123, "ci_low": 0.75, "ci_high": 0.86, "n": 30, "note": ""},
        {"encoder": "mlvicx", "task": "linear probe", "fraction": 0.1, "finding": "bar",
         "metric": "auroc", "value": float("nan"), "n": 30, "note": "bar: single class"},
        {"encoder": "imagenet", "task": "all", "note": "skipped: no weights"},
    ]
    csv_path, md_path = write_results(rows, tmp_path)
    frame = pd.read_csv(csv_path)
    assert list(frame.columns) == ["encoder", "task", "fraction", "finding", "metric", "value",
                                   "ci_low", "ci_high", "n", "note"]
    assert frame.loc[0, "value"] == 0.8123 and math.isnan(frame.loc[1, "value"])
    md = md_path.read_text()
    assert "| mlvicx | 0.1 | 0.812 [0.750, 0.860] | undefined |" in md
    assert "- imagenet / all: skipped: no weights" in md
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['auc'\]"):
        results_frame([{"auc": 1}])
    assert markdown_table(results_frame(rows[:1])).startswith("# Evaluation results")


@pytest.mark.slow
def test_evaluate_main_end_to_end(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(TESTS)
    save_encoder(tiny_model(seed=1), tmp_path / "mlvicx.pt")
    save_encoder(tiny_model(seed=2, multilevel=False, context_bottleneck=False),
                 tmp_path / "vicreg.pt")
    out = tmp_path / "eval"
    args = _parse([
        "--checkpoint", f"mlvicx={tmp_path / 'mlvicx.pt'}",
        "--checkpoint", f"vicreg={tmp_path / 'vicreg.pt'}",
        "--baseline", "random", "--baseline", "imagenet",
        "--dataset", "eval_fakes:make_blobs", "--dataset-arg", "n=40", "--image-size", "32",
        "--fractions", "0.5", "1.0", "--tasks", "probe", "knn", "gradcam", "umap", "finetune",
        "segmentation", "--finetune-epochs", "1", "--seg-epochs", "1",
        "--n-boot", "50", "--gradcam-images", "6", "--cache-dir", str(tmp_path / "cache"),
        "--out", str(out),
        "--colour-by", "disc", "bar",
    ])
    assert evaluate_main(args) == 0
    frame = pd.read_csv(out / "results.csv")
    probe = frame[(frame.task == "linear probe") & (frame.finding == "mean")]
    assert set(probe.encoder) == {"mlvicx", "vicreg", "random"}
    assert set(probe.fraction) == {0.5, 1.0}
    assert probe.value.between(0, 1).all()
    assert (probe.ci_low <= probe.value).all() and (probe.value <= probe.ci_high).all()
    assert frame.task.str.startswith("kNN").any()
    cam = frame[frame.task == "Grad-CAM layer4"]
    assert set(cam.metric) == {"pointing_game", "energy_inside", "chance_pointing", "chance_energy"}
    for task, metric in (("fine-tune", "auroc"), ("segmentation", "dice")):
        sel = frame[(frame.task == task) & (frame.metric == metric)]
        assert set(sel.encoder) == {"mlvicx", "vicreg", "random"}
        assert sel.value.dropna().between(0, 1).all() and sel.value.notna().any()
    imagenet = frame[frame.encoder == "imagenet"]
    assert len(imagenet) == 1 and imagenet.note.iloc[0].startswith("skipped: ImageNet weights")
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert "gradcam-mlvicx.png" in figures and "umap-vicreg-bar.png" in figures
    assert "## linear probe: auroc" in (out / "results.md").read_text()
    # the cache was used: one file per encoder
    assert len(list((tmp_path / "cache").glob("trunk-*.npz"))) == 3


def test_evaluate_main_bad_inputs(tmp_path):
    with pytest.raises(SystemExit, match="nothing to evaluate"):
        evaluate_main(_parse(["--dataset", "phantom", "--out", str(tmp_path)]))
    with pytest.raises(SystemExit, match="expected NAME=VALUE"):
        evaluate_main(_parse(["--checkpoint", "x.pt", "--dataset", "phantom", "--out", "o"]))
    with pytest.raises(SystemExit, match="cannot import no_such_module:X"):
        evaluate_main(_parse(["--baseline", "random", "--dataset", "no_such_module:X",
                              "--out", str(tmp_path)]))


def test_run_evaluation_with_boxes_and_metadata(tmp_path):
    """NIH-like data: boxes instead of masks, a metadata table to colour the UMAP by."""
    from eval_fakes import BlobCXR
    from mlvicx_core.evaluation.runner import EvalSettings, run_evaluation

    ds = BlobCXR(n=30, image_size=32, masks=False)
    ds.metadata = pd.DataFrame({"View Position": ["PA", "AP", "PA"] * 10})
    settings = EvalSettings(fractions=(1.0,), tasks=("probe", "gradcam", "umap", "segmentation"),
                            n_boot=20, gradcam_tap="layer2", gradcam_images=4,
                            colour_by=("View Position",))
    run_evaluation({"m": tiny_model()}, ds, tmp_path, settings)
    frame = pd.read_csv(tmp_path / "results.csv")
    cam = frame[(frame.task == "Grad-CAM layer2") & (frame.metric == "pointing_game")]
    assert (cam.n > 0).all()  # regions came from the boxes
    seg = frame[frame.task == "segmentation"]
    assert seg.note.iloc[0] == "skipped: the dataset has no masks"
    assert (tmp_path / "figures" / "umap-m-View_Position.png").is_file()
    with pytest.raises(ValueError, match="colour_by='Sex'"):
        run_evaluation({"m": tiny_model()}, ds, tmp_path,
                       EvalSettings(fractions=(1.0,), tasks=("umap",), colour_by=("Sex",)))
    with pytest.raises(ValueError, match="add the 'probe' task"):
        run_evaluation({"m": tiny_model()}, ds, tmp_path, EvalSettings(tasks=("gradcam",)))

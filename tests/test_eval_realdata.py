"""Short end-to-end evaluations on the kit's own datasets: the phantom and the real NIH images.

Both go through ``evaluate_main`` exactly as a user would. They skip (with the reason) when the
dataset module is not importable or, for NIH, when the real images are not on this machine
(MLVICX_DATA_DIR, falling back to ../shared/data next to the repository).
"""
import importlib
import os
from pathlib import Path

import pandas as pd
import pytest

from eval_fakes import parse_evaluate as _parse, tiny_model
from mlvicx_core.evaluation.checkpoint import save_encoder
from mlvicx_core.evaluation.cli import DATASETS, evaluate_main

REPO = Path(__file__).resolve().parents[1]


def _require(alias: str):
    module, _, attr = DATASETS[alias].partition(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as err:
        pytest.skip(f"{module} is not available ({err})")
    if not hasattr(mod, attr):
        pytest.skip(f"{module} has no {attr}: align DATASETS[{alias!r}] in evaluation/cli.py")


def _data_dir() -> Path:
    return Path(os.environ.get("MLVICX_DATA_DIR", REPO.parent / "shared" / "data"))


@pytest.mark.slow
def test_evaluate_on_the_phantom(tmp_path):
    _require("phantom")
    save_encoder(tiny_model(), tmp_path / "m.pt")
    args = _parse(["--checkpoint", f"mlvicx={tmp_path / 'm.pt'}", "--baseline", "random",
                   "--dataset", "phantom", "--dataset-arg", "length=80", "--dataset-arg", "seed=0",
                   "--image-size", "64", "--fractions", "0.1", "1.0", "--tasks", "probe", "knn",
                   "gradcam", "--n-boot", "50", "--out", str(tmp_path / "out")])
    assert evaluate_main(args) == 0
    frame = pd.read_csv(tmp_path / "out" / "results.csv")
    means = frame[(frame.task == "linear probe") & (frame.finding == "mean")]
    assert set(means.encoder) == {"mlvicx", "random"} and means.value.between(0, 1).all()


@pytest.mark.slow
@pytest.mark.realdata
def test_evaluate_on_real_nih_images(tmp_path):
    nih = _data_dir() / "nih"
    if not (nih / "images-64px").is_dir():
        pytest.skip(f"real NIH images not found under {nih} (set MLVICX_DATA_DIR)")
    _require("nih")
    save_encoder(tiny_model(), tmp_path / "m.pt")
    args = _parse(["--checkpoint", f"mlvicx={tmp_path / 'm.pt'}", "--dataset", "nih",
                   "--dataset-arg", f"root={nih}", "--image-size", "64", "--fractions", "1.0",
                   "--tasks", "probe", "umap", "--colour-by", "Patient Gender", "View Position",
                   "--n-boot", "20", "--out", str(tmp_path / "out")])
    assert evaluate_main(args) == 0
    frame = pd.read_csv(tmp_path / "out" / "results.csv")
    probe = frame[frame.task == "linear probe"]
    assert len(probe) == 15  # 14 findings + mean; rare ones may be undefined, never 0
    assert not (probe.value == 0).any()
    assert (tmp_path / "out" / "figures" / "umap-mlvicx-Patient_Gender.png").is_file()

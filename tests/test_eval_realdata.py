"""Short end-to-end evaluations on the kit's own datasets: the phantom and the real NIH images.

Both go through ``evaluate_main`` exactly as a user would. The NIH one skips (with the reason)
when the real images are not on this machine
(MLVICX_DATA_DIR, falling back to ../shared/data next to the repository).
"""
import os
from pathlib import Path

import pandas as pd
import pytest
from eval_fakes import tiny_model

from mlvicx_core.checkpoints import save_model
from mlvicx_core.cli import main

REPO = Path(__file__).resolve().parents[1]


def _data_dir() -> Path:
    return Path(os.environ.get("MLVICX_DATA_DIR", REPO.parent / "shared" / "data"))


@pytest.mark.slow
def test_evaluate_on_the_phantom(tmp_path):
    save_model(tiny_model(), tmp_path / "m.pt")
    assert main(["evaluate", "--checkpoint", f"mlvicx={tmp_path / 'm.pt'}", "--baseline", "random",
                 "--set", "data.dataset=synthetic", "--set", "eval.split_sizes=[56,8,16]",
                 "--set", "data.stored_size=64", "--set", "eval.fractions=[0.1,1.0]",
                 "--set", "eval.tasks=[probe,knn,gradcam]", "--set", "eval.n_boot=50",
                 "--out", str(tmp_path / "out")]) == 0
    frame = pd.read_csv(tmp_path / "out" / "results.csv")
    means = frame[(frame.task == "probe") & (frame.finding == "mean")]
    assert set(means.encoder) == {"mlvicx", "random"} and means.value.between(0, 1).all()


@pytest.mark.slow
@pytest.mark.realdata
def test_evaluate_on_real_nih_images(tmp_path):
    nih = _data_dir() / "nih"
    if not (nih / "images-64px").is_dir():
        pytest.skip(f"real NIH images not found under {nih} (set MLVICX_DATA_DIR)")
    save_model(tiny_model(), tmp_path / "m.pt")
    assert main(["evaluate", "--checkpoint", f"mlvicx={tmp_path / 'm.pt'}",
                 "--set", "data.dataset=nih", "--set", f"data.root={nih / 'images-64px'}",
                 "--set", "data.stored_size=64", "--set", "eval.fractions=[1.0]",
                 "--set", "eval.tasks=[probe,umap]",
                 "--set", "eval.colour_by=[sex,view]", "--set", "eval.n_boot=20",
                 "--out", str(tmp_path / "out")]) == 0
    frame = pd.read_csv(tmp_path / "out" / "results.csv")
    probe = frame[frame.task == "probe"]
    assert len(probe) == 15  # 14 findings + mean; rare ones may be undefined, never 0
    assert not (probe.value == 0).any()
    assert (tmp_path / "out" / "figures" / "umap-mlvicx-sex.png").is_file()

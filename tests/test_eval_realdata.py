"""Short end-to-end evaluations on the kit's own datasets: the phantom and the real NIH images.

Both go through ``evaluate_main`` exactly as a user would. The NIH one skips (with the reason)
when the real images are not on this machine
(MLVICX_DATA_DIR, falling back to ../shared/data next to the repository).
"""
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from eval_fakes import tiny_model
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from mlvicx_core.checkpoints import save_model
from mlvicx_core.cli import main

REPO = Path(__file__).resolve().parents[1]


def _data_dir() -> Path:
    return Path(os.environ.get("MLVICX_DATA_DIR", REPO.parent / "shared" / "data"))


PHANTOM = ["data.dataset=synthetic", "eval.split_sizes=[56,8,16]", "data.stored_size=64",
           "eval.fractions=[0.1,1.0]", "eval.tasks=[probe,knn,gradcam]", "eval.n_boot=50"]


def probe_auroc_by_hand(model, C: float) -> float:
    """The full-label probe's mean test AUROC written plainly: the CLI's splits (preset
    ``teaching`` with :data:`PHANTOM`), features = torchvision's ResNet forward (the kit's
    backbone, ``fc`` removed: pooled layer4, no gates) on ImageNet-normalised images, sklearn
    standardisation and ``LogisticRegression(C)`` per finding on all training images,
    ``roc_auc_score`` on test, averaged over the findings with both classes there."""
    from mlvicx_core.config import load_config
    from mlvicx_core.data.registry import evaluation_splits

    config = load_config("teaching", PHANTOM)
    splits = evaluation_splits(config.data, config.eval.split_sizes)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    feats, labels = {}, {}
    for part in ("train", "test"):
        ds = splits[part]
        images = torch.stack([ds[i]["image"] for i in range(len(ds))]).expand(-1, 3, -1, -1)
        with torch.no_grad():
            feats[part] = model.eval().backbone((images - mean) / std).double().numpy()
        labels[part] = np.stack([ds[i]["labels"].numpy() for i in range(len(ds))])
    scaler = StandardScaler().fit(feats["train"])
    xtr, xte = scaler.transform(feats["train"]), scaler.transform(feats["test"])
    aurocs = []
    for j in range(labels["train"].shape[1]):
        ytr, yte = labels["train"][:, j], labels["test"][:, j]
        if len(np.unique(yte)) < 2:
            continue
        clf = LogisticRegression(C=C, max_iter=10_000).fit(xtr, ytr)
        aurocs.append(roc_auc_score(yte, clf.decision_function(xte)))
    return float(np.mean(aurocs))


@pytest.mark.slow
def test_evaluate_on_the_phantom(tmp_path):
    """The mlvicx encoder's full-label probe AUROC equals :func:`probe_auroc_by_hand` at the C the
    kit chose on val (its note), within 0.005 (lbfgs here, Newton-Cholesky in the kit)."""
    save_model(tiny_model(), tmp_path / "m.pt")
    argv = ["evaluate", "--checkpoint", f"mlvicx={tmp_path / 'm.pt'}", "--baseline", "random"]
    for s in PHANTOM:
        argv += ["--set", s]
    assert main(argv + ["--out", str(tmp_path / "out")]) == 0
    frame = pd.read_csv(tmp_path / "out" / "results.csv")
    means = frame[(frame.task == "probe") & (frame.finding == "mean")]
    assert set(means.encoder) == {"mlvicx", "random"} and means.value.between(0, 1).all()
    full = means[(means.encoder == "mlvicx") & (means.fraction == 1.0)]
    assert len(full) == 1 and full.n.iloc[0] == 16
    C = float(re.match(r"C=([^;]+); 56 training images$", full.note.iloc[0]).group(1))
    assert full.value.iloc[0] == pytest.approx(probe_auroc_by_hand(tiny_model(), C), abs=0.005)


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

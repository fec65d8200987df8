"""Full fine-tuning: masked BCE, selection of the best validation epoch, the input trunk untouched."""
import math

import numpy as np
import pytest
import torch

from eval_fakes import BlobCXR, tiny_model
from mlvicx_core.evaluation.finetune import finetune, masked_bce, predict
from mlvicx_core.evaluation.metrics import nanmean_or_nan, per_finding_auroc
from mlvicx_core.evaluation.trunk import Trunk


def test_masked_bce_ignores_unknown_labels():
    logits = torch.tensor([[0.0, 2.0], [1.0, -1.0]])
    labels = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
    # known: (0 -> y 1), (1 -> y 0), (-1 -> y 1): softplus(-0) + softplus(1) + softplus(1), / 3
    expected = (math.log(2) + 2 * math.log1p(math.e)) / 3
    assert masked_bce(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    assert masked_bce(logits, torch.full((2, 2), float("nan"))).item() == 0.0


def test_finetune_keeps_the_best_validation_epoch():
    train, val = BlobCXR(n=8, seed=0), BlobCXR(n=12, seed=1)
    trunk = Trunk(tiny_model())
    w0 = trunk.backbone.conv1.weight.clone()
    res = finetune(trunk, 2, train, val, epochs=3, lr=1e-3, batch_size=8, patience=5)
    assert len(res.history) == 3
    aurocs = [h["val_auroc"] for h in res.history]
    assert res.best_epoch == int(np.argmax(aurocs))
    scores, labels = predict(res.model, val)
    assert nanmean_or_nan(per_finding_auroc(labels, scores)) == pytest.approx(max(aurocs), abs=1e-6)
    torch.testing.assert_close(trunk.backbone.conv1.weight, w0)  # the argument is not modified
    assert not torch.equal(res.model.trunk.backbone.conv1.weight, w0)  # the copy was trained

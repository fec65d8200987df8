"""Full fine-tuning of the trunk with a linear multi-label head (AdamW, cosine schedule).

Loss: binary cross-entropy per finding, averaged over the known labels (NaN labels are masked).
The learning rate follows a per-step cosine decay from ``lr`` to 0. After every epoch the model is
scored on the *validation* split (mean AUROC, or minus the validation loss when no finding has both
classes there) and the best epoch's weights are kept (model selection on validation, never test);
training stops early after ``patience`` epochs without improvement. No test-time augmentation.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from .embeddings import check_images, loader, resolve_device
from .metrics import nanmean_or_nan, per_finding_auroc
from .trunk import Trunk


class Classifier(nn.Module):
    """Trunk + ``nn.Linear(feature_dim, K)``: images (B, 1, S, S) -> logits (B, K)."""

    def __init__(self, trunk: Trunk, n_findings: int, head: nn.Linear | None = None) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head if head is not None else nn.Linear(trunk.feature_dim, n_findings)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))

    @classmethod
    def with_probe(cls, model: nn.Module, probe, keep_gates: bool = False) -> Classifier:
        """The frozen trunk of ``model`` (a copy, gates kept when ``keep_gates``) with a fitted
        :class:`~.probe.LinearProbe` as head, in eval mode: the classifier Grad-CAM explains."""
        head = probe.as_torch_head()
        return cls(Trunk(model, keep_gates=keep_gates), head.out_features, head=head).eval()


def masked_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean BCE-with-logits over the known (non-NaN) labels; 0 when none is known."""
    known = ~torch.isnan(labels)
    if not known.any():
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[known], labels[known])


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, batch_size: int = 64,
            device: str | torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores (N, K) logits, labels (N, K)) of ``model`` over ``dataset`` in eval mode."""
    dev = resolve_device(device)
    model = model.to(dev).eval()
    scores, labels = [], []
    for batch in loader(dataset, batch_size):
        check_images(batch["image"], type(dataset).__name__)
        scores.append(model(batch["image"].to(dev)).float().cpu().numpy())
        labels.append(batch["labels"].numpy())
    return np.concatenate(scores), np.concatenate(labels)


@dataclass
class FinetuneResult:
    model: Classifier  # with the best validation epoch's weights loaded
    best_epoch: int
    history: list[dict] = field(default_factory=list)  # per epoch: train_loss, val_loss, val_auroc


def finetune(trunk: Trunk, n_findings: int, train: Dataset, val: Dataset, *, epochs: int = 10,
             lr: float = 1e-4, weight_decay: float = 1e-4, batch_size: int = 32, patience: int = 3,
             device: str | torch.device | None = None, seed: int = 0) -> FinetuneResult:
    """Fine-tune ``trunk`` (a copy: the argument is not modified) and a new head on ``train``."""
    if epochs < 1:
        raise ValueError(f"epochs={epochs}: expected >= 1")
    torch.manual_seed(seed)
    dev = resolve_device(device)
    model = Classifier(copy.deepcopy(trunk), n_findings).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    train_loader = loader(train, batch_size, shuffle=True, seed=seed)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * len(train_loader))
    best_state, best_score, best_epoch, since_best = None, -np.inf, -1, 0
    history = []
    for epoch in range(epochs):
        model.train()
        losses = []
        for batch in train_loader:
            check_images(batch["image"], type(train).__name__)
            logits = model(batch["image"].to(dev))
            loss = masked_bce(logits, batch["labels"].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        scores, labels = predict(model, val, batch_size, dev)
        val_auroc = nanmean_or_nan(per_finding_auroc(labels, scores))
        val_loss = masked_bce(torch.as_tensor(scores), torch.as_tensor(labels)).item()
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)),
                        "val_loss": val_loss, "val_auroc": val_auroc})
        score = val_auroc if not np.isnan(val_auroc) else -val_loss
        if score > best_score:
            best_state = copy.deepcopy(model.state_dict())
            best_score, best_epoch, since_best = score, epoch, 0
        else:
            since_best += 1
            if since_best >= patience:
                break
    model.load_state_dict(best_state)
    return FinetuneResult(model.eval(), best_epoch, history)

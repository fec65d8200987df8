"""Evaluation and inspection of pretrained encoders.

Modules: ``pipeline`` (the one evaluation: every read-out, one row schema), ``report`` (CSV +
Markdown), ``baselines`` (random / ImageNet reference encoders), ``trunk`` (the transferable trunk),
``embeddings`` (cached feature extraction), ``metrics`` (AUROC + bootstrap CIs, Dice), ``probe``
(linear probe), ``knn``, ``finetune``, ``segmentation`` (U-Net on the trunk), ``gradcam``,
``localisation`` (pointing game, energy inside), ``tap_localisation`` (Grad-CAM at every tap),
``umap_view``. Splits and label fractions are ``mlvicx_core.data.splits``; loading a checkpoint is
``mlvicx_core.load_model``. Heavy optional imports (umap, ipywidgets, grad-cam) happen inside the
functions that need them.
"""
from .baselines import BASELINES, BaselineUnavailable, reference_encoder
from .embeddings import Features, extract_features
from .knn import knn_scores, select_k
from .localisation import boxes_to_mask, energy_inside, localisation_scores, pointing_hit
from .metrics import AurocResult, auroc, bootstrap_auroc, dice, per_finding_auroc
from .pipeline import evaluate, mean_auroc
from .probe import LinearProbe, fit_linear_probe
from .report import ROW_COLUMNS, read_results, write_results
from .trunk import Trunk

__all__ = [
    "BASELINES", "ROW_COLUMNS", "AurocResult", "BaselineUnavailable", "Features",
    "LinearProbe", "Trunk", "auroc", "bootstrap_auroc", "boxes_to_mask", "dice", "energy_inside",
    "evaluate", "extract_features", "fit_linear_probe", "knn_scores", "localisation_scores",
    "mean_auroc", "per_finding_auroc", "pointing_hit", "read_results", "reference_encoder",
    "select_k", "write_results",
]

"""Evaluation and inspection of pretrained encoders.

Modules: ``checkpoint`` (load_encoder, baselines), ``trunk`` (the transferable trunk),
``embeddings`` (cached feature extraction), ``splits`` (patient splits, label fractions),
``metrics`` (AUROC + bootstrap CIs, Dice), ``localisation`` (pointing game, energy inside),
``probe`` (linear probe), ``knn``, ``finetune``, ``segmentation`` (U-Net on the trunk),
``gradcam``, ``umap_view``, ``report`` (CSV + Markdown), ``runner`` and ``cli`` (``mlvicx evaluate``).
Heavy optional imports (umap, ipywidgets, grad-cam) happen inside the modules that need them.
"""
from .checkpoint import BaselineUnavailable, load_encoder, reference_encoder, save_encoder
from .embeddings import Features, extract_features
from .knn import knn_scores, select_k
from .localisation import boxes_to_mask, energy_inside, localisation_scores, pointing_hit
from .metrics import AurocResult, auroc, bootstrap_auroc, dice, per_finding_auroc
from .probe import LinearProbe, fit_linear_probe
from .splits import label_fraction, patient_split
from .trunk import Trunk

__all__ = [
    "AurocResult", "BaselineUnavailable", "Features", "LinearProbe", "Trunk", "auroc",
    "bootstrap_auroc", "boxes_to_mask", "dice", "energy_inside", "extract_features",
    "fit_linear_probe", "knn_scores", "label_fraction", "load_encoder", "localisation_scores",
    "patient_split", "per_finding_auroc", "pointing_hit", "reference_encoder", "save_encoder",
    "select_k",
]

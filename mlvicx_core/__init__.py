"""mlvicx_core: the reference kit for MLVICX self-supervised learning on chest X-rays.

The package root holds the method and its configuration: the network (``model``, ``bottleneck``,
``multilevel``), the loss terms (``loss``), the configuration tree and presets (``config``,
``presets/``), the named variants (``variants.yaml``), checkpoint files (``checkpoints``) and the
command line (``cli``). Around it: ``methods`` (the method registry: VICReg, MLVICX, Barlow Twins),
``data`` (datasets, splits, views, the cache), ``train`` (the pretraining engine), ``evaluation``
(read-outs and inspection), ``experiments`` (the results experiment, the notebooks' sweeps), ``viz``
(every figure and notebook widget). CONTRIBUTING.md says where new code goes.
"""
from .checkpoints import load_model, save_model
from .config import (LEVELS, VARIANTS, AugConfig, Config, DataConfig, EvalConfig, LoopConfig,
                     LossConfig, ModelConfig, OptimConfig, apply_variant, get_preset, load_config,
                     preset_names)
from .loss import covariance, invariance, mlvicx_loss, variance, vicreg_loss
from .model import MLVICX, Embeddings

__version__ = "0.2.0"

__all__ = [
    "LEVELS", "VARIANTS", "AugConfig", "Config", "DataConfig", "EvalConfig", "Embeddings",
    "LoopConfig", "LossConfig", "MLVICX", "ModelConfig", "OptimConfig", "apply_variant",
    "covariance", "get_preset", "invariance", "load_config", "load_model", "mlvicx_loss",
    "preset_names", "save_model", "variance", "vicreg_loss",
]

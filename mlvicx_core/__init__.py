"""mlvicx_core: the reference kit for MLVICX self-supervised learning on chest X-rays."""
from .config import LEVELS, PRESETS, ModelConfig, get_preset
from .loss import covariance, invariance, mlvicx_loss, variance, vicreg_loss
from .model import MLVICX, Embeddings

__version__ = "0.1.0"

__all__ = [
    "LEVELS",
    "PRESETS",
    "MLVICX",
    "Embeddings",
    "ModelConfig",
    "covariance",
    "get_preset",
    "invariance",
    "mlvicx_loss",
    "variance",
    "vicreg_loss",
]

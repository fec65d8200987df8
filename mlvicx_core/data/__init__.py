"""Chest X-ray data: the dataset contract, the synthetic default and the real-format loaders."""
from .base import CXRDataset, resize_image

__all__ = ["CXRDataset", "resize_image"]

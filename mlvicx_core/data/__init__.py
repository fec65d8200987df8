"""Chest X-ray data: the dataset contract, the synthetic default and the real-format loaders."""
from .base import CXRDataset, resize_image
from .phantom import render, sample_grid
from .phantom_dataset import SyntheticCXR
from .phantom_findings import FINDINGS

__all__ = ["CXRDataset", "FINDINGS", "SyntheticCXR", "render", "resize_image", "sample_grid"]

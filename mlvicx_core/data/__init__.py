"""Chest X-ray data: the dataset contract, the synthetic default and the real-format loaders."""
from .augment import BatchTwoViews
from .base import CXRDataset, resize_image
from .cache import CachedDataset
from .dicom import read_dicom
from .folder import ImageFolderDataset
from .imageio import ImageReadError, read_image
from .medmnist import MedMNISTChest
from .nih import NIH_FINDINGS, NIHChestXray14
from .phantom import render, sample_grid
from .phantom_dataset import SyntheticCXR
from .phantom_findings import FINDINGS
from .paths import default_data_root, shared_data_dir
from .rle import rle_decode, rle_encode
from .rsna import RSNAPneumonia
from .siim import SIIMPneumothorax
from .splits import patient_split
from .vindr import VINDR_FINDINGS, VinDrCXR

__all__ = [
    "BatchTwoViews", "CachedDataset",
    "CXRDataset", "FINDINGS", "ImageFolderDataset", "ImageReadError", "MedMNISTChest", "NIHChestXray14",
    "NIH_FINDINGS", "RSNAPneumonia", "SIIMPneumothorax", "VINDR_FINDINGS", "VinDrCXR",
    "default_data_root", "patient_split", "read_dicom", "read_image", "resize_image",
    "render", "rle_decode", "rle_encode", "sample_grid", "shared_data_dir", "SyntheticCXR",
]

"""The pretraining data pipeline: which dataset a config names, and the two-view augmenter.

Datasets are looked up in :data:`DATASETS` by ``config.data.dataset``; each entry is a builder
``(TrainConfig) -> torch.utils.data.Dataset`` returning contract samples (``mlvicx_core.data.base``).
Add one with :func:`register_dataset`. Built in:

- ``synthetic``: ``mlvicx_core.data.phantom.SyntheticCXR`` (no files needed; ``data.length`` images,
  ``data.seed``).
- ``folder``: ``mlvicx_core.data.folder.ImageFolderDataset`` over ``data.root`` (unlabelled).
- ``nih``: ``mlvicx_core.data.nih.NIHChestXray14`` over ``data.root``, training split only (the
  official ``train_val_list.txt`` when it lies in ``data.root``, otherwise a patient-disjoint split
  seeded by ``data.seed``); the test split is never seen in pretraining.
- ``pneumoniamnist``, ``chestmnist``: ``mlvicx_core.data.medmnist.MedMNISTChest`` training split,
  the ``.npz`` in ``data.root``.

The DataLoader yields un-augmented batches; the trainer makes the two views on the device with a batch
augmenter ``augment(images, generator=g) -> (view_a, view_b)`` (images (B, 1, H, W) in [0, 1], views
(B, 1, S, S)), by default ``mlvicx_core.data.augment.BatchTwoViews(S)`` with ``S = model.image_size``.
Imports of the data modules happen inside the builders so the engine does not depend on them.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .runconfig import ConfigError, TrainConfig

Augmenter = Callable[..., tuple[torch.Tensor, torch.Tensor]]
DATASETS: dict[str, Callable[[TrainConfig], Dataset]] = {}


def register_dataset(name: str, builder: Callable[[TrainConfig], Dataset]) -> None:
    """Make ``data.dataset=<name>`` build ``builder(config)``."""
    DATASETS[name] = builder


def stored_size(config: TrainConfig) -> int:
    """Side of the images the dataset returns (before augmentation)."""
    return config.data.image_size or config.model.image_size


def _synthetic(config: TrainConfig) -> Dataset:
    from ..data.phantom_dataset import SyntheticCXR

    return SyntheticCXR(length=config.data.length, image_size=stored_size(config),
                        seed=config.data.seed)


def require_root(config: TrainConfig, expected: str) -> Path:
    """``data.root`` as a Path; a clear error if unset or missing, saying what should be there."""
    if config.data.root is None:
        raise ConfigError(
            f"data.dataset={config.data.dataset!r} needs data.root: expected {expected}; "
            "set it with --set data.root=/path/to/data"
        )
    root = Path(config.data.root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"data.root={str(root)!r} does not exist or is not a folder: expected "
                          f"{expected}")
    return root


def _folder(config: TrainConfig) -> Dataset:
    from ..data.files import RADIOGRAPH_SUFFIXES
    from ..data.folder import ImageFolderDataset

    expected = f"a folder of radiographs ({', '.join(RADIOGRAPH_SUFFIXES)}), searched recursively"
    root = require_root(config, expected)
    try:
        return ImageFolderDataset(root, image_size=stored_size(config),
                                  on_error=config.data.on_error)
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from err


def _nih(config: TrainConfig) -> Dataset:
    from ..data.nih import NIHChestXray14

    root = require_root(config, "NIH ChestX-ray14 PNGs (any subset), optionally with "
                        "Data_Entry_2017*.csv and train_val_list.txt/test_list.txt")
    lists = root if (root / "train_val_list.txt").is_file() else None
    try:
        return NIHChestXray14(root, split="train", split_lists=lists, seed=config.data.seed,
                              image_size=stored_size(config), on_error=config.data.on_error)
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from err


def _medmnist(flag: str) -> Callable[[TrainConfig], Dataset]:
    def build(config: TrainConfig) -> Dataset:
        from ..data.medmnist import MedMNISTChest

        root = require_root(config, f"{flag}.npz (MedMNIST)")
        try:
            return MedMNISTChest(flag, root=root, split="train", image_size=stored_size(config),
                                 on_error=config.data.on_error)
        except FileNotFoundError as err:
            raise ConfigError(str(err)) from err

    return build


register_dataset("synthetic", _synthetic)
register_dataset("folder", _folder)
register_dataset("nih", _nih)
register_dataset("pneumoniamnist", _medmnist("pneumoniamnist"))
register_dataset("chestmnist", _medmnist("chestmnist"))


def build_pretrain_dataset(config: TrainConfig) -> Dataset:
    name = config.data.dataset
    if name not in DATASETS:
        raise ConfigError(
            f"data.dataset={name!r} is not registered: expected one of {sorted(DATASETS)} "
            "(add one with mlvicx_core.train.pipeline.register_dataset)"
        )
    return DATASETS[name](config)


def build_augment(config: TrainConfig) -> Augmenter:
    """The default batch two-view augmenter at ``model.image_size``."""
    from ..data.augment import BatchTwoViews

    return BatchTwoViews(config.model.image_size)


def build_pretrain_data(config: TrainConfig) -> tuple[Dataset, Augmenter]:
    """``(dataset, augment)`` for :func:`mlvicx_core.train.trainer.pretrain`."""
    return build_pretrain_dataset(config), build_augment(config)

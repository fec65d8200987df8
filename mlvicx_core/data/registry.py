"""The one dataset registry: a name -> a contract dataset, for every command of the kit.

Pretraining (``data.*`` keys), ``mlvicx evaluate``, the notebooks and the results experiment all call
:func:`build_dataset` (or :func:`dataset_from_config`), so ``nih`` or ``synthetic`` means the same
images, split the same way, everywhere.

    build_dataset(name, *, root=None, split="train", image_size=64, length=None, seed=0,
                  fractions=(0.7, 0.1, 0.2), on_error="raise", labelled=True, cache_dir=None)

``split`` is ``"train"``, ``"val"``, ``"test"`` or ``"all"``: the dataset's official split where it
has one (MedMNIST; NIH's ``train_val_list.txt``/``test_list.txt`` when they lie in ``root``, with
val carved from train_val), otherwise the patient-disjoint rule of :mod:`mlvicx_core.data.splits`
with ``fractions`` and ``seed``. ``length`` caps the images: the synthetic data renders that many;
every other dataset keeps a seeded subset (``seed``), in dataset order. ``labelled=False`` hides the
labels of the synthetic data (NaN), as self-supervised pretraining should see them. ``cache_dir``
(``data.cache`` on: ``data.cache_dir``) serves every dataset but the synthetic one from a
decode-once cache (:class:`~mlvicx_core.data.cache.CachedDataset`, entry ``<cache_dir>/<name>/
<split>/<image_size>px``): the files are decoded and resized once, later epochs and evaluations
read memory-mapped uint8 pixels (within 0.5/255 of the decoded ones).

Built in:

========================  ===================================================================
``synthetic``             the embedded phantom (no files); its splits are patient-disjoint by
                          construction; ``length`` required (default 2048)
``folder``                every radiograph below ``root`` (PNG, JPEG, TIFF, DICOM), unlabelled:
                          pretraining data only, so ``train`` and ``all`` are every file
``nih``                   NIH ChestX-ray14 PNGs below ``root`` (any subset), labels from the NIH
                          table in ``root``/its ``../labels`` or the copy in torchxrayvision
``nih-google2019``        the same images with the Google 2019 expert labels (4 findings)
``pneumoniamnist``,       MedMNIST ``<flag>.npz`` in ``root`` (official splits)
``chestmnist``
``rsna``, ``siim``,       the Kaggle layouts (``data/README.md``)
``vindr``
========================  ===================================================================

Adding a dataset is one :func:`register_dataset` call (a builder taking the keyword arguments above).
A name of the form ``package.module:callable`` (e.g. ``--set data.dataset=mypkg.data:make``) is
imported and called with those keyword arguments too, without registering it; a builder for a
dataset without an official split can use :func:`split_subset`.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base import CXRDataset
from .imageio import ImageReadError
from .subset import seeded_subset

SPLIT_NAMES = ("train", "val", "test", "all")


class DatasetError(ValueError):
    """A dataset that cannot be built as asked (the message names the key or path)."""


Builder = Callable[..., CXRDataset]
DATASETS: dict[str, tuple[Builder, str]] = {}


def register_dataset(name: str, builder: Builder, needs: str = "") -> None:
    """Register ``builder(**spec)`` under ``name``; ``needs`` says what ``root`` must hold
    (empty: no files needed)."""
    DATASETS[name] = (builder, needs)


def _root(name: str, root: str | Path | None, needs: str) -> Path:
    if root is None:
        raise DatasetError(f"data.dataset={name!r} needs data.root: expected {needs}; set it with "
                           "--set data.root=/path/to/data")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetError(f"data.root={str(path)!r} does not exist or is not a folder: expected "
                           f"{needs}")
    return path


def build_dataset(name: str, *, root: str | Path | None = None, split: str = "train",
                  image_size: int = 64, length: int | None = None, seed: int = 0,
                  fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
                  on_error: str = "raise", labelled: bool = True, in_memory: bool = False,
                  bit_depth: int | None = None, cache_dir: str | Path | None = None) -> CXRDataset:
    """The registered dataset ``name`` (see the module docstring); ``in_memory`` reads it once."""
    if split not in SPLIT_NAMES:
        raise DatasetError(f"split={split!r}: expected one of {SPLIT_NAMES}")
    builder, needs = _lookup(name)
    spec: dict[str, Any] = dict(split=split, image_size=int(image_size), length=length,
                                seed=int(seed), fractions=tuple(fractions), on_error=on_error,
                                labelled=labelled, bit_depth=bit_depth)
    spec["root"] = _root(name, root, needs) if needs else (
        Path(root).expanduser() if root is not None else None)
    try:
        dataset = builder(**spec)
    except (DatasetError, ImageReadError):
        raise
    except (FileNotFoundError, ValueError) as err:
        # a missing file, or a table or array that is not what the dataset expects (an empty
        # 'Finding Labels' cell, a wrong column): the message names the file, line or column
        raise DatasetError(f"data.dataset={name!r}: {err}") from err
    if cache_dir is not None and name != "synthetic":
        from .cache import CachedDataset

        dataset = CachedDataset(dataset, size=int(image_size), root=Path(cache_dir).expanduser(),
                                name=name.replace(":", "-"), split=split)
    if name != "synthetic":
        dataset = seeded_subset(dataset, length, seed, in_memory)
    elif in_memory:
        dataset = seeded_subset(dataset, None, seed, in_memory=True)
    return dataset


def _lookup(name: str) -> tuple[Builder, str]:
    if name in DATASETS:
        return DATASETS[name]
    module, sep, attr = name.partition(":")
    if sep and module and attr:
        import importlib

        try:
            return getattr(importlib.import_module(module), attr), ""
        except (ImportError, AttributeError) as err:
            raise DatasetError(f"data.dataset={name!r}: cannot import {attr} from {module} "
                               f"({err})") from None
    raise DatasetError(f"data.dataset={name!r} is not registered: expected one of "
                       f"{sorted(DATASETS)} or package.module:callable (add one with "
                       "mlvicx_core.data.registry.register_dataset)")


def split_subset(dataset: CXRDataset, split: str, fractions=(0.7, 0.1, 0.2), seed: int = 0):
    """``dataset`` restricted to ``split`` by the patient rule of :mod:`mlvicx_core.data.splits`
    (``"all"``: the dataset itself)."""
    from .splits import select_split
    from .subset import Subset

    if split == "all":
        return dataset
    return Subset(dataset, select_split(dataset.patient_ids, split, fractions, seed))


def dataset_from_config(data, split: str | None = None, length: int | None = -1,
                        labelled: bool = True, in_memory: bool = False) -> CXRDataset:
    """:func:`build_dataset` from a :class:`~mlvicx_core.config.DataConfig` (``split`` and ``length``
    default to ``data.split`` / ``data.length``); images are stored at ``data.stored_size`` or
    ``data.view_size``, from the cache when ``data.cache`` is on."""
    return build_dataset(data.dataset, root=data.root, split=split or data.split,
                         image_size=data.stored_size or data.view_size,
                         length=data.length if length == -1 else length, seed=data.seed,
                         fractions=data.split_fractions, on_error=data.on_error,
                         labelled=labelled, in_memory=in_memory, bit_depth=data.bit_depth,
                         cache_dir=data.cache_dir if data.cache else None)


#: Evaluation split sizes (train, val, test) of the synthetic data when ``eval.split_sizes`` is null.
SYNTHETIC_EVAL_SIZES = (1600, 200, 400)


def split_sizes(length: int, fractions=(0.7, 0.1, 0.2)) -> tuple[int, int, int]:
    """``length`` images shared out by the split fractions (``data.split_fractions``): train and val
    rounded, test the rest."""
    n_train, n_val = round(fractions[0] * length), round(fractions[1] * length)
    return n_train, n_val, length - n_train - n_val


def evaluation_splits(data, split_sizes=None, in_memory: bool = False) -> dict[str, CXRDataset]:
    """The labelled ``train`` / ``val`` / ``test`` splits every evaluation of ``data`` (a
    :class:`~mlvicx_core.config.DataConfig`) uses, whole images at ``data.stored_size`` when set (the
    stored size the views are cut from, which the online probe also reads), else at
    ``data.view_size`` (from the cache when ``data.cache`` is on). ``split_sizes`` (the
    ``eval.split_sizes`` key): images per split; null means all, and for the synthetic data
    :data:`SYNTHETIC_EVAL_SIZES`."""
    if split_sizes is None:
        split_sizes = SYNTHETIC_EVAL_SIZES if data.dataset == "synthetic" else (None, None, None)
    return {s: dataset_from_config(data, split=s, length=n, in_memory=in_memory)
            for s, n in zip(("train", "val", "test"), split_sizes)}


# -- the built-in entries ---------------------------------------------------------------------------
def _synthetic(*, split, image_size, length, seed, labelled, **_):
    from .phantom import check_size
    from .phantom_dataset import SyntheticCXR

    try:
        check_size(image_size)
    except ValueError as err:
        raise DatasetError(f"stored image size {image_size} (data.stored_size, else "
                           f"data.view_size): the synthetic radiographs are rendered at 64-512 px "
                           f"({err}); for smaller views keep data.stored_size >= 64 and lower "
                           "data.view_size") from None
    return SyntheticCXR(length=2048 if length is None else length, image_size=image_size,
                        seed=seed, split=None if split == "all" else split, labelled=labelled)


def _folder(*, root, split, image_size, on_error, bit_depth=None, **_):
    from .folder import ImageFolderDataset

    if split in ("val", "test"):
        raise DatasetError(f"data.dataset='folder' is unlabelled pretraining data: it has no "
                           f"{split!r} split to evaluate on")
    return ImageFolderDataset(root, image_size=image_size, on_error=on_error, bit_depth=bit_depth)


def _nih_labels(label_set: str) -> Builder:
    def build(*, root, split, image_size, seed, fractions, on_error, **_):
        return _nih(root=root, split=split, image_size=image_size, seed=seed, fractions=fractions,
                    on_error=on_error, label_set=label_set)

    return build


def _nih(*, root, split, image_size, seed, fractions, on_error, label_set="nih", **_):
    from .nih import NIHChestXray14

    tables = {}
    labels = root.parent / "labels"  # the layout of ../shared/data/nih: images-64px/ + labels/
    table = ("Data_Entry_2017_v2020.csv" if label_set == "nih"
             else "google2019_nih-chest-xray-labels.csv")
    for key, name in (("csv", table), ("bbox_csv", "BBox_List_2017.csv")):
        for cand in (root / name, root / f"{name}.gz", labels / name, labels / f"{name}.gz"):
            if cand.is_file():
                tables[key] = cand
                break
    lists = (root if (root / "train_val_list.txt").is_file() and label_set == "nih" else None)
    return NIHChestXray14(root, image_dir=root, split=split, split_lists=lists, seed=seed,
                          fractions=fractions, image_size=image_size, on_error=on_error,
                          label_set=label_set, **tables)


def _medmnist(flag: str) -> Builder:
    def build(*, root, split, image_size, on_error, **_):
        from .medmnist import MedMNISTChest

        if split == "all":
            raise DatasetError(f"{flag} has official train/val/test splits; split='all' is not "
                               "available")
        return MedMNISTChest(flag, root=root, split=split, image_size=image_size,
                             on_error=on_error)

    return build


def _kaggle(cls_path: str) -> Builder:
    def build(*, root, split, image_size, seed, fractions, on_error, **_):
        import importlib

        module, cls = cls_path.split(":")
        dataset_cls = getattr(importlib.import_module(module, __package__), cls)
        return dataset_cls(root, split=split, seed=seed, fractions=fractions,
                           image_size=image_size, on_error=on_error)

    return build


register_dataset("synthetic", _synthetic)
register_dataset("folder", _folder, "a folder of radiographs (PNG, JPEG, TIFF, DICOM), searched "
                 "recursively")
register_dataset("nih", _nih, "NIH ChestX-ray14 PNGs (any subset), optionally with "
                 "Data_Entry_2017*.csv and train_val_list.txt / test_list.txt")
register_dataset("nih-google2019", _nih_labels("google2019"), "NIH ChestX-ray14 PNGs with the "
                 "Google 2019 expert labels (google2019_nih-chest-xray-labels.csv, or the copy in "
                 "torchxrayvision): 4 findings, only the images the experts read")
register_dataset("pneumoniamnist", _medmnist("pneumoniamnist"), "pneumoniamnist.npz (MedMNIST)")
register_dataset("chestmnist", _medmnist("chestmnist"), "chestmnist.npz (MedMNIST)")
register_dataset("rsna", _kaggle(".rsna:RSNAPneumonia"), "stage_2_train_labels.csv and "
                 "stage_2_train_images/ (RSNA Pneumonia)")
register_dataset("siim", _kaggle(".siim:SIIMPneumothorax"), "train-rle.csv and "
                 "dicom-images-train/ (SIIM-ACR)")
register_dataset("vindr", _kaggle(".vindr:VinDrCXR"), "train.csv and train/ DICOMs (VinDr-CXR)")

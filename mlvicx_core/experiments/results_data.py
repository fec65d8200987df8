"""The three datasets of the results experiment, held in memory with patient-disjoint splits.

Each :class:`Benchmark` has labelled ``train`` / ``val`` / ``test`` splits (contract datasets, see
``mlvicx_core.data.base``), the pretraining set (unlabelled use of the first images of ``train``:
the test split is never seen in pretraining) and, where the data has regions, a localisation set:

- ``synthetic``: the embedded phantom (``SyntheticCXR``), whose ``split="train" | "val" | "test"``
  are patient-disjoint by construction; every finding has a pixel mask; localisation = ``test``.
- ``nih``: the real NIH ChestX-ray14 images at 64 px (``<data>/nih/images-64px``, 1,000 images of
  264 patients), labels from the NIH table, patient-disjoint 70/10/20 split seeded by 0
  (``NIHChestXray14(split=...)``); localisation = every image that carries an NIH expert box (9 of
  the 1,000; a probe trained on ``train`` is explained on them, so some were seen by the probe, never
  their boxes).
- ``pneumoniamnist``: ``<data>/medmnist/pneumoniamnist.npz`` (28 px, upsampled to 64 px), MedMNIST's
  official split (no patient ids: disjointness rests on MedMNIST's split); no regions.

Everything is rendered or read once into :class:`MemoryDataset` (float32 images), so the fifteen
encoders of a dataset do not re-render or re-read it.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.paths import shared_data_dir

SPLIT_NAMES = ("train", "val", "test")


class MemoryDataset(Dataset):
    """A contract dataset held in memory: images (N, 1, S, S), labels (N, K), ids, masks, boxes.

    Built with :meth:`from_dataset` from any contract dataset (optionally a subset of indices).
    """

    def __init__(self, images: torch.Tensor, labels: np.ndarray, patient_ids: np.ndarray,
                 findings: list[str], masks: torch.Tensor | None = None,
                 boxes: list[list] | None = None, source: str = "") -> None:
        if images.ndim != 4 or images.shape[1] != 1 or len(labels) != len(images):
            raise ValueError(f"images {tuple(images.shape)}, labels {np.shape(labels)}: expected "
                             "(N, 1, S, S) and (N, K)")
        self.images, self.findings, self.source = images, list(findings), source
        self.labels = np.asarray(labels, dtype=np.float32)
        self.patient_ids = np.asarray(patient_ids).astype(str)
        self.masks, self._boxes = masks, boxes
        self.has_masks = masks is not None
        self.image_size = int(images.shape[-1])

    @classmethod
    def from_dataset(cls, dataset, indices=None, source: str = "") -> MemoryDataset:
        idx = np.arange(len(dataset)) if indices is None else np.asarray(indices, dtype=np.int64)
        if idx.size == 0:
            raise ValueError(f"{source or type(dataset).__name__}: no images selected")
        samples = [dataset[int(i)] for i in idx]
        masks = (torch.stack([s["mask"] for s in samples])
                 if getattr(dataset, "has_masks", False) else None)
        boxes = [dataset.boxes(int(i)) for i in idx] if hasattr(dataset, "boxes") else None
        return cls(torch.stack([s["image"] for s in samples]).float(),
                   np.asarray(dataset.labels)[idx], np.asarray(dataset.patient_ids)[idx],
                   list(dataset.findings), masks, boxes, source or type(dataset).__name__)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        out = {"image": self.images[i], "labels": torch.from_numpy(self.labels[i]), "index": i,
               "patient_id": str(self.patient_ids[i])}
        if self.masks is not None:
            out["mask"] = self.masks[i]
        return out

    def boxes(self, i: int) -> list:
        return list(self._boxes[i]) if self._boxes is not None else []


@dataclass
class Benchmark:
    """One dataset of the experiment: splits, pretraining set, localisation set, config keys."""

    name: str
    title: str
    splits: dict[str, MemoryDataset]
    localisation: MemoryDataset | None
    data_config: dict[str, object]  # data.* keys naming the pretraining data in the run config
    notes: list[str] = field(default_factory=list)

    @property
    def findings(self) -> list[str]:
        return self.splits["train"].findings

    def pretrain_set(self, n: int) -> MemoryDataset:
        """The first ``n`` images of ``train`` in a fixed seeded order (labels unused)."""
        train = self.splits["train"]
        if n > len(train):
            raise ValueError(f"{self.name}: {n} pretraining images asked, train has {len(train)}")
        order = np.sort(np.random.default_rng(0).permutation(len(train))[:n])
        return MemoryDataset(train.images[order], train.labels[order], train.patient_ids[order],
                             train.findings, source=f"{train.source}[pretrain {n}]")


def data_dir() -> Path | None:
    """``$MLVICX_DATA_DIR``, else ``<repo>/../shared/data``; None when absent."""
    return shared_data_dir()


def synthetic_benchmark(sizes: dict[str, int], image_size: int = 64,
                        difficulty: str | float = "default") -> Benchmark:
    from ..data.phantom_dataset import SyntheticCXR

    splits = {s: MemoryDataset.from_dataset(
        SyntheticCXR(sizes[s], image_size, seed=0, split=s, difficulty=difficulty),
        source=f"SyntheticCXR(split={s!r})") for s in SPLIT_NAMES}
    return Benchmark("synthetic", "Synthetic phantom (embedded)", splits, splits["test"],
                     {"data.dataset": "synthetic-train", "data.length": sizes["train"],
                      "data.seed": 0})


def _nih_tables(root: Path) -> dict[str, Path | None]:
    labels = root.parent / "labels"
    csv, box = labels / "Data_Entry_2017_v2020.csv.gz", labels / "BBox_List_2017.csv.gz"
    return {"csv": csv if csv.is_file() else None, "bbox_csv": box if box.is_file() else None}


def nih_benchmark(root: Path, image_size: int = 64, max_images: int | None = None) -> Benchmark:
    """NIH 64 px images; ``max_images`` (smoke runs) keeps the first images of every split."""
    from ..data.nih import NIHChestXray14

    tables = _nih_tables(root)
    splits = {}
    with warnings.catch_warnings():  # "N of 112,120 listed images are not on disk": expected here
        warnings.filterwarnings("ignore", message=".* images listed in .* are not under")
        parts = {s: NIHChestXray14(root, split=s, seed=0, image_size=image_size, **tables)
                 for s in (*SPLIT_NAMES, "all")}
    for s in SPLIT_NAMES:
        ds = parts[s]
        idx = np.arange(min(len(ds), max_images)) if max_images else None
        splits[s] = MemoryDataset.from_dataset(ds, idx, source=f"NIHChestXray14(split={s!r})")
    everything = parts["all"]
    boxed = [i for i in range(len(everything)) if everything.boxes(i)]
    loc = MemoryDataset.from_dataset(everything, boxed, "NIH images with boxes") if boxed else None
    notes = [(f"NIH: {sum(len(v) for v in splits.values())} images of "
             f"{len(set().union(*(set(v.patient_ids) for v in splits.values())))} patients; "
             f"{len(boxed)} carry an expert box")]
    return Benchmark("nih", "NIH ChestX-ray14 (real, 64 px)", splits, loc,
                     {"data.dataset": "nih", "data.root": str(root), "data.seed": 0}, notes)


def pneumonia_benchmark(root: Path, image_size: int = 64, max_train: int | None = None,
                        max_eval: int | None = None) -> Benchmark:
    """PneumoniaMNIST upsampled to ``image_size``; ``max_train`` caps the (seeded) train subset."""
    from ..data.medmnist import MedMNISTChest

    splits = {}
    for s in SPLIT_NAMES:
        ds = MedMNISTChest("pneumoniamnist", root=root, split=s, image_size=image_size)
        cap = max_train if s == "train" else max_eval
        idx = (np.sort(np.random.default_rng(0).permutation(len(ds))[:cap])
               if cap and cap < len(ds) else None)
        splits[s] = MemoryDataset.from_dataset(ds, idx, source=f"PneumoniaMNIST(split={s!r})")
    return Benchmark("pneumoniamnist", "PneumoniaMNIST (real, 28 px upsampled to 64)", splits, None,
                     {"data.dataset": "pneumoniamnist", "data.root": str(root)})


def register_synthetic_train() -> None:
    """Register ``data.dataset=synthetic-train``: the phantom's train split (what the config of a
    synthetic pretraining run names, so ``mlvicx pretrain`` can rebuild its data)."""
    from ..train.pipeline import DATASETS, register_dataset, stored_size

    if "synthetic-train" in DATASETS:
        return

    def build(config):
        from ..data.phantom_dataset import SyntheticCXR

        return SyntheticCXR(config.data.length, stored_size(config), seed=config.data.seed,
                            split="train", labelled=False)

    register_dataset("synthetic-train", build)


def build_benchmarks(names: tuple[str, ...], sizes: dict[str, dict[str, int]],
                     image_size: int = 64, root: Path | None = None
                     ) -> tuple[list[Benchmark], list[str]]:
    """The requested benchmarks plus notes for those whose data is absent (skipped, not failed)."""
    root = root if root is not None else data_dir()
    out, notes = [], []
    for name in names:
        if name == "synthetic":
            out.append(synthetic_benchmark(sizes["synthetic"], image_size))
        elif name == "nih":
            folder = root / "nih" / "images-64px" if root else None
            if folder is None or not folder.is_dir():
                notes.append(f"nih skipped: {folder or 'MLVICX_DATA_DIR'} not found")
                continue
            out.append(nih_benchmark(folder, image_size, sizes["nih"].get("max_images")))
        elif name == "pneumoniamnist":
            folder = root / "medmnist" if root else None
            if folder is None or not (folder / "pneumoniamnist.npz").is_file():
                notes.append(f"pneumoniamnist skipped: {folder or 'MLVICX_DATA_DIR'}"
                             "/pneumoniamnist.npz not found")
                continue
            s = sizes["pneumoniamnist"]
            out.append(pneumonia_benchmark(folder, image_size, s.get("train"), s.get("eval")))
        else:
            raise ValueError(f"dataset {name!r}: expected synthetic, nih or pneumoniamnist")
    return out, notes

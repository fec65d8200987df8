"""The one dataset registry: every entry builds contract datasets, one split rule, one Subset."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from test_formats import _chestmnist, _rsna, _siim, _vindr

from mlvicx_core.data.base import check_contract
from mlvicx_core.data.paths import shared_data_dir
from mlvicx_core.data.registry import (DATASETS, DatasetError, build_dataset, dataset_from_config,
                                       evaluation_splits, register_dataset, split_subset)
from mlvicx_core.data.splits import patient_split
from mlvicx_core.data.subset import Subset
from mlvicx_core.config import load_config

SHARED = shared_data_dir()


def _folder(root):
    for i in range(3):
        Image.fromarray(np.full((20, 20), 40 * i, np.uint8)).save(root / f"img{i}.png")
    return root


def _root(name, tmp_path):
    """A root for every registered entry: written fixtures, or the shared real files."""
    writers = {"rsna": _rsna, "siim": _siim, "vindr": _vindr, "folder": _folder}
    if name in writers:
        return writers[name](tmp_path)
    if name == "chestmnist":
        _chestmnist(tmp_path)
        return tmp_path
    if name in ("nih", "nih-google2019"):
        if SHARED is None or not (SHARED / "nih" / "images-64px").is_dir():
            pytest.skip("shared NIH images absent (set MLVICX_DATA_DIR)")
        return SHARED / "nih" / "images-64px"
    if name == "pneumoniamnist":
        if SHARED is None or not (SHARED / "medmnist" / "pneumoniamnist.npz").is_file():
            pytest.skip("shared pneumoniamnist.npz absent (set MLVICX_DATA_DIR)")
        return SHARED / "medmnist"
    return None


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_registry_entry_follows_the_contract(name, tmp_path):
    root = _root(name, tmp_path)
    # the Kaggle fixtures hold 2-4 images: too few patients for three splits, so "all" there
    # the experts read 30 of the 1,000 shared NIH images: "all" there too
    splits = {"folder": ["train"], "rsna": ["all"], "siim": ["all"], "vindr": ["all"],
              "nih-google2019": ["all"]}.get(
        name, ["train", "val", "test"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fixtures list images that are not on disk, on purpose
        built = {s: build_dataset(name, root=root, split=s, image_size=32 if name != "synthetic"
                                  else 64, length=20) for s in splits}
    for s, ds in built.items():
        assert len(ds) > 0, (name, s)
        check_contract(ds, n=2)
        assert ds[0]["image"].shape[-1] == (64 if name == "synthetic" else 32)
    if len(splits) == 3:  # patient-disjoint, whatever rule the dataset uses
        pids = {s: set(map(str, ds.patient_ids)) for s, ds in built.items()}
        assert not (pids["train"] & pids["test"]) and not (pids["val"] & pids["test"])
        assert not (pids["train"] & pids["val"])
    # a Subset of any entry is still a contract dataset
    first = built[splits[0]]
    check_contract(Subset(first, [len(first) - 1]), n=1)


def test_check_contract_names_the_field():
    ds = build_dataset("synthetic", split="val", length=4)

    class Broken(Subset):
        def __getitem__(self, i):
            s = super().__getitem__(i)
            s["image"] = s["image"] * 2
            return s

    with pytest.raises(ValueError, match=r"\['image'\]: values outside \[0, 1\]"):
        check_contract(Broken(ds))


def test_unknown_and_misconfigured_entries_are_named(tmp_path):
    with pytest.raises(DatasetError, match="data.dataset='tiny' is not registered"):
        build_dataset("tiny")
    with pytest.raises(DatasetError, match="needs data.root"):
        build_dataset("nih")
    with pytest.raises(DatasetError, match=f"data.root='{tmp_path / 'nope'}' does not exist"):
        build_dataset("nih", root=tmp_path / "nope")
    with pytest.raises(DatasetError, match=r"stored image size 32 \(data.stored_size, else "
                                           r"data.view_size\): the synthetic radiographs are "
                                           r"rendered at 64-512 px"):
        build_dataset("synthetic", image_size=32)
    with pytest.raises(DatasetError, match="no 'test' split"):
        build_dataset("folder", root=_folder(tmp_path), split="test")
    with pytest.raises(DatasetError, match="split='dev'"):
        build_dataset("synthetic", split="dev")


def test_register_dataset_is_one_call(tmp_path):
    from train_helpers import TinyCXR

    register_dataset("tiny", lambda *, split, image_size, fractions, seed, **_: split_subset(
        TinyCXR(20, image_size), split, fractions, seed))
    try:
        cfg = load_config("teaching", {"data.dataset": "tiny", "data.view_size": 32,
                                       "data.stored_size": None, "data.length": 10})
        ds = dataset_from_config(cfg.data)
        # length is a seeded subset of the train split
        assert len(ds) == 10 and ds[0]["image"].shape == (1, 32, 32)
        again = dataset_from_config(cfg.data)
        np.testing.assert_array_equal(ds.indices, again.indices)
        splits = evaluation_splits(cfg.data)
        assert sum(len(s) for s in splits.values()) == 20
    finally:
        del DATASETS["tiny"]


def test_synthetic_splits_and_the_pretraining_stream():
    """Pretraining reads the train split (labels hidden); val and test patients are disjoint."""
    cfg = load_config("teaching", {"data.length": 40})
    pre = dataset_from_config(cfg.data, labelled=False)
    assert torch.isnan(pre[0]["labels"]).all() and len(pre) == 40
    val = build_dataset("synthetic", split="val", length=20)
    assert not set(pre.patient_ids) & set(val.patient_ids)
    # the pretraining images are the train split's first images, pixel for pixel
    train = build_dataset("synthetic", split="train", length=40)
    assert torch.equal(pre[7]["image"], train[7]["image"])


def test_subset_keeps_labels_masks_boxes_metadata_and_renumbers():
    import pandas as pd

    base = build_dataset("synthetic", split="test", length=12)
    base.metadata = pd.DataFrame({"view": [f"v{i}" for i in range(12)]})
    sub = Subset(base, [5, 2, 9])
    assert list(sub.metadata["view"]) == ["v5", "v2", "v9"]
    np.testing.assert_array_equal(sub.labels, base.labels[[5, 2, 9]])
    assert list(sub.patient_ids) == [str(base.patient_ids[i]) for i in (5, 2, 9)]
    s = sub[1]
    assert s["index"] == 1 and s["source_index"] == 2
    assert torch.equal(s["mask"], base[2]["mask"]) and sub.boxes(1) == base.boxes(2)
    mem = Subset(base, [5, 2, 9], in_memory=True)
    assert torch.equal(mem[2]["image"], sub[2]["image"]) and mem.images.shape == (3, 1, 64, 64)
    with pytest.raises(IndexError):
        Subset(base, [12])


def test_one_patient_split_rule_for_every_loader(tmp_path):
    """The NIH loader's split is data.splits.patient_split over the table's patients."""
    if SHARED is None or not (SHARED / "nih" / "images-64px").is_dir():
        pytest.skip("shared NIH images absent (set MLVICX_DATA_DIR)")
    from mlvicx_core.data.nih import NIHChestXray14

    root = SHARED / "nih" / "images-64px"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        every = NIHChestXray14(root, image_dir=root, split="all", image_size=32,
                               csv=SHARED / "nih" / "labels" / "Data_Entry_2017_v2020.csv.gz")
        test = build_dataset("nih", root=root, split="test", image_size=32)
    from mlvicx_core.data.tables import read_table

    table = read_table(SHARED / "nih" / "labels" / "Data_Entry_2017_v2020.csv.gz",
                       ["Image Index", "Patient ID"])
    pids = np.array([f"{int(p):08d}" for p in table["Patient ID"]], dtype=object)
    want = set(table["Image Index"].to_numpy()[patient_split(pids, (0.7, 0.1, 0.2), 0)["test"]])
    on_disk = set(every.metadata["image"])
    assert set(test.metadata["image"]) == want & on_disk


def test_evaluation_reads_whole_images_at_the_stored_size():
    """With data.stored_size set, the views are data.view_size crops but every evaluation (and the
    online probe) reads the whole radiograph at data.stored_size."""
    cfg = load_config("teaching", {"data.view_size": 32, "data.stored_size": 64})
    splits = evaluation_splits(cfg.data, (4, 4, 4))
    assert {tuple(s[0]["image"].shape) for s in splits.values()} == {(1, 64, 64)}
    plain = load_config("teaching", {"data.view_size": 64, "data.stored_size": None})
    assert evaluation_splits(plain.data, (4, 4, 4))["test"][0]["image"].shape == (1, 64, 64)
    pre = dataset_from_config(cfg.data, length=4)
    assert pre[0]["image"].shape == (1, 64, 64)  # stored size; the augmenter cuts 32 px views


def test_data_cache_serves_the_files_decoded_once(tmp_path):
    """``data.cache``: a real-format dataset (RSNA DICOMs) is decoded once into the cache; the
    pretraining set and every evaluation split read it, with the labels, boxes and pixels of the
    files (within 0.5/255), and a second build reuses it."""
    from mlvicx_core.data.cache import CachedDataset

    (tmp_path / "rsna").mkdir()
    root = _rsna(tmp_path / "rsna")
    cfg = load_config("teaching", {"data.dataset": "rsna", "data.root": str(root),
                                   "data.view_size": 16, "data.stored_size": None,
                                   "data.length": None, "data.split": "all",
                                   "data.cache": True, "data.cache_dir": str(tmp_path / "c")})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the RSNA fixture lists an image that is not on disk
        plain = build_dataset("rsna", root=root, split="all", image_size=16)
        cached = dataset_from_config(cfg.data)
        again = dataset_from_config(cfg.data)
    assert isinstance(cached, CachedDataset) and cached.built and not again.built
    assert (tmp_path / "c" / "rsna" / "all" / "16px" / "manifest.json").is_file()
    np.testing.assert_array_equal(cached.labels, plain.labels)
    assert list(cached.patient_ids) == list(plain.patient_ids)
    for i in range(len(plain)):
        assert cached.boxes(i) == plain.boxes(i)
        diff = (cached[i]["image"] - plain[i]["image"]).abs().max()
        assert diff <= 0.5 / 255 + 1e-6, i
    # without data.cache nothing is cached
    off = dataset_from_config(cfg.data.replace(cache=False, cache_dir=str(tmp_path / "off")))
    assert not isinstance(off, CachedDataset) and not (tmp_path / "off").exists()

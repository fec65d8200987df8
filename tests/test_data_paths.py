"""Dataset locations: the datasets home (MLVICX_DATA_ROOT) versus the shared test data
(MLVICX_DATA_DIR), the torchxrayvision-bundled NIH tables, and MedMNIST never downloading a file
that is already present."""
from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pandas as pd
import pytest

from mlvicx_core.data import paths
from mlvicx_core.data.medmnist import MedMNISTChest


def test_data_root_and_shared_dir_use_separate_variables(tmp_path, monkeypatch):
    monkeypatch.delenv("MLVICX_DATA_ROOT", raising=False)
    monkeypatch.setenv("MLVICX_DATA_DIR", str(tmp_path / "shared"))
    assert paths.default_data_root() == paths.REPO_ROOT / "data"  # not the shared test data
    assert paths.shared_data_dir() is None  # set but absent: tests skip
    (tmp_path / "shared").mkdir()
    assert paths.shared_data_dir() == tmp_path / "shared"
    monkeypatch.setenv("MLVICX_DATA_ROOT", str(tmp_path / "home"))
    assert paths.default_data_root() == tmp_path / "home"
    monkeypatch.delenv("MLVICX_DATA_DIR")
    fallback = paths.REPO_ROOT.parent / "shared" / "data"
    assert paths.shared_data_dir() == (fallback if fallback.is_dir() else None)


def test_bundled_nih_table_is_found_without_importing_torchxrayvision():
    found = paths.torchxrayvision_data_file("Data_Entry_2017_v2020.csv.gz")
    if found is None:
        pytest.skip("torchxrayvision not installed")
    table = pd.read_csv(found, usecols=["Image Index", "Patient ID"])
    assert len(table) == 112_120 and table["Patient ID"].nunique() == 30_805
    assert paths.torchxrayvision_data_file("no_such_table.csv") is None
    shared = paths.shared_data_dir()
    copy = shared / "nih" / "labels" / found.name if shared else None
    if copy is not None and copy.is_file():  # the shared README: the same file as the wheel's
        md5 = [hashlib.md5(p.read_bytes()).hexdigest() for p in (found, copy)]
        assert md5[0] == md5[1]


def test_medmnist_download_flag_never_refetches_a_present_file(tmp_path, monkeypatch):
    import medmnist.dataset

    def no_network(self):
        raise AssertionError("download attempted although the file is present")

    monkeypatch.setattr(medmnist.dataset.MedMNIST, "download", no_network)
    arrays = {f"{s}_{k}": np.zeros((2, 28, 28) if k == "images" else (2, 1), np.uint8)
              for s in ("train", "val", "test") for k in ("images", "labels")}
    np.savez(tmp_path / "pneumoniamnist.npz", **arrays)  # its MD5 matches no record
    with pytest.warns(UserWarning, match="the val split has 2 images, but MedMNIST"):
        ds = MedMNISTChest("pneumoniamnist", root=tmp_path, split="val", download=True)
    assert len(ds) == 2
    shutil.rmtree(tmp_path)
    with pytest.raises(FileNotFoundError, match="pneumoniamnist.npz"):
        MedMNISTChest("pneumoniamnist", root=tmp_path)
    with pytest.raises(ValueError, match="flag='dermamnist'"):
        MedMNISTChest("dermamnist", root=tmp_path)

"""RSNA, SIIM-ACR (RLE), VinDr-CXR, MedMNIST and plain-folder datasets on fixture files written in
each format (tiny DICOMs via pydicom), plus the shared PneumoniaMNIST file."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mlvicx_core.data.dicom import write_dicom
from mlvicx_core.data.folder import ImageFolderDataset
from mlvicx_core.data.medmnist import MedMNISTChest
from mlvicx_core.data.nih import NIH_FINDINGS
from mlvicx_core.data.paths import shared_data_dir
from mlvicx_core.data.rle import rle_decode, rle_encode
from mlvicx_core.data.rsna import RSNAPneumonia
from mlvicx_core.data.siim import SIIMPneumothorax
from mlvicx_core.data.vindr import VINDR_FINDINGS, VinDrCXR

SHARED = shared_data_dir()


def _dcm(path: Path, value: int, shape=(32, 32), **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_dicom(path, np.full(shape, value, np.uint8), **kw)


# -- RSNA --------------------------------------------------------------------------------------
RSNA_CSV = """patientId,x,y,width,height,Target
aaa,4,8,10,6,1
aaa,20,2,8,8,1
bbb,,,,,0
ccc,0,0,32,16,1
ddd,,,,,0
"""


def _rsna(tmp_path: Path) -> Path:
    (tmp_path / "stage_2_train_labels.csv").write_text(RSNA_CSV)
    for k, pid in enumerate(("aaa", "bbb", "ccc")):
        _dcm(tmp_path / "stage_2_train_images" / f"{pid}.dcm", 50 * k)
    return tmp_path


def test_rsna_labels_boxes_and_missing(tmp_path):
    root = _rsna(tmp_path)
    with pytest.warns(UserWarning, match="1 of 4 images"):
        ds = RSNAPneumonia(root, image_size=16)
    assert list(ds.patient_ids) == ["aaa", "bbb", "ccc"] and ds.missing == ["ddd"]
    np.testing.assert_array_equal(ds.labels, [[1], [0], [1]])
    assert ds.findings == ["Pneumonia"]
    # 32-px DICOM returned at 16 px: every coordinate halves.
    assert ds.boxes(0) == [("Pneumonia", 2.0, 4.0, 5.0, 3.0), ("Pneumonia", 10.0, 1.0, 4.0, 4.0)]
    assert ds.boxes(1) == []
    s = ds[2]
    assert s["image"].shape == (1, 16, 16) and s["patient_id"] == "ccc"
    np.testing.assert_allclose(s["image"].numpy(), 100 / 255.0, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="ddd"):
        RSNAPneumonia(root, missing="raise")


@pytest.mark.parametrize("csv, match", [
    ("patientId,x,y,width,height\naaa,1,2,3,4\n", "missing column.*'Target'"),
    ("patientId,x,y,width,height,Target\naaa,1,2,3,4,1\naaa,,,,,0\n", r"csv:3.*Target=0"),
    ("patientId,x,y,width,height,Target\nbbb,1,2,3,4,0\n", r"csv:2.*expected empty"),
    ("patientId,x,y,width,height,Target\naaa,,,,,1\n", r"csv:2.*Target=1"),
    ("patientId,x,y,width,height,Target\naaa,1,1,1,1,2\n", r"csv:2.*Target=2"),
])
def test_rsna_bad_tables(tmp_path, csv, match):
    root = _rsna(tmp_path)
    (root / "stage_2_train_labels.csv").write_text(csv)
    with pytest.raises(ValueError, match=match):
        RSNAPneumonia(root)


@pytest.mark.filterwarnings("ignore:1 of 4 images")
def test_rsna_corrupt_dicom_raises_or_is_skipped(tmp_path):
    root = _rsna(tmp_path)
    (root / "stage_2_train_images" / "bbb.dcm").write_bytes(b"DICM but not really")
    ds = RSNAPneumonia(root, missing="exclude", image_size=None)
    with pytest.raises(ValueError, match=r"bbb\.dcm"):
        ds[1]
    ds = RSNAPneumonia(root, image_size=None, on_error="skip")
    with pytest.warns(UserWarning, match=r"skipping .*bbb\.dcm"):
        assert ds[1]["patient_id"] == "ccc"
    assert len(ds.skipped) == 1


# -- SIIM RLE ---------------------------------------------------------------------------------
def test_rle_against_a_hand_made_mask():
    mask = np.zeros((4, 3), bool)  # H = 4, W = 3
    mask[1, 0] = mask[2, 0] = mask[0, 2] = True
    # Column-major positions (col * H + row): 1, 2 and 8 -> runs [1, 3) and [8, 9):
    # gap 1 length 2, then gap 8 - 3 = 5 length 1.
    assert rle_encode(mask) == "1 2 5 1"
    np.testing.assert_array_equal(rle_decode("1 2 5 1", (4, 3)), mask)
    assert rle_encode(np.zeros((5, 5), bool)) == "-1"
    assert not rle_decode(" -1", (5, 5)).any()


def test_rle_round_trip_and_errors():
    rng = np.random.default_rng(1)
    for shape in ((64, 48), (17, 31)):
        mask = rng.random(shape) < 0.3
        np.testing.assert_array_equal(rle_decode(rle_encode(mask), shape), mask)
    full = np.ones((3, 3), bool)
    assert rle_encode(full) == "0 9"
    for bad, match in (("1 2 3", "pairs"), ("1 x", "integers"), ("0 10", "beyond"),
                       ("2 -1", "non-positive")):
        with pytest.raises(ValueError, match=match):
            rle_decode(bad, (3, 3))


def _siim(tmp_path: Path) -> Path:
    # Image "img1": two regions (union); "img2": empty. Nested like the release. 10 x 8 px: images
    # below 8 px a side are refused (data/base.py: MIN_IMAGE_SIDE).
    m1 = np.zeros((10, 8), bool)
    m1[1:3, 1:4] = True
    m2 = np.zeros((10, 8), bool)
    m2[6:8, 5] = True
    (tmp_path / "train-rle.csv").write_text(
        f"ImageId, EncodedPixels\nimg1, {rle_encode(m1)}\nimg1, {rle_encode(m2)}\nimg2, -1\n")
    for iid, pid in (("img1", "patient-A"), ("img2", "patient-B")):
        _dcm(tmp_path / "dicom-images-train" / f"study-{iid}" / "series" / f"{iid}.dcm", 80,
             shape=(10, 8), patient_id=pid)
    return tmp_path


def test_siim_masks_labels_and_patient_ids(tmp_path):
    root = _siim(tmp_path)
    ds = SIIMPneumothorax(root, image_size=None)
    assert ds.has_masks and ds.findings == ["Pneumothorax"]
    assert list(ds.image_ids) == ["img1", "img2"]
    assert list(ds.patient_ids) == ["patient-A", "patient-B"]
    np.testing.assert_array_equal(ds.labels, [[1], [0]])
    expect = np.zeros((10, 8), bool)
    expect[1:3, 1:4] = True
    expect[6:8, 5] = True
    s = ds[0]
    assert s["mask"].dtype.is_floating_point is False and s["mask"].shape == (1, 10, 8)
    np.testing.assert_array_equal(s["mask"][0].numpy(), expect)
    assert not ds[1]["mask"].any()


def test_siim_bad_rle_and_columns(tmp_path):
    root = _siim(tmp_path)
    (root / "train-rle.csv").write_text("ImageId, EncodedPixels\nimg1, 1 2 3\n")
    with pytest.raises(ValueError, match=r"train-rle\.csv:2.*EncodedPixels.*pairs"):
        SIIMPneumothorax(root)
    (root / "train-rle.csv").write_text("ImageId, EncodedPixels\nimg1, 70 20\n")  # 90 > 10 * 8
    ds = SIIMPneumothorax(root)
    with pytest.raises(ValueError, match=r"img1\.dcm.*beyond"):
        ds[0]
    (root / "train-rle.csv").write_text("ImageId,Pixels\nimg1,-1\n")
    with pytest.raises(ValueError, match="'EncodedPixels'"):
        SIIMPneumothorax(root)


@pytest.mark.realdata
@pytest.mark.skipif(SHARED is None or not (SHARED / "siim").is_dir(), reason="shared SIIM absent")
def test_siim_real_dicom_with_empty_mask(tmp_path):
    dcm = next(p for p in (SHARED / "siim").glob("1.2.*.dcm"))
    (tmp_path / "train-rle.csv").write_text(f"ImageId, EncodedPixels\n{dcm.stem}, -1\n")
    ds = SIIMPneumothorax(tmp_path, image_dir=SHARED / "siim", image_size=64)
    assert len(ds) == 1 and ds.patient_ids[0] == "16d7f894-55d7-4d95-8957-d18987f0e981"
    s = ds[0]
    assert s["image"].shape == (1, 64, 64) and s["mask"].shape == (1, 64, 64)
    assert not s["mask"].any() and s["labels"].tolist() == [0.0]


# -- VinDr -------------------------------------------------------------------------------------
VINDR_CSV = """image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max
im1,Cardiomegaly,3,R1,10,20,50,40
im1,Cardiomegaly,3,R2,12,22,48,42
im1,Nodule/Mass,8,R1,0,0,4,8
im1,No finding,14,R3,,,,
im2,No finding,14,R1,,,,
im2,No finding,14,R2,,,,
im2,No finding,14,R3,,,,
"""


def _vindr(tmp_path: Path) -> Path:
    (tmp_path / "train.csv").write_text(VINDR_CSV)
    _dcm(tmp_path / "train" / "im1.dicom", 10, shape=(80, 64))
    _dcm(tmp_path / "train" / "im2.dicom", 20, shape=(80, 64))
    return tmp_path


def test_vindr_reader_rule_and_boxes(tmp_path):
    root = _vindr(tmp_path)
    card, nod = VINDR_FINDINGS.index("Cardiomegaly"), VINDR_FINDINGS.index("Nodule/Mass")
    one = VinDrCXR(root, image_size=32)
    assert len(one.findings) == 14 and list(one.patient_ids) == ["im1", "im2"]
    expect = np.zeros((2, 14), np.float32)
    expect[0, [card, nod]] = 1
    np.testing.assert_array_equal(one.labels, expect)
    two = VinDrCXR(root, min_readers=2, image_size=32)
    expect[0, nod] = 0
    np.testing.assert_array_equal(two.labels, expect)
    # (80 rows, 64 cols) -> 32 x 32: x scales by 1/2, y by 2/5.
    assert two.boxes(0) == [("Cardiomegaly", 5.0, 8.0, 20.0, 8.0),
                            ("Cardiomegaly", 6.0, 8.8, 18.0, 8.0)]
    assert ("Nodule/Mass", 0.0, 0.0, 2.0, 3.2) in one.boxes(0) and one.boxes(1) == []
    assert VinDrCXR(root, min_readers=4).labels.sum() == 0
    with pytest.raises(ValueError, match="min_readers"):
        VinDrCXR(root, min_readers=0)
    np.testing.assert_allclose(one[1]["image"].numpy(), 20 / 255.0, atol=1e-6)


@pytest.mark.parametrize("row, match", [
    ("im1,Cardiomegaly,4,R1,1,1,2,2", r"train\.csv:2.*class_id"),
    ("im1,Tumour,3,R1,1,1,2,2", r"train\.csv:2.*'Tumour'"),
    ("im1,Cardiomegaly,3,R1,5,1,2,2", r"train\.csv:2.*x_min < x_max"),
])
def test_vindr_bad_rows(tmp_path, row, match):
    root = _vindr(tmp_path)
    (root / "train.csv").write_text(VINDR_CSV.splitlines()[0] + "\n" + row + "\n")
    with pytest.raises(ValueError, match=match):
        VinDrCXR(root)
    (root / "train.csv").write_text("image_id,class_name,x_min,y_min,x_max,y_max\n")
    with pytest.raises(ValueError, match="'rad_id'"):
        VinDrCXR(root)


# -- MedMNIST ----------------------------------------------------------------------------------
@pytest.mark.realdata
@pytest.mark.skipif(SHARED is None or not (SHARED / "medmnist" / "pneumoniamnist.npz").is_file(),
                    reason="shared pneumoniamnist.npz absent")
def test_pneumoniamnist_shared_file():
    """The shared file is not the official one (../shared/data/README.md): its training split has
    3,882 images where MedMNIST v2 has 4,708 (issue 19 item 9: it loaded without a word). Loading
    it warns naming both counts; val and test have the official sizes and load quietly."""
    import warnings

    from mlvicx_core.data.medmnist import MedMNISTSizeWarning

    path = SHARED / "medmnist" / "pneumoniamnist.npz"
    ref = np.load(path)
    for split, n in (("train", 3882), ("val", 524), ("test", 624)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = MedMNISTChest("pneumoniamnist", root=SHARED / "medmnist", split=split)
        loud = [str(w.message) for w in caught if issubclass(w.category, MedMNISTSizeWarning)]
        official = OFFICIAL_SIZES["pneumoniamnist"][split]
        if split == "train":
            assert loud == [(f"{path}: the train split has 3882 images, but MedMNIST (medmnist "
                            f"{medmnist_version()}) records 4708 for pneumoniamnist: this is not "
                            "the official file (short by 826 images); results from it are not "
                            "comparable with published pneumoniamnist numbers")]
            assert len(ds) == 3882 != official
        else:
            assert loud == [] and len(ds) == n == official
        assert ds.findings == ["Pneumonia"]
        np.testing.assert_array_equal(ds.labels, ref[f"{split}_labels"].astype(np.float32))
    s = ds[5]
    assert s["image"].shape == (1, 28, 28) and s["patient_id"] == "pneumoniamnist/test/5"
    np.testing.assert_allclose(s["image"][0].numpy(), ref["test_images"][5] / 255.0, atol=1e-7)


#: The split sizes the MedMNIST v2 paper (Yang et al. 2023, table 1) gives: the reference the
#: loader's check is held to (it reads them from the medmnist package).
OFFICIAL_SIZES = {"pneumoniamnist": {"train": 4708, "val": 524, "test": 624},
                  "chestmnist": {"train": 78468, "val": 11219, "test": 22433}}


def medmnist_version() -> str:
    import medmnist

    return medmnist.__version__


def test_medmnist_split_sizes_are_checked_against_the_official_counts(tmp_path):
    """Issue 19 item 9: a split whose size differs from MedMNIST's record warns, naming the file
    and both counts; a split of the official size loads quietly."""
    import warnings

    from mlvicx_core.data.medmnist import MedMNISTSizeWarning

    sizes = {"train": 10, "val": 524, "test": 630}
    arrays = {}
    for split, n in sizes.items():
        arrays[f"{split}_images"] = np.zeros((n, 28, 28), np.uint8)
        arrays[f"{split}_labels"] = np.zeros((n, 1), np.uint8)
    path = tmp_path / "pneumoniamnist.npz"
    np.savez(path, **arrays)
    for split, n in sizes.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert len(MedMNISTChest("pneumoniamnist", root=tmp_path, split=split)) == n
        loud = [str(w.message) for w in caught if issubclass(w.category, MedMNISTSizeWarning)]
        official = OFFICIAL_SIZES["pneumoniamnist"][split]
        if n == official:
            assert loud == []
        else:
            (message,) = loud
            assert message.startswith(f"{path}: the {split} split has {n} images, but MedMNIST "
                                      f"(medmnist {medmnist_version()}) records {official} for "
                                      "pneumoniamnist: this is not the official file ("
                                      f"{'short' if n < official else 'long'} by "
                                      f"{abs(n - official)} images)")


def _chestmnist(root: Path) -> dict[str, np.ndarray]:
    """A ``chestmnist.npz`` in MedMNIST's layout (5 / 2 / 3 images, 14 labels); its arrays."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 5), ("val", 2), ("test", 3)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, (n, 14), dtype=np.uint8)
    np.savez(root / "chestmnist.npz", **arrays)
    return arrays


def test_chestmnist_fixture_and_missing_file(tmp_path):
    arrays = _chestmnist(tmp_path)
    with pytest.warns(UserWarning, match="the val split has 2 images, but MedMNIST .* records "
                                         "11219 for chestmnist"):
        ds = MedMNISTChest("chestmnist", root=tmp_path, split="val", image_size=56)
    assert ds.findings == NIH_FINDINGS and len(ds) == 2
    np.testing.assert_array_equal(ds[1]["labels"].numpy(), arrays["val_labels"][1])
    assert ds[1]["image"].shape == (1, 56, 56)
    with pytest.raises(FileNotFoundError, match=r"pneumoniamnist\.npz.*download=True"):
        MedMNISTChest("pneumoniamnist", root=tmp_path)
    arrays["val_labels"] = arrays["val_labels"][:, :3]
    np.savez(tmp_path / "chestmnist.npz", **arrays)
    with pytest.raises(ValueError, match=r"chestmnist\.npz.*val_labels"):
        MedMNISTChest("chestmnist", root=tmp_path, split="val")


# -- plain folder ------------------------------------------------------------------------------
def test_image_folder_recursive_mixed_formats(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.fromarray(np.full((10, 12), 51, np.uint8)).save(tmp_path / "a" / "x.png")
    _dcm(tmp_path / "a" / "b" / "y.dcm", 102, shape=(12, 10))
    Image.fromarray(np.full((8, 8), 204, np.uint8)).save(tmp_path / "z.jpg", quality=100)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "._x.png").write_bytes(b"macOS resource fork, not an image")  # hidden: ignored
    ds = ImageFolderDataset(tmp_path, image_size=8)
    assert len(ds) == 3 and ds.labels.shape == (3, 0) and ds.findings == []
    assert list(ds.patient_ids) == ["a/b/y", "a/x", "z"]
    for i, v in enumerate((102, 51, 204)):
        np.testing.assert_allclose(ds[i]["image"].numpy(), v / 255.0, atol=2 / 255)
    assert len(ImageFolderDataset(tmp_path, recursive=False)) == 1

    (tmp_path / "a" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    skip = ImageFolderDataset(tmp_path, on_error="skip")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert skip[1]["patient_id"] == "z"
    assert len(skip.skipped) == 1 and "x.png" in str(caught[0].message)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty.*no images"):
        ImageFolderDataset(empty)


# -- the real tables bundled in torchxrayvision, with fixture images named after real ids -------
def _bundled(name: str) -> Path:
    from mlvicx_core.data.paths import torchxrayvision_data_file
    found = torchxrayvision_data_file(name)
    if found is None:
        pytest.skip(f"torchxrayvision's bundled {name} not installed")
    return found


@pytest.mark.realdata
def test_rsna_real_table(tmp_path):
    table = pd.read_csv(_bundled("kaggle_stage_2_train_labels.csv.zip"))
    assert table["patientId"].nunique() == 26684
    per = table.groupby("patientId")
    two = per["Target"].sum().eq(2).idxmax()  # first patient with two boxes
    neg = per["Target"].max().eq(0).idxmax()
    for pid in (two, neg):
        _dcm(tmp_path / f"{pid}.dcm", 1, shape=(1024, 1024))
    with pytest.warns(UserWarning, match="26682 of 26684"):
        ds = RSNAPneumonia(tmp_path, image_size=256)  # root has no csv: the bundled one
    i_two, i_neg = list(ds.patient_ids).index(two), list(ds.patient_ids).index(neg)
    np.testing.assert_array_equal(ds.labels[[i_two, i_neg], 0], [1, 0])
    rows = table[table["patientId"] == two][["x", "y", "width", "height"]].to_numpy() / 4
    np.testing.assert_allclose([b[1:] for b in ds.boxes(i_two)], rows)
    assert ds.boxes(i_neg) == []


@pytest.mark.realdata
def test_siim_real_table_with_the_shared_dicom(tmp_path):
    if SHARED is None or not (SHARED / "siim").is_dir():
        pytest.skip("shared SIIM DICOM absent")
    table = pd.read_csv(_bundled("siim-pneumothorax-train-rle.csv.gz"))
    table.columns = [c.strip() for c in table.columns]
    dcm = next(p for p in (SHARED / "siim").glob("1.2.*.dcm"))
    assert table.loc[table["ImageId"] == dcm.stem, "EncodedPixels"].str.strip().tolist() == ["-1"]
    # Every RLE in the real table decodes inside 1024 x 1024 and re-encodes to the same runs.
    sample = table[table["EncodedPixels"].str.strip() != "-1"].iloc[::400]
    for rle in sample["EncodedPixels"]:
        assert rle_encode(rle_decode(rle)) == " ".join(rle.split())
    with pytest.warns(UserWarning, match="of 12047 images"):
        ds = SIIMPneumothorax(tmp_path, image_dir=SHARED / "siim", image_size=32)
    assert len(ds) == 1 and ds.labels.tolist() == [[0.0]] and not ds[0]["mask"].any()


@pytest.mark.realdata
def test_vindr_real_table(tmp_path):
    table = pd.read_csv(_bundled("vinbigdata-train.csv.gz"))
    marked = table[table["class_id"] < 14]
    votes = marked.groupby(["image_id", "class_name"])["rad_id"].nunique()
    image = votes[votes == 2].index[0][0]  # an image with a finding two readers agree on
    _dcm(tmp_path / "train" / f"{image}.dicom", 3, shape=(40, 40))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        one, two = (VinDrCXR(tmp_path, min_readers=m, image_size=40) for m in (1, 2))
    expect1 = [float(votes.get((image, f), 0) >= 1) for f in VINDR_FINDINGS]
    expect2 = [float(votes.get((image, f), 0) >= 2) for f in VINDR_FINDINGS]
    np.testing.assert_array_equal(one.labels[0], expect1)
    np.testing.assert_array_equal(two.labels[0], expect2)
    assert len(one.boxes(0)) == len(marked[marked["image_id"] == image])

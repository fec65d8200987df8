"""NIH ChestX-ray14: labels, metadata and boxes on the shared real subset (checked against an
independent pandas reading of the NIH tables), subset indexing, patient-disjoint seeded splits,
official split lists, hand-computed box scaling and bad tables."""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mlvicx_core.data.nih import NIH_FINDINGS, NIHChestXray14
from mlvicx_core.data.paths import shared_data_dir, torchxrayvision_data_file
from mlvicx_core.data.splits import patient_split

SHARED = shared_data_dir()
NIH = SHARED / "nih" if SHARED else None
needs_nih = pytest.mark.skipif(NIH is None or not (NIH / "images-64px").is_dir(),
                               reason="shared NIH data not found (set MLVICX_DATA_DIR)")

HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
          "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n")


def _quiet(**kw) -> NIHChestXray14:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return NIHChestXray14(**kw)


@pytest.mark.realdata
@needs_nih
def test_shared_subset_labels_metadata_and_images():
    csv = NIH / "labels" / "Data_Entry_2017_v2020.csv.gz"
    with pytest.warns(UserWarning, match="111120 of 112120"):
        ds = NIHChestXray14(NIH / "images-64px", csv=csv, image_size=64)
    assert len(ds) == 1000 and len(ds.missing) == 111120
    ref = pd.read_csv(csv).set_index("Image Index").loc[list(ds.metadata["image"])]
    for k, name in enumerate(NIH_FINDINGS):  # independent parse: membership in the pipe list
        expect = ref["Finding Labels"].map(lambda s: name in s.split("|")).to_numpy(np.float32)
        np.testing.assert_array_equal(ds.labels[:, k], expect)
    assert (ds.labels.sum(1) == 0).sum() == (ref["Finding Labels"] == "No Finding").sum()
    assert len(set(ds.patient_ids)) == 264
    assert list(ds.patient_ids) == [f"{p:08d}" for p in ref["Patient ID"]]
    np.testing.assert_array_equal(ds.metadata["age"], ref["Patient Age"])
    np.testing.assert_array_equal(ds.metadata["sex"], ref["Patient Gender"])
    np.testing.assert_array_equal(ds.metadata["view"], ref["View Position"])
    i = 7
    s = ds[i]
    raw = np.asarray(Image.open(NIH / "images-64px" / ds.metadata["image"][i]))[..., 0] / 255.0
    assert s["image"].shape == (1, 64, 64) and s["patient_id"] == ds.patient_ids[i]
    np.testing.assert_allclose(s["image"][0].numpy(), raw, atol=1e-6)
    np.testing.assert_array_equal(s["labels"].numpy(), ds.labels[i])


@pytest.mark.realdata
@needs_nih
def test_bundled_torchxrayvision_tables_and_real_boxes():
    if torchxrayvision_data_file("Data_Entry_2017_v2020.csv.gz") is None:
        pytest.skip("torchxrayvision not installed: no bundled NIH table")
    ds = _quiet(image_dir=NIH / "images-64px", image_size=64)  # csv and bbox from the wheel
    assert len(ds) == 1000
    boxed = [i for i in range(len(ds)) if ds.boxes(i)]
    assert len(boxed) == 9  # the shared README: 9 boxes fall on images-64px
    bb = pd.read_csv(NIH / "labels" / "BBox_List_2017.csv.gz")
    row = bb[bb["Image Index"] == "00000211_016.png"].iloc[0]
    assert row["Finding Label"] == "Infiltrate"
    i = int(np.flatnonzero(ds.metadata["image"] == "00000211_016.png")[0])
    (name, x, y, w, h), = ds.boxes(i)
    assert name == "Infiltration"
    expect = np.array([row["Bbox [x"], row["y"], row["w"], row["h]"]]) * 64 / 1024
    np.testing.assert_allclose([x, y, w, h], expect, rtol=1e-9)


def _fixture(tmp_path: Path, nested: bool = True) -> tuple[Path, Path]:
    """12 images of 6 patients (2 each), as 64x48 grey PNGs, plus a Data_Entry table."""
    img_dir = tmp_path / "images"
    sub = img_dir / "images_001" / "images" if nested else img_dir
    sub.mkdir(parents=True)
    lines = [HEADER]
    labels = ["No Finding", "Mass|Nodule", "Hernia", "Effusion|Infiltration|Pneumothorax"]
    for p in range(1, 7):
        for f in range(2):
            name = f"{p:08d}_{f:03d}.png"
            Image.fromarray(np.full((48, 64), 10 * p + f, np.uint8)).save(sub / name)
            lines.append(f"{name},{labels[(p + f) % 4]},{f},{p},{30 + p},{'MF'[p % 2]},PA,"
                         "2500,2048,0.17,0.17\n")
    csv = tmp_path / "Data_Entry_2017.csv"
    csv.write_text("".join(lines))
    return img_dir, csv


def test_subset_indexing_and_label_parsing(tmp_path):
    img_dir, csv = _fixture(tmp_path)
    for name in ("00000002_000.png", "00000005_001.png"):
        next(img_dir.rglob(name)).unlink()
    with pytest.warns(UserWarning, match="2 of 12 images"):
        ds = NIHChestXray14(img_dir, csv=csv, bbox_csv=False, image_size=None)
    assert len(ds) == 10 and sorted(ds.missing) == ["00000002_000.png", "00000005_001.png"]
    i = list(ds.metadata["image"]).index("00000003_001.png")  # (3 + 1) % 4 = 0: No Finding
    assert ds.labels[i].sum() == 0
    i = list(ds.metadata["image"]).index("00000001_000.png")  # Mass|Nodule
    assert [NIH_FINDINGS[k] for k in np.flatnonzero(ds.labels[i])] == ["Mass", "Nodule"]
    assert ds[i]["image"].shape == (1, 48, 64)
    np.testing.assert_allclose(ds[i]["image"].numpy(), 10 / 255.0, atol=1e-7)
    with pytest.raises(FileNotFoundError, match="00000002_000.png"):
        NIHChestXray14(img_dir, csv=csv, bbox_csv=False, missing="raise")


def test_seeded_patient_disjoint_splits(tmp_path):
    img_dir, csv = _fixture(tmp_path)
    state = np.random.get_state()
    parts = {s: _quiet(image_dir=img_dir, csv=csv, bbox_csv=False, split=s,
                       fractions=(0.5, 1 / 6, 1 / 3), seed=3) for s in ("train", "val", "test")}
    assert np.array_equal(np.random.get_state()[1], state[1])  # global RNG untouched
    pats = {s: set(d.patient_ids) for s, d in parts.items()}
    assert [len(pats[s]) for s in ("train", "val", "test")] == [3, 1, 2]  # round(6 * f)
    assert not (pats["train"] & pats["val"] or pats["train"] & pats["test"]
                or pats["val"] & pats["test"])
    assert sum(len(d) for d in parts.values()) == 12
    again = _quiet(image_dir=img_dir, csv=csv, bbox_csv=False, split="train",
                   fractions=(0.5, 1 / 6, 1 / 3), seed=3)
    assert list(again.patient_ids) == list(parts["train"].patient_ids)
    # The split does not depend on which images are on disk: drop one, the rest keep their split.
    next(img_dir.rglob(parts["test"].metadata["image"][0])).unlink()
    fewer = _quiet(image_dir=img_dir, csv=csv, bbox_csv=False, split="test",
                   fractions=(0.5, 1 / 6, 1 / 3), seed=3)
    assert set(fewer.metadata["image"]) == set(parts["test"].metadata["image"][1:])
    with pytest.raises(ValueError, match="fractions"):
        NIHChestXray14(img_dir, csv=csv, bbox_csv=False, split="train", fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="split='dev'"):
        NIHChestXray14(img_dir, csv=csv, bbox_csv=False, split="dev")


def test_patient_split_function_against_a_plain_reimplementation():
    pids = [f"p{k % 37}" for k in range(200)]
    got = patient_split(pids, (0.6, 0.2, 0.2), seed=11)
    unique = sorted(set(pids))
    order = [unique[k] for k in np.random.default_rng(11).permutation(len(unique))]
    cut1, cut2 = round(37 * 0.6), round(37 * 0.8)
    for name, group in (("train", order[:cut1]), ("val", order[cut1:cut2]),
                        ("test", order[cut2:])):
        np.testing.assert_array_equal(got[name], [i for i, p in enumerate(pids) if p in group])


def test_official_split_lists(tmp_path):
    img_dir, csv = _fixture(tmp_path)
    test_names = ["00000001_000.png", "00000001_001.png", "00000006_000.png", "00000006_001.png"]
    all_names = [f"{p:08d}_{f:03d}.png" for p in range(1, 7) for f in range(2)]
    (tmp_path / "test_list.txt").write_text("\n".join(test_names) + "\n")
    (tmp_path / "train_val_list.txt").write_text(
        "\n".join(n for n in all_names if n not in test_names) + "\n")
    kw = dict(image_dir=img_dir, csv=csv, bbox_csv=False, split_lists=tmp_path,
              fractions=(0.75, 0.25, 0.0), seed=0)
    test = _quiet(split="test", **kw)
    assert sorted(test.metadata["image"]) == test_names
    train, val = _quiet(split="train", **kw), _quiet(split="val", **kw)
    assert len(set(train.patient_ids)) == 3 and len(set(val.patient_ids)) == 1
    assert not set(train.patient_ids) & set(val.patient_ids)
    assert sorted(list(train.metadata["image"]) + list(val.metadata["image"])) == \
        sorted(n for n in all_names if n not in test_names)
    (tmp_path / "test_list.txt").write_text("99999999_000.png\n")
    with pytest.raises(ValueError, match="99999999_000.png"):
        _quiet(split="test", **kw)


def test_box_scaling_hand_computed(tmp_path):
    img_dir, csv = _fixture(tmp_path, nested=False)
    bbox = tmp_path / "BBox_List_2017.csv"
    bbox.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                    "00000001_000.png,Infiltrate,512,256,128,64\n"
                    "00000001_000.png,Mass,0,1000,10,20\n")
    ds = _quiet(image_dir=img_dir, csv=csv, bbox_csv=bbox, image_size=64)
    i = list(ds.metadata["image"]).index("00000001_000.png")
    assert ds.boxes(i) == [("Infiltration", 32.0, 16.0, 8.0, 4.0), ("Mass", 0.0, 62.5, 0.625, 1.25)]
    assert ds.boxes(i + 1) == []
    native = _quiet(image_dir=img_dir, csv=csv, bbox_csv=bbox, image_size=None)  # 64 wide, 48 high
    assert native.boxes(i)[0] == ("Infiltration", 32.0, 12.0, 8.0, 3.0)
    bbox.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                    "00000001_000.png,Tumour,1,2,3,4\n")
    with pytest.raises(ValueError, match=r"BBox_List_2017.csv:2.*'Tumour'"):
        _quiet(image_dir=img_dir, csv=csv, bbox_csv=bbox)


def test_bad_tables_and_bad_images(tmp_path):
    img_dir, csv = _fixture(tmp_path)
    bad = tmp_path / "no_labels.csv"
    bad.write_text(csv.read_text().replace("Finding Labels", "Findings"))
    with pytest.raises(ValueError, match=r"no_labels\.csv.*'Finding Labels'"):
        NIHChestXray14(img_dir, csv=bad, bbox_csv=False)
    bad.write_text(csv.read_text().replace("Hernia", "Hernie"))
    with pytest.raises(ValueError, match=r"no_labels\.csv:\d+.*'Hernie'"):
        NIHChestXray14(img_dir, csv=bad, bbox_csv=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="none of the 12 images"):
        NIHChestXray14(empty, csv=csv, bbox_csv=False)

    # A corrupt PNG: default raises naming it; on_error="skip" warns, counts, serves the next one.
    victim = next(img_dir.rglob("00000003_000.png"))
    victim.write_bytes(victim.read_bytes()[:40])
    ds = NIHChestXray14(img_dir, csv=csv, bbox_csv=False, image_size=None)
    i = [p.name for p in ds.paths].index("00000003_000.png")
    with pytest.raises(ValueError, match="00000003_000.png"):
        ds[i]
    ds = NIHChestXray14(img_dir, csv=csv, bbox_csv=False, image_size=None, on_error="skip")
    with pytest.warns(UserWarning, match="skipping .*00000003_000.png"):
        s = ds[i]
    assert s["index"] == i + 1 and len(ds.skipped) == 1
    np.testing.assert_allclose(s["image"].numpy(), 31 / 255.0, atol=1e-7)  # 00000003_001.png

    # An RGB image with real colour where a grey radiograph is expected.
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(next(img_dir.rglob("00000004_000.png")))
    ds = NIHChestXray14(img_dir, csv=csv, bbox_csv=False)
    with pytest.raises(ValueError, match=r"00000004_000\.png.*colour"):
        ds[[p.name for p in ds.paths].index("00000004_000.png")]
    shutil.rmtree(img_dir)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        NIHChestXray14(img_dir, csv=csv, bbox_csv=False)


def test_default_layout_under_a_dataset_root(tmp_path):
    """root/images + root/Data_Entry_2017.csv + root/BBox_List_2017.csv are found by default."""
    img_dir, csv = _fixture(tmp_path)  # tmp_path/images/..., tmp_path/Data_Entry_2017.csv
    (tmp_path / "BBox_List_2017.csv").write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000002_001.png,Mass,1024,0,0.5,1\n")
    ds = NIHChestXray14(tmp_path, image_size=16)
    assert len(ds) == 12 and not ds.missing
    i = list(ds.metadata["image"]).index("00000002_001.png")
    assert ds.boxes(i) == [("Mass", 16.0, 0.0, 0.0078125, 0.015625)]


def _rewrite_row(csv: Path, image: str, column: int, value: str) -> int:
    """Set field ``column`` of ``image``'s row to ``value``; returns the file line (1-based)."""
    lines = csv.read_text().splitlines(keepends=True)
    for n, line in enumerate(lines):
        if line.startswith(image):
            fields = line.rstrip("\n").split(",")
            fields[column] = value
            lines[n] = ",".join(fields) + "\n"
            csv.write_text("".join(lines))
            return n + 1
    raise AssertionError(image)


def test_empty_cells_name_the_file_line_and_column(tmp_path):
    """Issue 12 item 13: an empty 'Finding Labels' cell raised AttributeError ('float' object has
    no attribute 'split') naming no file or row."""
    img_dir, csv = _fixture(tmp_path)
    line = _rewrite_row(csv, "00000004_001.png", 1, "")
    assert line == 9  # header + 7 rows before it
    with pytest.raises(ValueError, match=r"Data_Entry_2017\.csv:9: 'Finding Labels' is empty; "
                                         r"expected 'No Finding' or findings separated by '\|'"):
        NIHChestXray14(img_dir, csv=csv, bbox_csv=False)
    _rewrite_row(csv, "00000004_001.png", 1, "Mass||Nodule")  # an empty entry inside the list
    with pytest.raises(ValueError, match=r"Data_Entry_2017\.csv:9: 'Finding Labels' "
                                         r"'Mass\|\|Nodule' has an empty entry"):
        NIHChestXray14(img_dir, csv=csv, bbox_csv=False)
    _rewrite_row(csv, "00000004_001.png", 1, "Mass")
    _rewrite_row(csv, "00000002_000.png", 3, " ")  # Patient ID
    with pytest.raises(ValueError, match=r"Data_Entry_2017\.csv:4: 'Patient ID' is empty"):
        NIHChestXray14(img_dir, csv=csv, bbox_csv=False)


def test_label_errors_give_the_file_line_even_when_rows_are_filtered(tmp_path):
    """The line of a bad label is the table's, not the row number after the split and the
    missing-image filter (it was off by the rows dropped before it)."""
    img_dir, csv = _fixture(tmp_path)
    next(img_dir.rglob("00000001_000.png")).unlink()  # row 1 is filtered out as missing
    line = _rewrite_row(csv, "00000006_001.png", 1, "Hernie")
    assert line == 13
    with pytest.raises(ValueError, match=r"Data_Entry_2017\.csv:13: 'Finding Labels' has "
                                         r"'Hernie'"):
        _quiet(image_dir=img_dir, csv=csv, bbox_csv=False)


GOOGLE2019 = torchxrayvision_data_file("google2019_nih-chest-xray-labels.csv.gz")
needs_google = pytest.mark.skipif(GOOGLE2019 is None, reason="torchxrayvision not installed: no "
                                  "bundled google2019_nih-chest-xray-labels.csv.gz")
EXPERT = ["Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass"]


@needs_google
@needs_nih
@pytest.mark.realdata
def test_google2019_relabel_file_is_refused_as_an_nih_table_and_read_as_expert_labels():
    """Issue 12 item 14: the Google 2019 expert relabelling was silently read as an NIH table
    (its 'Finding Labels' are NIH's text-mined ones; the four expert columns were ignored)."""
    with pytest.raises(ValueError, match=r"google2019_nih-chest-xray-labels\.csv\.gz: the Google "
                                         r"2019 expert relabelling.*label_set='google2019'"):
        _quiet(image_dir=NIH / "images-64px", csv=GOOGLE2019, image_size=64)
    ds = _quiet(image_dir=NIH / "images-64px", csv=GOOGLE2019, label_set="google2019",
                image_size=64)
    assert ds.findings == EXPERT and ds.labels.shape == (30, 4)
    ref = pd.read_csv(GOOGLE2019).set_index("Image Index").loc[list(ds.metadata["image"])]
    np.testing.assert_array_equal(ds.labels, (ref[EXPERT] == "YES").to_numpy(np.float32))
    assert list(ds.metadata["set_id"]) == list(ref["Set Id"])
    assert list(ds.patient_ids) == [f"{p:08d}" for p in ref["Patient ID"]]
    # where the experts and NIH's text mining disagree, the experts' label is served
    i = list(ds.metadata["image"]).index("00000013_026.png")  # NIH: Cardiomegaly|Emphysema
    assert ds[i]["labels"].tolist() == [0.0, 1.0, 0.0, 0.0]
    j = list(ds.metadata["image"]).index("00000218_002.png")  # NIH: No Finding
    assert ds.labels[j].tolist() == [0.0, 0.0, 1.0, 1.0]
    # the default file for label_set='google2019' is that same bundled copy
    again = _quiet(image_dir=NIH / "images-64px", label_set="google2019", image_size=64)
    np.testing.assert_array_equal(again.labels, ds.labels)


def test_google2019_fixture_values_boxes_and_bad_cells(tmp_path):
    img_dir, _ = _fixture(tmp_path, nested=False)
    head = HEADER.rstrip("\n") + ",Fracture,Pneumothorax,Airspace opacity,Nodule or mass,Set Id\n"
    rows = ["00000001_000.png,No Finding,0,1,31,F,PA,2500,2048,0.17,0.17,NO,YES,NO,NO,test\n",
            "00000002_000.png,Mass,0,2,32,M,PA,2500,2048,0.17,0.17,NO,NO,NO,YES,val\n",
            "00000003_000.png,No Finding,0,3,33,F,PA,2500,2048,0.17,0.17,YES,NO,YES,NO,val\n"]
    g = tmp_path / "google2019_nih-chest-xray-labels.csv"
    g.write_text(head + "".join(rows))
    bbox = tmp_path / "BBox_List_2017.csv"
    bbox.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                    "00000001_000.png,Pneumothorax,0,0,512,512\n"
                    "00000002_000.png,Nodule,512,0,256,256\n"
                    "00000002_000.png,Effusion,0,0,10,10\n")
    ds = NIHChestXray14(img_dir, csv=g, bbox_csv=bbox, label_set="google2019", image_size=64)
    assert ds.labels.tolist() == [[0, 1, 0, 0], [0, 0, 0, 1], [1, 0, 1, 0]]
    assert ds.metadata["set_id"].tolist() == ["test", "val", "val"]
    # NIH boxes under the expert names: Pneumothorax stays, Mass/Nodule -> 'Nodule or mass',
    # findings the experts did not label (Effusion) are dropped
    assert ds.boxes(0) == [("Pneumothorax", 0.0, 0.0, 32.0, 32.0)]
    assert ds.boxes(1) == [("Nodule or mass", 32.0, 0.0, 16.0, 16.0)]
    # found by default under the dataset root
    assert len(NIHChestXray14(tmp_path, image_dir=img_dir, bbox_csv=False,
                              label_set="google2019")) == 3
    g.write_text(head + rows[0] + rows[1].replace(",YES,val", ",maybe,val") + rows[2])
    with pytest.raises(ValueError, match=r"labels\.csv:3: 'Nodule or mass' is 'maybe'; expected "
                                         r"'YES' or 'NO'"):
        NIHChestXray14(img_dir, csv=g, bbox_csv=False, label_set="google2019")
    _, nih_csv = _fixture(tmp_path / "other")
    with pytest.raises(ValueError, match=r"Data_Entry_2017\.csv: missing column.*'Fracture'"):
        NIHChestXray14(img_dir, csv=nih_csv, bbox_csv=False, label_set="google2019")
    with pytest.raises(ValueError, match=r"label_set='chexpert': expected 'nih' or 'google2019'"):
        NIHChestXray14(img_dir, csv=nih_csv, bbox_csv=False, label_set="chexpert")


def test_an_empty_finding_cell_is_one_line_from_the_command(tmp_path, capsys):
    """Issue 19 item 6: the message was right but arrived as a traceback with exit status 1."""
    from mlvicx_core.cli import main

    img_dir, csv = _fixture(tmp_path, nested=False)
    line = _rewrite_row(csv, "00000004_001.png", 1, "")
    table = img_dir / "Data_Entry_2017_v2020.csv"  # where the registry's nih entry looks
    csv.rename(table)
    code = main(["pretrain", "--set", "data.dataset=nih", "--set", f"data.root={img_dir}",
                 "--set", f"train.out_dir={tmp_path / 'runs'}", "--set", "train.max_steps=1"])
    assert code == 2
    assert capsys.readouterr().err == (
        f"mlvicx pretrain: error: data.dataset='nih': {table}:{line}: 'Finding Labels' is empty; "
        "expected 'No Finding' or findings separated by '|' (e.g. 'Mass|Nodule')\n")

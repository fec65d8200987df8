"""NIH ChestX-ray14 (Wang et al., CVPR 2017): 112,120 frontal films, 30,805 patients, 14 findings.

Labels come from ``Data_Entry_2017*.csv(.gz)``: a given path, or the copy bundled inside the
installed ``torchxrayvision`` wheel (found on disk and read with pandas here; torchxrayvision's own
dataset class is not used because its constructor reseeds NumPy's global RNG and rescales images
to [-1024, 1024]). ``Finding Labels`` is pipe-separated; ``No Finding`` means all 14 are 0. The
text-mined labels are complete (no NaN).

Expert labels (``label_set="google2019"``): ``google2019_nih-chest-xray-labels.csv(.gz)``
(Majkowska et al., Radiology 2019; the given path, ``root/`` or the torchxrayvision copy) holds
4,376 NIH images relabelled by radiologists for four findings, :data:`GOOGLE2019_FINDINGS`, as
``YES``/``NO`` columns, plus ``Set Id`` (``val``/``test``, in ``metadata["set_id"]``). Its
``Finding Labels`` column repeats NIH's text-mined labels, which the experts contradict (e.g. 258 of
the 4,376 rows on pneumothorax), so this file given as an NIH table (the default
``label_set="nih"``) is refused with an error rather than read as one. With the expert labels,
``findings`` is those four, NIH boxes are renamed to them (``Pneumothorax``; ``Mass`` and
``Nodule`` -> ``Nodule or mass``) and boxes of the other findings are dropped; ``split_lists`` do
not apply (the patient-disjoint split of the file's rows does).

Images: PNGs found recursively under ``image_dir`` by file name (the archive nests them as
``images_001/images/...``). Rows whose image is absent are excluded when the dataset is built
(``missing`` policy in :mod:`mlvicx_core.data.files`), so one downloaded tarball is a valid
dataset. The NIH PNGs are 8-bit grey; some copies (e.g. the shared 64 px test set) are RGB/RGBA
with grey in every channel, which :func:`~mlvicx_core.data.imageio.read_image` reduces to grey.

Splits: with ``split_lists`` (the official ``train_val_list.txt`` and ``test_list.txt``),
``"test"`` is the official test list and ``"train"``/``"val"`` divide the official train_val list
patient-disjointly with ``seed`` in the ratio ``fractions[0] : fractions[1]``. Without lists the
whole table is split patient-disjointly by :func:`~mlvicx_core.data.splits.patient_split`. Splits
are drawn over *all* rows of the table before missing images are excluded, so an image's split does
not depend on how much of the dataset is on disk.

Boxes: ``BBox_List_2017.csv`` (the given path, or the torchxrayvision copy) holds 984 expert boxes
``x, y, w, h`` in the pixel frame of the distributed 1024 x 1024 PNGs (every box ends before 1024;
``OriginalImage[Width, Height]`` is the size of the scan *before* NIH resized it to 1024, so it
does not enter the scaling). ``boxes(i)`` multiplies by ``S / 1024`` (with ``image_size=None``: by
the file's own width/1024 and height/1024). Its label ``Infiltrate`` is the finding
``Infiltration``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .files import (FileDataset, box_scale, default_image_dir, first_existing, index_images,
                    match_listed)
from .imageio import IMAGE_SUFFIXES
from .paths import default_data_root, torchxrayvision_data_file
from .splits import check_fractions, patient_split, select_split
from .tables import read_table, row_ref

#: The standard NIH ChestX-ray14 order (as in the NIH release, ChestMNIST and torchxrayvision).
NIH_FINDINGS = [
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
    "Hernia",
]
LABEL_COLUMNS = ["Image Index", "Finding Labels", "Patient ID"]
#: NIH table column -> name in ``dataset.metadata``.
METADATA_COLUMNS = {
    "Patient Age": "age", "Patient Gender": "sex", "View Position": "view",
    "Follow-up #": "follow_up", "OriginalImage[Width": "original_width",
    "Height]": "original_height", "Set Id": "set_id",
}
#: The four expert labels of the Google 2019 relabelling, in its column order.
GOOGLE2019_FINDINGS = ["Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass"]
GOOGLE2019_FILE = "google2019_nih-chest-xray-labels.csv"
LABEL_SETS = ("nih", "google2019")
_GOOGLE_BOX_NAMES = {"Pneumothorax": "Pneumothorax", "Mass": "Nodule or mass",
                     "Nodule": "Nodule or mass"}
BOX_REFERENCE = (1024, 1024)  # (height, width) of the frame the NIH boxes are drawn in
_BOX_ALIASES = {"Infiltrate": "Infiltration"}


def parse_findings(labels: pd.Series, source: str, rows: Sequence[int] | None = None
                   ) -> np.ndarray:
    """``Finding Labels`` strings -> (N, 14) float32 multi-hot in :data:`NIH_FINDINGS` order.

    ``rows``: the 0-based data row of each entry in ``source`` (for error messages; default
    0..N-1). An empty cell, an empty entry (``Mass||Nodule``) or an unknown name raises
    ``ValueError`` naming ``source:line``.
    """
    col = {f: k for k, f in enumerate(NIH_FINDINGS)}
    rows = range(len(labels)) if rows is None else rows
    out = np.zeros((len(labels), len(NIH_FINDINGS)), dtype=np.float32)
    for r, (row, text) in enumerate(zip(rows, labels)):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{row_ref(source, row)}: 'Finding Labels' is empty; expected 'No "
                             "Finding' or findings separated by '|' (e.g. 'Mass|Nodule')")
        for name in text.split("|"):
            name = name.strip()
            if not name:
                raise ValueError(f"{row_ref(source, row)}: 'Finding Labels' {text!r} has an "
                                 "empty entry; expected findings separated by single '|'")
            if name == "No Finding":
                continue
            if name not in col:
                raise ValueError(f"{row_ref(source, row)}: 'Finding Labels' has {name!r}; "
                                 f"expected 'No Finding' or one of {NIH_FINDINGS}")
            out[r, col[name]] = 1.0
    return out


def is_google2019(table: pd.DataFrame) -> bool:
    """Whether a label table is the Google 2019 relabelling (it has the four expert columns)."""
    return all(c in table.columns for c in GOOGLE2019_FINDINGS)


def parse_expert_labels(table: pd.DataFrame, source: str, rows: Sequence[int]) -> np.ndarray:
    """The Google 2019 ``YES``/``NO`` columns -> (N, 4) float32 in :data:`GOOGLE2019_FINDINGS`
    order; any other value raises ``ValueError`` naming ``source:line`` and the column."""
    out = np.zeros((len(table), len(GOOGLE2019_FINDINGS)), dtype=np.float32)
    for k, c in enumerate(GOOGLE2019_FINDINGS):
        text = table[c].astype(str).str.strip().str.upper().to_numpy()
        bad = ~np.isin(text, ["YES", "NO"]) | table[c].isna().to_numpy()
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{row_ref(source, rows[r])}: {c!r} is {table[c].iloc[r]!r}; "
                             "expected 'YES' or 'NO'")
        out[:, k] = text == "YES"
    return out


def check_filled(table: pd.DataFrame, columns: Sequence[str], source: str) -> None:
    """Raise ``ValueError`` naming ``source:line`` and the column of the first empty cell."""
    for c in columns:
        empty = table[c].isna().to_numpy() | table[c].astype(str).str.strip().eq("").to_numpy()
        if empty.any():
            first = int(np.flatnonzero(empty)[0])
            raise ValueError(f"{row_ref(source, first)}: {c!r} is empty ({int(empty.sum())} empty "
                             f"cell(s) in that column); expected a value in every row")


def read_boxes(path: str | os.PathLike) -> dict[str, list[tuple[str, float, float, float, float]]]:
    """``BBox_List_2017.csv`` -> {image name: [(finding, x, y, w, h), ...]} in 1024-px units.

    The header is ``Image Index,Finding Label,Bbox [x,y,w,h],,,``: the box spans the columns
    ``Bbox [x``, ``y``, ``w``, ``h]`` and three empty columns trail; they are located by position.
    """
    df = read_table(path, ["Image Index", "Finding Label"])
    if len(df.columns) < 6 or not str(df.columns[2]).startswith("Bbox"):
        raise ValueError(f"{path}: expected columns 'Image Index, Finding Label, Bbox [x,y,w,h]', "
                         f"found {list(df.columns)}")
    xywh = df.iloc[:, 2:6].to_numpy(dtype=np.float64)
    out: dict[str, list] = {}
    for r, (name, finding) in enumerate(zip(df["Image Index"], df["Finding Label"])):
        finding = _BOX_ALIASES.get(str(finding).strip(), str(finding).strip())
        if finding not in NIH_FINDINGS:
            raise ValueError(f"{row_ref(path, r)}: 'Finding Label' {finding!r}; expected one of "
                             f"{NIH_FINDINGS}")
        x, y, w, h = xywh[r]
        if not np.isfinite(xywh[r]).all() or w <= 0 or h <= 0:
            raise ValueError(f"{row_ref(path, r)}: box {xywh[r].tolist()}; expected finite x, y "
                             "and positive w, h")
        out.setdefault(str(name).strip(), []).append((finding, x, y, w, h))
    return out


def _read_list(path: Path) -> set[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: official split list not found")
    return {ln.strip() for ln in path.read_text().splitlines() if ln.strip()}


class NIHChestXray14(FileDataset):
    """NIH ChestX-ray14 behind the :class:`~mlvicx_core.data.base.CXRDataset` contract.

    Parameters
    ----------
    root: dataset folder; default ``default_data_root() / "nih-chestxray14"``.
    csv: ``Data_Entry_2017*.csv(.gz)``; default: ``root/Data_Entry_2017_v2020.csv(.gz)`` or
        ``root/Data_Entry_2017.csv(.gz)`` if present, else the copy bundled with torchxrayvision.
    image_dir: folder searched recursively for the PNGs (any subset of the 112,120); default
        ``root / "images"`` if it exists, else ``root``.
    bbox_csv: ``BBox_List_2017.csv(.gz)``; default: ``root/BBox_List_2017.csv(.gz)`` if present,
        else the torchxrayvision copy if installed; ``False``: no boxes.
    split: ``"all"``, ``"train"``, ``"val"`` or ``"test"`` (see the module docstring).
    split_lists: folder holding ``train_val_list.txt`` and ``test_list.txt``, or the two paths.
    fractions, seed: patient-disjoint split fractions (train, val, test) and its seed.
    label_set: ``"nih"`` (the 14 text-mined findings of a Data_Entry table) or ``"google2019"``
        (the four expert labels of the Google 2019 relabelling; default file
        ``root/google2019_nih-chest-xray-labels.csv(.gz)`` or the torchxrayvision copy). See the
        module docstring.
    missing: ``"exclude"`` (default) or ``"raise"`` for table rows whose image is not on disk.
    image_size, transform, on_error: as in :class:`CXRDataset`.

    Attributes: ``metadata`` (pandas DataFrame, one row per sample: image, patient_id, age, sex,
    view, follow_up, original_width, original_height; set_id with the Google 2019 file),
    ``missing`` (image names not on disk).
    """

    findings = NIH_FINDINGS

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        csv: str | os.PathLike | None = None,
        image_dir: str | os.PathLike | None = None,
        bbox_csv: str | os.PathLike | None | bool = None,
        split: str = "all",
        split_lists: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        fractions: Sequence[float] = (0.7, 0.1, 0.2),
        seed: int = 0,
        missing: str = "exclude",
        image_size: int | None = 224,
        transform=None,
        on_error: str = "raise",
        label_set: str = "nih",
    ) -> None:
        super().__init__(image_size=image_size, transform=transform, on_error=on_error)
        if label_set not in LABEL_SETS:
            raise ValueError(f"label_set={label_set!r}: expected 'nih' or 'google2019'")
        self.label_set = label_set
        google = label_set == "google2019"
        root = Path(root) if root is not None else default_data_root() / "nih-chestxray14"
        image_dir = (Path(image_dir) if image_dir is not None
                     else default_image_dir(root, "images"))
        if csv is None and google:
            csv = first_existing(root / GOOGLE2019_FILE, root / f"{GOOGLE2019_FILE}.gz")
            csv = csv or torchxrayvision_data_file(f"{GOOGLE2019_FILE}.gz")
        elif csv is None:
            csv = first_existing(*(root / f"Data_Entry_2017{v}.csv{z}" for v in ("_v2020", "")
                                   for z in ("", ".gz")))
            csv = csv or torchxrayvision_data_file("Data_Entry_2017_v2020.csv.gz")
        csv = Path(csv) if csv is not None else None
        if csv is None:
            wanted = f"{GOOGLE2019_FILE}.gz" if google else "Data_Entry_2017_v2020.csv.gz"
            raise FileNotFoundError(f"NIH label table: no csv given and torchxrayvision's bundled "
                                    f"{wanted} not found; pass csv=...")
        table = read_table(csv, LABEL_COLUMNS + (GOOGLE2019_FINDINGS if google else []))
        if not google and is_google2019(table):
            raise ValueError(
                f"{csv}: the Google 2019 expert relabelling of NIH ChestX-ray14 (Majkowska et al., "
                f"Radiology 2019; {len(table)} images, expert columns {GOOGLE2019_FINDINGS}), not "
                "an NIH Data_Entry table: read as one, its expert labels would be ignored for "
                "NIH's text-mined 'Finding Labels'. Pass label_set='google2019' for the four "
                "expert labels, or a Data_Entry_2017*.csv for the 14 NIH findings")
        if google and split_lists is not None and split != "all":
            raise ValueError(f"split_lists with label_set='google2019': the official NIH lists "
                             f"do not apply to {csv}; leave split_lists=None (patient-disjoint "
                             "split of its rows; its own 'Set Id' is in metadata['set_id'])")
        check_filled(table, ["Image Index", "Patient ID"], str(csv))
        table["_row"] = np.arange(len(table))  # data row in the file, for error messages
        table["Image Index"] = table["Image Index"].astype(str).str.strip()
        dup = table["Image Index"].duplicated()
        if dup.any():
            raise ValueError(f"{csv}: 'Image Index' {table['Image Index'][dup].iloc[0]!r} listed "
                             "twice; expected one row per image")
        pids = np.array([f"{int(p):08d}" if str(p).strip().isdigit() else str(p).strip()
                         for p in table["Patient ID"]], dtype=object)

        rows = self._split_rows(table, pids, split, split_lists, fractions, seed, csv)
        table, pids = table.iloc[rows].reset_index(drop=True), pids[rows]

        found = index_images(image_dir, key="name", suffixes=IMAGE_SUFFIXES)
        keep, self.missing = match_listed(table["Image Index"], found, missing=missing,
                                          source=str(csv), folder=image_dir)
        table, pids = table[keep].reset_index(drop=True), pids[keep]
        self.paths = [found[n] for n in table["Image Index"]]
        if google:
            self.findings = list(GOOGLE2019_FINDINGS)
            self.labels = parse_expert_labels(table, str(csv), table["_row"].to_numpy())
        else:
            self.labels = parse_findings(table["Finding Labels"], str(csv),
                                         table["_row"].to_numpy())
        self.patient_ids = pids
        meta = {"image": table["Image Index"].to_numpy(), "patient_id": pids}
        for src, dst in METADATA_COLUMNS.items():
            if src in table.columns:
                meta[dst] = table[src].to_numpy()
        self.metadata = pd.DataFrame(meta)

        if bbox_csv is None:
            bbox_csv = first_existing(root / "BBox_List_2017.csv", root / "BBox_List_2017.csv.gz")
            bbox_csv = bbox_csv or torchxrayvision_data_file("BBox_List_2017.csv.gz")
        all_boxes = read_boxes(bbox_csv) if bbox_csv not in (None, False) else {}
        if google:  # NIH's box names -> the expert label names; boxes of other findings dropped
            all_boxes = {n: [(_GOOGLE_BOX_NAMES[f], *b) for f, *b in bs if f in _GOOGLE_BOX_NAMES]
                         for n, bs in all_boxes.items()}
        self._boxes = [all_boxes.get(n, []) for n in table["Image Index"]]

    @staticmethod
    def _split_rows(table, pids, split, split_lists, fractions, seed, csv) -> np.ndarray:
        if split_lists is None or split == "all":
            return select_split(pids, split, fractions, seed)
        if isinstance(split_lists, (str, os.PathLike)):
            folder = Path(split_lists)
            lists = (folder / "train_val_list.txt", folder / "test_list.txt")
        else:
            lists = tuple(Path(p) for p in split_lists)
        trainval, test = (_read_list(p) for p in lists)
        names = table["Image Index"].to_numpy()
        unknown = (trainval | test) - set(names)
        if unknown:
            raise ValueError(f"{len(unknown)} image(s) in the split lists are not in {csv}, "
                             f"e.g. {sorted(unknown)[:3]}")
        if split == "test":
            return np.flatnonzero(np.isin(names, list(test)))
        if split not in ("train", "val"):
            raise ValueError(f"split={split!r}: expected 'all', 'train', 'val' or 'test'")
        tv = np.flatnonzero(np.isin(names, list(trainval)))
        f = check_fractions(fractions)
        if f[0] + f[1] <= 0:
            raise ValueError(f"fractions={fractions}: train + val must be > 0 with split_lists")
        share = (f[0] / (f[0] + f[1]), f[1] / (f[0] + f[1]), 0.0)
        return tv[patient_split(pids[tv], share, seed)[split]]

    def boxes(self, index: int) -> list[tuple[str, float, float, float, float]]:
        """``(finding, x, y, w, h)`` in pixels of the returned image (scaling: module docstring)."""
        if not self._boxes[index]:
            return []
        sx, sy = box_scale(self.paths[index], self.image_size, BOX_REFERENCE)
        return [(f, float(x * sx), float(y * sy), float(w * sx), float(h * sy))
                for f, x, y, w, h in self._boxes[index]]

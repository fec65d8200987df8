"""DICOM reading: real files (SIIM JPEG baseline + its MONOCHROME1 copy, pydicom-data's 15-bit
MONOCHROME1 chest film uncompressed and in JPEG 2000) against hand-written DICOM equations, plus
written fixtures for bit depths, rescale, windows, VOI LUTs and unsupported files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.sequence import Sequence

from mlvicx_core.data.dicom import dicom_shape, read_dicom, write_dicom
from mlvicx_core.data.imageio import ImageReadError
from mlvicx_core.data.paths import shared_data_dir

SHARED = shared_data_dir()
SIIM = SHARED / "siim" if SHARED else None
needs_siim = pytest.mark.skipif(SIIM is None or not SIIM.is_dir(),
                                reason="shared SIIM DICOMs not found (set MLVICX_DATA_DIR)")


def _siim_pair() -> tuple[Path, Path]:
    mono1 = next(SIIM.glob("derived_MONOCHROME1_*.dcm"))
    orig = SIIM / mono1.name.replace("derived_MONOCHROME1_", "")
    return orig, mono1


def _testdata(name: str) -> Path:
    data = pytest.importorskip("pydicom.data", reason="pydicom-data not installed")
    try:
        return Path(data.get_testdata_file(name, download=False))
    except (TypeError, ValueError, OSError):
        pytest.skip(f"{name} not available offline (install pydicom-data)")


@pytest.mark.realdata
@needs_siim
def test_siim_jpeg_baseline_and_monochrome1_copy():
    orig, mono1 = _siim_pair()
    ds = pydicom.dcmread(orig)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"  # JPEG baseline
    a = read_dicom(orig)
    assert a.shape == (1024, 1024) and a.dtype == np.float32
    # 8 bits stored, no rescale, no window: y = s / 255.
    np.testing.assert_allclose(a, ds.pixel_array / 255.0, atol=1e-6)
    b = read_dicom(mono1)
    header = pydicom.dcmread(mono1, stop_before_pixels=True)
    assert header.PhotometricInterpretation == "MONOCHROME1"
    np.testing.assert_allclose(a + b, 1.0, atol=1e-6)
    assert dicom_shape(orig) == (1024, 1024)


def _rg1_reference(ds: pydicom.Dataset) -> np.ndarray:
    """DICOM LINEAR window written out by hand, then the MONOCHROME1 inversion."""
    s = ds.pixel_array.astype(np.float64)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    y = np.where(s <= c - 0.5 - (w - 1) / 2, 0.0,
                 np.where(s > c - 0.5 + (w - 1) / 2, 1.0, (s - (c - 0.5)) / (w - 1) + 0.5))
    return 1.0 - y


def test_rg1_uncompressed_15bit_monochrome1():
    path = _testdata("RG1_UNCR.dcm")
    ds = pydicom.dcmread(path)
    assert (ds.BitsStored, ds.PhotometricInterpretation) == (15, "MONOCHROME1")
    got = read_dicom(path)
    assert got.shape == (1955, 1841)
    np.testing.assert_allclose(got, _rg1_reference(ds), atol=1e-6)
    # Without the window: scaled by the 15-bit stored range, then inverted.
    np.testing.assert_allclose(read_dicom(path, apply_voi=False),
                               1.0 - ds.pixel_array / 32767.0, atol=1e-6)


def test_rg1_jpeg2000_equals_uncompressed():
    unc, j2k = _testdata("RG1_UNCR.dcm"), _testdata("RG1_J2KR.dcm")
    assert pydicom.dcmread(j2k, stop_before_pixels=True).file_meta.TransferSyntaxUID == \
        "1.2.840.10008.1.2.4.90"
    np.testing.assert_allclose(read_dicom(j2k), read_dicom(unc), atol=1e-6)


def test_bits_stored_signed_and_high_bits(tmp_path):
    s = np.array([[0, 100, 4095], [2048, 1, 7]], dtype=np.uint16)
    np.testing.assert_allclose(read_dicom(write_dicom(tmp_path / "a.dcm", s, bits_stored=12)),
                               s / 4095.0, atol=1e-7)
    # Bits above BitsStored (old overlay planes) are not pixel data.
    high = s | np.uint16(0x4000)
    np.testing.assert_allclose(read_dicom(write_dicom(tmp_path / "b.dcm", high, bits_stored=12)),
                               s / 4095.0, atol=1e-7)
    signed = np.array([[-2048, 0], [2047, -1]], dtype=np.int16)
    np.testing.assert_allclose(read_dicom(write_dicom(tmp_path / "c.dcm", signed, bits_stored=12)),
                               (signed + 2048.0) / 4095.0, atol=1e-7)


def test_rescale_slope_intercept_and_monochrome1(tmp_path):
    s = np.array([[0, 10], [200, 255]], dtype=np.uint8)
    # m = -2 s + 50 spans [-460, 50]; the negative slope reverses the order.
    p = write_dicom(tmp_path / "r.dcm", s, RescaleSlope=-2, RescaleIntercept=50)
    np.testing.assert_allclose(read_dicom(p), (-2.0 * s + 50 + 460) / 510.0, atol=1e-7)
    p = write_dicom(tmp_path / "m1.dcm", s, photometric="MONOCHROME1")
    np.testing.assert_allclose(read_dicom(p), 1.0 - s / 255.0, atol=1e-7)


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_windows(tmp_path, function):
    s = np.arange(0, 4096, 64, dtype=np.uint16).reshape(8, 8)
    # With slope 2 and intercept -1000 the window is applied to m = 2 s - 1000.
    p = write_dicom(tmp_path / "w.dcm", s, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1000,
                    WindowCenter=[3000, 10], WindowWidth=[4001, 5], VOILUTFunction=function)
    m = 2.0 * s - 1000.0
    c, w = 3000.0, 4001.0
    if function == "LINEAR":
        ref = np.clip((m - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    elif function == "LINEAR_EXACT":
        ref = np.clip((m - c) / w + 0.5, 0, 1)
    else:
        ref = 1 / (1 + np.exp(-4 * (m - c) / w))
    np.testing.assert_allclose(read_dicom(p), ref, atol=1e-6)
    ref2 = np.clip((m - 9.5) / 4 + 0.5, 0, 1) if function == "LINEAR" else None
    if ref2 is not None:  # second window of a multi-valued WindowCenter/Width
        np.testing.assert_allclose(read_dicom(p, voi_index=1), ref2, atol=1e-6)


def test_voi_lut_sequence(tmp_path):
    s = np.array([[0, 3], [100, 255]], dtype=np.uint8)
    item = pydicom.Dataset()
    item.LUTDescriptor = [256, 0, 16]
    item.add_new("LUTData", "US", [int(v) ** 2 for v in range(256)])  # square law: 0 .. 65025
    p = write_dicom(tmp_path / "lut.dcm", s, VOILUTSequence=Sequence([item]))
    np.testing.assert_allclose(read_dicom(p), (s.astype(np.float64) ** 2) / 255.0 ** 2, atol=1e-6)


def test_unsupported_dicoms_name_the_file(tmp_path):
    s = np.zeros((4, 4), np.uint8)
    p = write_dicom(tmp_path / "nopix.dcm", s)
    ds = pydicom.dcmread(p)
    del ds.PixelData
    ds.save_as(p)
    with pytest.raises(ImageReadError, match=r"nopix\.dcm.*without pixel data"):
        read_dicom(p)

    p = write_dicom(tmp_path / "rgb.dcm", np.zeros((4, 12), np.uint8))
    ds = pydicom.dcmread(p)
    ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 4, 3, "RGB"
    ds.PlanarConfiguration = 0
    ds.save_as(p)
    with pytest.raises(ImageReadError, match=r"rgb\.dcm.*colour"):
        read_dicom(p)

    p = write_dicom(tmp_path / "frames.dcm", np.zeros((8, 4), np.uint8))
    ds = pydicom.dcmread(p)
    ds.Rows, ds.NumberOfFrames = 4, 2
    ds.save_as(p)
    with pytest.raises(ImageReadError, match=r"frames\.dcm.*multi-frame"):
        read_dicom(p)

    (tmp_path / "junk.dcm").write_bytes(b"\x00" * 10 + b"garbage")
    with pytest.raises(ImageReadError, match=r"junk\.dcm"):
        read_dicom(tmp_path / "junk.dcm")

    good = write_dicom(tmp_path / "good.dcm", np.full((64, 64), 9, np.uint8)).read_bytes()
    (tmp_path / "trunc.dcm").write_bytes(good[: len(good) - 2000])
    with pytest.raises(ImageReadError, match=r"trunc\.dcm"):
        read_dicom(tmp_path / "trunc.dcm")

    with pytest.raises(FileNotFoundError, match=r"absent\.dcm"):
        read_dicom(tmp_path / "absent.dcm")

"""PNG/JPEG reading: values against independent Pillow/numpy computations, bit depths, colour
handling and every bad-file case."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from mlvicx_core.data.imageio import ImageReadError, png_significant_bits, read_image
from mlvicx_core.data.paths import shared_data_dir

SHARED = shared_data_dir()
NIH64 = SHARED / "nih" / "images-64px" if SHARED else None
NIH512 = SHARED / "nih" / "images-512px" if SHARED else None
needs_nih = pytest.mark.skipif(NIH64 is None or not NIH64.is_dir(),
                               reason="shared NIH PNGs not found (set MLVICX_DATA_DIR)")


def _files_by_mode(folder: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for p in sorted(folder.glob("*.png")):
        with Image.open(p) as im:
            out.setdefault(im.mode, []).append(p)
    return out


@pytest.mark.realdata
@needs_nih
def test_nih_64px_rgb_and_rgba_reduce_to_their_grey_channel():
    modes = _files_by_mode(NIH64)
    assert len(modes["RGB"]) == 979 and len(modes["RGBA"]) == 21
    for p in modes["RGBA"] + modes["RGB"][::50]:
        raw = np.asarray(Image.open(p)).astype(np.float64)
        # Independent reference: these files store grey in R = G = B, so luminance = R / 255.
        assert (raw[..., 0] == raw[..., 1]).all() and (raw[..., 0] == raw[..., 2]).all()
        img = read_image(p)
        assert img.shape == (64, 64) and img.dtype == np.float32
        np.testing.assert_allclose(img, raw[..., 0] / 255.0, atol=1e-6)


@pytest.mark.realdata
@needs_nih
def test_rgba_alpha_is_ignored(tmp_path):
    p = _files_by_mode(NIH64)["RGBA"][0]
    rgba = np.asarray(Image.open(p)).copy()
    rgba[..., 3] = np.arange(64, dtype=np.uint8)[None, :] * 4  # varying transparency
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), read_image(p))


@pytest.mark.realdata
@pytest.mark.skipif(NIH512 is None or not NIH512.is_dir(), reason="shared 512 px NIH PNGs absent")
def test_nih_512px_grey():
    files = sorted(NIH512.glob("*.png"))
    assert len(files) == 2
    for p in files:
        raw = np.asarray(Image.open(p))
        assert raw.dtype == np.uint8 and raw.ndim == 2
        img = read_image(p)
        assert img.shape == (512, 512)
        np.testing.assert_allclose(img, raw / 255.0, atol=1e-7)


def test_rgb_luminance_when_colour_allowed(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb, "RGB").save(tmp_path / "c.png")
    with pytest.raises(ImageReadError, match=r"c\.png.*colour"):
        read_image(tmp_path / "c.png")
    got = read_image(tmp_path / "c.png", allow_colour=True)
    r, g, b = (rgb[..., k].astype(np.float64) for k in range(3))
    np.testing.assert_allclose(got, (0.299 * r + 0.587 * g + 0.114 * b) / 255.0, atol=1e-6)


def test_grey_la_and_jpeg(tmp_path):
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    la = np.stack([grey, np.full_like(grey, 7)], -1)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    np.testing.assert_allclose(read_image(tmp_path / "la.png"), grey / 255.0, atol=1e-7)
    Image.fromarray(grey, "L").save(tmp_path / "g.jpg", quality=95)
    ref = np.asarray(Image.open(tmp_path / "g.jpg")) / 255.0  # what the JPEG decodes to
    np.testing.assert_allclose(read_image(tmp_path / "g.jpg"), ref, atol=1e-7)


def _add_sbit(png: Path, bits: int) -> None:
    """Insert an sBIT chunk right after IHDR (Pillow does not write one)."""
    data = png.read_bytes()
    ihdr_end = 8 + 8 + 13 + 4
    body = b"sBIT" + bytes([bits])
    chunk = struct.pack(">I", 1) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
    png.write_bytes(data[:ihdr_end] + chunk + data[ihdr_end:])


def test_sixteen_bit_png_scaling(tmp_path):
    vals = np.array([[0, 1000, 4095], [65535, 32768, 7]], dtype=np.uint16)
    Image.fromarray(vals).save(tmp_path / "a16.png")
    assert np.asarray(Image.open(tmp_path / "a16.png")).max() == 65535  # really 16-bit on disk
    np.testing.assert_allclose(read_image(tmp_path / "a16.png"), vals / 65535.0, atol=1e-7)

    twelve = np.array([[0, 1000], [4095, 2048]], dtype=np.uint16)
    Image.fromarray(twelve).save(tmp_path / "b12.png")
    np.testing.assert_allclose(read_image(tmp_path / "b12.png", bit_depth=12), twelve / 4095.0,
                               atol=1e-7)
    _add_sbit(tmp_path / "b12.png", 12)
    assert png_significant_bits(tmp_path / "b12.png") == 12
    np.testing.assert_allclose(read_image(tmp_path / "b12.png"), twelve / 4095.0, atol=1e-7)

    # A declared depth that the data exceed is an error, not a silent clip.
    with pytest.raises(ImageReadError, match=r"a16\.png.*12-bit"):
        read_image(tmp_path / "a16.png", bit_depth=12)


def test_corrupt_truncated_and_missing_files_name_the_path(tmp_path, monkeypatch):
    grey = (np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64)
    Image.fromarray(grey).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.png").write_bytes(b"not an image at all" * 10)
    for name in ("trunc.png", "junk.png"):
        with pytest.raises(ImageReadError, match=name.replace(".", r"\.")):
            read_image(tmp_path / name)
    # Pillow's global lenient flag would pad a truncated file with grey; we still refuse it.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageReadError, match=r"trunc\.png"):
        read_image(tmp_path / "trunc.png")
    np.testing.assert_allclose(read_image(tmp_path / "ok.png"), grey / 255.0, atol=1e-7)
    with pytest.raises(FileNotFoundError, match=r"nothere\.png"):
        read_image(tmp_path / "nothere.png")


def test_unsupported_mode(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.float32), "F").save(tmp_path / "f.tiff")
    with pytest.raises(ImageReadError, match=r"f\.tiff.*mode 'F'"):
        read_image(tmp_path / "f.tiff")


def test_unreadable_files_leave_no_open_file_handle(tmp_path):
    """Issue 12 item 18: a truncated PNG left its file handle open (ResourceWarning)."""
    import gc
    import warnings

    grey = (np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64)
    Image.fromarray(grey).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    Image.fromarray(np.zeros((2, 2), np.uint16)).save(tmp_path / "a16.png")
    Image.fromarray(np.zeros((4, 4), np.float32), "F").save(tmp_path / "f.tiff")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for name, kw in (("trunc.png", {}), ("f.tiff", {}), ("a16.png", {})):
            with pytest.raises(ImageReadError, match=name.replace(".", r"\.")):
                read_image(tmp_path / name, **kw)
            gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []


def test_sixteen_bit_png_without_sbit_is_16_bit_only_when_its_values_need_16_bits(tmp_path):
    """Issue 12 item 15: a 12-bit PNG without an sBIT chunk was divided by 65535 (near black).
    Without sBIT and without bit_depth, a 16-bit file is read as 16-bit only when its maximum has
    the top bit set (>= 32768: no smaller depth can hold it); otherwise the depth is ambiguous and
    reading refuses, naming the file, the value range and the bit_depth to pass."""
    twelve = np.array([[0, 1000], [4095, 2048]], dtype=np.uint16)
    Image.fromarray(twelve).save(tmp_path / "b12.png")
    assert png_significant_bits(tmp_path / "b12.png") is None
    with pytest.raises(ImageReadError, match=r"b12\.png: 16-bit image without an sBIT chunk, "
                                             r"values in \[0, 4095\].*bit_depth=12"):
        read_image(tmp_path / "b12.png")
    np.testing.assert_allclose(read_image(tmp_path / "b12.png", bit_depth=12),
                               twelve / 4095.0, atol=1e-7)
    np.testing.assert_allclose(read_image(tmp_path / "b12.png", bit_depth=16),
                               twelve / 65535.0, atol=1e-7)  # a dark 16-bit image, if so declared
    ten = np.array([[0, 700]], dtype=np.uint16)
    Image.fromarray(ten).save(tmp_path / "b10.png")
    with pytest.raises(ImageReadError, match=r"\[0, 700\].*bit_depth=10"):
        read_image(tmp_path / "b10.png")
    top = np.array([[0, 32768], [100, 40000]], dtype=np.uint16)  # top bit used: surely 16-bit
    Image.fromarray(top).save(tmp_path / "top.png")
    np.testing.assert_allclose(read_image(tmp_path / "top.png"), top / 65535.0, atol=1e-7)
    for bad in (0, 17, 12.5, True, "12"):
        with pytest.raises(ValueError, match=r"bit_depth=.*expected None .* or an integer 1\.\.16"):
            read_image(tmp_path / "top.png", bit_depth=bad)


def test_file_datasets_take_bit_depth(tmp_path):
    """``bit_depth`` reaches the reader from ImageFolderDataset (16-bit PNG/TIFF only; DICOM
    files keep their BitsStored) and is part of the cache key."""
    from mlvicx_core.data.cache import source_fingerprint
    from mlvicx_core.data.dicom import write_dicom
    from mlvicx_core.data.folder import ImageFolderDataset

    # 8 x 8: the smallest radiograph the readers accept (issue 19)
    vals = np.tile(np.array([[0, 1023], [4095, 2048]], dtype=np.uint16), (4, 4))
    Image.fromarray(vals).save(tmp_path / "a.png")
    Image.fromarray(np.full((8, 8), 51, np.uint8)).save(tmp_path / "b.png")  # 8-bit: unaffected
    write_dicom(tmp_path / "c.dcm", np.full((8, 8), 1000, np.uint16), bits_stored=10)
    ds = ImageFolderDataset(tmp_path, image_size=None, bit_depth=12)
    assert ds.bit_depth == 12
    np.testing.assert_allclose(ds[0]["image"][0].numpy(), vals / 4095.0, atol=1e-7)
    np.testing.assert_allclose(ds[1]["image"][0].numpy(), 51 / 255.0, atol=1e-7)
    np.testing.assert_allclose(ds[2]["image"][0].numpy(), 1000 / 1023.0, atol=1e-6)  # 10 bits
    default = ImageFolderDataset(tmp_path, image_size=None)
    with pytest.raises(ImageReadError, match=r"a\.png.*bit_depth=12"):
        default[0]
    assert source_fingerprint(ds, 2) != source_fingerprint(default, 2)
    with pytest.raises(ValueError, match=r"bit_depth=20.*an integer 1\.\.16"):
        ImageFolderDataset(tmp_path, bit_depth=20)


def test_a_tiny_image_is_an_error_naming_the_file_not_a_stretched_picture(tmp_path):
    """Issue 19 item 7: a 1 x 1 PNG became a constant 64 x 64 'radiograph' without a word."""
    import warnings

    from mlvicx_core.data.folder import ImageFolderDataset

    Image.fromarray(np.full((20, 20), 90, np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((1, 1), 200, np.uint8)).save(tmp_path / "b.png")
    Image.fromarray(np.full((7, 30), 10, np.uint8)).save(tmp_path / "c.png")  # 7 px high
    Image.fromarray(np.full((8, 8), 50, np.uint8)).save(tmp_path / "d.png")  # the smallest allowed
    ds = ImageFolderDataset(tmp_path, image_size=64)
    assert ds[0]["image"].shape == (1, 64, 64)
    with pytest.raises(ImageReadError, match=rf"^{tmp_path / 'b.png'}: image of 1 x 1 px; expected "
                                             r"a radiograph of at least 8 px a side"):
        ds[1]
    with pytest.raises(ImageReadError, match=rf"^{tmp_path / 'c.png'}: image of 30 x 7 px"):
        ds[2]
    np.testing.assert_allclose(ds[3]["image"].numpy(), 50 / 255, atol=1e-6)
    skipping = ImageFolderDataset(tmp_path, image_size=64, on_error="skip")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sample = skipping[1]  # replaced by the next readable one
    assert sample["index"] == 3 and skipping.skipped == [str(tmp_path / "b.png"),
                                                         str(tmp_path / "c.png")]
    assert [str(w.message).split(":")[0] for w in caught] == [
        f"skipping {tmp_path / 'b.png'}", f"skipping {tmp_path / 'c.png'}"]


def test_a_tiny_image_stops_pretraining_with_one_line(tmp_path, capsys):
    from mlvicx_core.cli import main

    for i in range(8):
        Image.fromarray(np.full((40, 40), 20 * i, np.uint8)).save(tmp_path / f"{i}.png")
    Image.fromarray(np.full((1, 1), 200, np.uint8)).save(tmp_path / "3.png")
    code = main(["pretrain", "--set", "data.dataset=folder", "--set", f"data.root={tmp_path}",
                 "--set", "model.projector=[16]", "--set", "model.ml_projector=[16]",
                 "--set", "model.fusion_channels=8", "--set", "model.fusion_size=8",
                 "--set", "model.pool_size=2", "--set", "train.batch_size=8",
                 "--set", "train.progress=false", "--set", "train.tensorboard=false",
                 "--set", "train.eval_every=0", "--set", f"train.out_dir={tmp_path / 'runs'}",
                 "--set", "train.max_steps=1"])
    assert code == 2
    assert capsys.readouterr().err == (
        f"mlvicx pretrain: error: {tmp_path / '3.png'}: image of 1 x 1 px; expected a radiograph "
        "of at least 8 px a side (stretching it to 64 px would make a picture of nothing)\n"
        "(to skip unreadable files instead, add --set data.on_error=skip)\n")

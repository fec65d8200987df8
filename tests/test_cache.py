"""Preprocessing cache: fidelity, crash safety, invalidation, keys, metadata, parallel build."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from mlvicx_core.config import AugConfig
from mlvicx_core.data.augment import BatchTwoViews
from mlvicx_core.data.base import CXRDataset, resize_image
from mlvicx_core.data.cache import (
    CachedDataset,
    build_cache,
    cache_dir,
    read_manifest,
    source_fingerprint,
)


class NpyFolder(CXRDataset):
    """A folder of float32 .npy images of mixed native sizes, known labels (with NaN) and ids."""

    findings = ["Effusion", "Nodule"]

    def __init__(self, root, image_size=16, **kw):
        super().__init__(image_size=image_size, **kw)
        self.root = str(root)
        self.files = sorted(os.listdir(root))
        n = len(self.files)
        self.labels = np.array([[i % 2, np.nan if i == 1 else 1.0] for i in range(n)], np.float32)
        self.patient_ids = np.array([f"pat{i // 2}" for i in range(n)], dtype=object)

    def load_image(self, i):
        return np.load(os.path.join(self.root, self.files[i]))

    def describe(self, i):
        return os.path.join(self.root, self.files[i])


class Exploding(NpyFolder):
    """Fails hard (not a bad-file error) at one index: a build interrupted half-way."""

    def load_image(self, i):
        if i == 3:
            raise RuntimeError("power cut")
        return super().load_image(i)


def write_images(folder, n=6, seed=0):
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        shape = (40, 40) if i % 2 == 0 else (50, 30)
        np.save(folder / f"img{i:02d}.npy", rng.random(shape).astype(np.float32))
    return folder


@pytest.fixture
def src(tmp_path):
    return write_images(tmp_path / "src")


def test_cached_images_equal_source_within_quantisation(src, tmp_path):
    source = NpyFolder(src)
    cached = CachedDataset(source, root=tmp_path / "cache")
    assert cached.built and len(cached) == len(source) == 6
    for i in range(len(source)):
        a, b = source[i], cached[i]
        # reference: the kit's resize of the raw file, rounded to 8 bits by hand
        raw = torch.from_numpy(np.load(src / f"img{i:02d}.npy"))[None]
        ref_u8 = np.rint(resize_image(raw, 16)[0].numpy() * 255).astype(np.uint8)
        assert np.array_equal(cached.images[i], ref_u8)
        assert b["image"].shape == (1, 16, 16) and b["image"].dtype == torch.float32
        assert (b["image"] - a["image"]).abs().max() <= 0.5 / 255 + 1e-6
        np.testing.assert_array_equal(b["labels"].numpy(), a["labels"].numpy())  # NaN kept
        assert b["patient_id"] == a["patient_id"] == f"pat{i // 2}" and b["index"] == i
    assert cached.findings == ["Effusion", "Nodule"]
    again = CachedDataset(NpyFolder(src), root=tmp_path / "cache")
    assert not again.built  # reused, not rebuilt


def test_transform_applies_on_top_and_two_views_work(src, tmp_path):
    plain = CachedDataset(NpyFolder(src), root=tmp_path / "c")
    flipped = CachedDataset(NpyFolder(src), root=tmp_path / "c", transform=lambda x: x.flip(-1))
    assert torch.equal(flipped[2]["image"], plain[2]["image"].flip(-1))
    view_a, _ = BatchTwoViews(AugConfig(), 8, seed=0)(plain[4]["image"][None])
    assert view_a.shape == (1, 1, 8, 8) and plain[4]["patient_id"] == "pat2"


def test_interrupted_build_leaves_nothing_usable_and_next_build_succeeds(src, tmp_path):
    root = tmp_path / "cache"
    final = cache_dir(root, "NpyFolder", "all", 16)
    with pytest.raises(RuntimeError, match="power cut"):
        CachedDataset(Exploding(src), root=root, name="NpyFolder")
    assert not final.exists() and list(final.parent.iterdir()) == []  # temporary removed too

    def interrupt(done):
        raise KeyboardInterrupt  # Ctrl-C after the first batch was written to the memory map
    source = NpyFolder(src)
    with pytest.raises(KeyboardInterrupt):
        build_cache(source, final, 16, source_fingerprint(source, 16), batch_size=2,
                    on_write=interrupt)
    assert read_manifest(final) is None and list(final.parent.iterdir()) == []
    ok = CachedDataset(NpyFolder(src), root=root)
    assert ok.built and read_manifest(final)["n"] == 6


def test_killed_build_leftovers_are_ignored_and_cleaned(src, tmp_path):
    root = tmp_path / "cache"
    first = CachedDataset(NpyFolder(src), root=root)
    # a complete-looking entry whose manifest never got written is not trusted
    (first.path / "manifest.json").unlink()
    assert read_manifest(first.path) is None
    # a temporary directory of a process that died (a finished child's pid) is swept away
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    import socket
    stale = first.path.parent / f".16px.tmp-{socket.gethostname()}-{dead}-abcd1234"
    stale.mkdir()
    (stale / "images.npy").write_bytes(b"half")
    rebuilt = CachedDataset(NpyFolder(src), root=root)
    assert rebuilt.built and not stale.exists()
    assert sorted(p.name for p in first.path.parent.iterdir()) == ["16px"]
    assert torch.equal(rebuilt[0]["image"], first[0]["image"])


def test_concurrent_build_of_the_same_key_keeps_one_valid_entry(src, tmp_path):
    source = NpyFolder(src)
    final = cache_dir(tmp_path, "NpyFolder", "all", 16)
    fp = source_fingerprint(source, 16)
    other = []

    def race(done):  # another process finishes the same build while this one is half-way
        if not other:
            other.append(build_cache(source, final, 16, fp))
    build_cache(source, final, 16, fp, batch_size=2, on_write=race)
    assert read_manifest(final, fp) == other[0]
    assert sorted(p.name for p in final.parent.iterdir()) == ["16px"]
    inode = os.stat(final / "images.npy").st_ino
    forced = CachedDataset(NpyFolder(src), root=tmp_path, rebuild=True)
    assert forced.built and read_manifest(final, fp) is not None
    assert os.stat(final / "images.npy").st_ino != inode  # really rewritten


def test_changing_a_source_file_invalidates(src, tmp_path):
    root = tmp_path / "cache"
    assert CachedDataset(NpyFolder(src), root=root).built
    f = src / "img02.npy"
    np.save(f, np.full((40, 40), 0.25, np.float32))          # same size, new content
    st = os.stat(f)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # make sure the mtime moves
    new = CachedDataset(NpyFolder(src), root=root)
    assert new.built
    assert torch.allclose(new[2]["image"], torch.full((1, 16, 16), 0.25), atol=0.5 / 255)
    fp = source_fingerprint(NpyFolder(src), 16)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))  # touch only: still a change
    assert source_fingerprint(NpyFolder(src), 16) != fp
    relabelled = NpyFolder(src)
    relabelled.labels[0, 0] = 1 - relabelled.labels[0, 0]
    assert source_fingerprint(relabelled, 16) != source_fingerprint(NpyFolder(src), 16)
    assert source_fingerprint(NpyFolder(src), 16) != source_fingerprint(NpyFolder(src), 24)


def test_keys_differ_by_size_and_split(src, tmp_path):
    root = tmp_path / "cache"
    a = CachedDataset(NpyFolder(src), size=16, root=root)
    b = CachedDataset(NpyFolder(src), size=24, root=root)
    c = CachedDataset(NpyFolder(src), size=16, root=root, split="train")
    assert len({a.path, b.path, c.path}) == 3
    assert a.path == root / "NpyFolder" / "all" / "16px" and c.path.parent.name == "train"
    assert b[0]["image"].shape == (1, 24, 24)
    assert not CachedDataset(NpyFolder(src), size=16, root=root).built  # both still valid
    with pytest.raises(ValueError, match="split"):
        cache_dir(root, "x", "../up", 16)


def test_parallel_build_equals_serial(src, tmp_path):
    serial = CachedDataset(NpyFolder(src), root=tmp_path / "a")
    parallel = CachedDataset(NpyFolder(src), root=tmp_path / "b", num_workers=2)
    assert np.array_equal(serial.images, parallel.images)


def test_unreadable_file_raise_or_skip(src, tmp_path):
    (src / "img03.npy").write_bytes(b"not an array")
    with pytest.raises(ValueError, match="img03.npy"):
        CachedDataset(NpyFolder(src), root=tmp_path / "r")
    with pytest.warns(UserWarning, match="img03.npy"):
        cached = CachedDataset(NpyFolder(src, on_error="skip"), root=tmp_path / "s")
    assert cached.ok.tolist() == [True, True, True, False, True, True]
    with pytest.warns(UserWarning, match="skipping"):
        sample = cached[3]
    assert sample["index"] == 4  # replaced by the next readable one, as the base class does


class NoLoader(CXRDataset):
    """A dataset that only overrides _sample (no load_image): cached through its samples."""

    findings = ["x"]

    def __init__(self, **kw):
        super().__init__(**kw)
        self.labels = np.zeros((3, 1), np.float32)
        self.patient_ids = np.array(["a", "b", "c"], dtype=object)

    def _sample(self, i):
        img = torch.full((1, self.image_size, self.image_size), i / 4)
        return {"image": img, "labels": torch.zeros(1), "index": i, "patient_id": "a"}


def test_dataset_without_load_image_is_cached_from_samples(tmp_path):
    cached = CachedDataset(NoLoader(image_size=12), root=tmp_path)
    assert cached.images[2].tolist() == [[round(255 * 0.5)] * 12] * 12
    with pytest.raises(ValueError, match="transform=None and image_size=12"):
        CachedDataset(NoLoader(image_size=12, transform=lambda x: x), root=tmp_path / "other")


class Masked(NpyFolder):
    has_masks = True

    def load_mask(self, i):
        m = np.zeros((2, 40, 40) if i % 2 == 0 else (2, 50, 30), bool)
        m[0, :10] = True
        return m


def test_masks_and_boxes_come_from_the_source(src, tmp_path):
    source = Masked(src)
    cached = CachedDataset(source, root=tmp_path)
    assert torch.equal(cached[0]["mask"], source[0]["mask"])
    source.boxes = lambda i: [("Nodule", 4.0, 2.0, 8.0, 6.0)]
    big = CachedDataset(source, size=32, root=tmp_path)
    assert big.boxes(0) == [("Nodule", 8.0, 4.0, 16.0, 12.0)]


def _nih_64px():
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    root = os.environ.get("MLVICX_DATA_DIR") or repo.parent / "shared" / "data"
    folder = Path(root) / "nih" / "images-64px"
    if not folder.is_dir():
        pytest.skip(f"real NIH PNGs not found at {folder} (set MLVICX_DATA_DIR)")
    return folder


@pytest.mark.realdata
def test_real_nih_pngs_cache_and_augment(tmp_path):
    from PIL import Image

    class Pngs(CXRDataset):
        def __init__(self, paths):
            super().__init__(image_size=64)
            self.paths = paths
            self.labels = np.zeros((len(paths), 0), np.float32)
            self.patient_ids = np.array([p.name[:8] for p in paths], dtype=object)

        def load_image(self, i):
            with Image.open(self.paths[i]) as im:  # RGB and RGBA files reduce to grey
                return np.asarray(im.convert("L"), np.float32) / 255

        def describe(self, i):
            return str(self.paths[i])

    paths = sorted(_nih_64px().glob("*.png"))[:24]
    cached = CachedDataset(Pngs(paths), root=tmp_path)
    for i in (0, 11, 23):
        with Image.open(paths[i]) as im:
            grey = np.asarray(im.convert("L"))
        assert np.array_equal(cached.images[i], grey)  # 64 px in, 64 px out: the very bytes
    view_a, _ = BatchTwoViews(AugConfig(), 32, seed=0)(cached[5]["image"][None])
    assert view_a.shape == (1, 1, 32, 32) and cached[5]["patient_id"] == paths[5].name[:8]


def test_dead_temporaries_are_cleaned_when_the_host_name_has_dashes(src, tmp_path, monkeypatch):
    """Issue 12 item 6: the owner of ``.<S>px.tmp-<host>-<pid>-<hex>`` was parsed with
    ``rsplit("-", 3)``, so a host such as ``node-07-gpu`` never matched and its leftovers leaked."""
    from mlvicx_core.data import cache as cache_mod
    monkeypatch.setattr(cache_mod.socket, "gethostname", lambda: "node-07-gpu")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    final = cache_dir(tmp_path, "NpyFolder", "all", 16)
    final.parent.mkdir(parents=True)
    mine_dead = final.parent / f".16px.tmp-node-07-gpu-{dead}-abcd1234"
    mine_alive = final.parent / f".16px.tmp-node-07-gpu-{os.getpid()}-abcd1234"
    other_host = final.parent / f".16px.tmp-07-gpu-{dead}-abcd1234"  # host "07-gpu": not ours
    for d in (mine_dead, mine_alive, other_host):
        d.mkdir()
        (d / "images.npy").write_bytes(b"half")
    built = CachedDataset(NpyFolder(src), root=tmp_path)
    assert built.built
    left = sorted(p.name for p in final.parent.iterdir())
    assert left == sorted(["16px", mine_alive.name, other_host.name])


def _u8_of(path, size=16):
    raw = torch.from_numpy(np.load(path))[None]
    return np.rint(resize_image(raw, size)[0].numpy() * 255).astype(np.uint8)


def test_live_dataset_keeps_its_own_entry_after_another_process_rebuilds_it(src, tmp_path):
    """Issue 12 item 7: a live CachedDataset opened images.npy lazily by path, so after another
    build of the same entry (a file was added) it served the new file's pixels under its old ids."""
    import pickle
    root = tmp_path / "cache"
    old = CachedDataset(NpyFolder(src), root=root)
    old_files = [src / f for f in NpyFolder(src).files]
    np.save(src / "img00b.npy", np.full((40, 40), 0.75, np.float32))  # sorts between 00 and 01
    new = CachedDataset(NpyFolder(src), root=root)  # "another process": same key, rebuilt
    assert new.built and new.path == old.path and len(new) == 7
    assert np.array_equal(new.images[1], np.full((16, 16), round(0.75 * 255), np.uint8))
    # the live dataset still serves, index by index, the pixels its labels and ids belong to
    assert len(old) == 6
    for i, f in enumerate(old_files):
        assert np.array_equal(old.images[i], _u8_of(f)), i
        assert torch.equal(old[i]["image"][0], torch.from_numpy(_u8_of(f)).float() / 255)
        assert old[i]["patient_id"] == f"pat{i // 2}"
    # DataLoader workers started by fork share the open map: same pixels
    loader = torch.utils.data.DataLoader(old, batch_size=6, num_workers=1)
    batch = next(iter(loader))
    expect = torch.from_numpy(np.stack([_u8_of(f) for f in old_files])).float() / 255
    assert torch.equal(batch["image"][:, 0], expect)
    # a pickled copy (a spawned worker) cannot reach the replaced files: a clear error, not
    # another file's pixels
    copy = pickle.loads(pickle.dumps(old))
    with pytest.raises(RuntimeError, match=r"16px.*rebuilt.*since this CachedDataset was opened"):
        copy[1]
    # an unchanged entry re-opens fine in a copy
    fresh = pickle.loads(pickle.dumps(new))
    assert torch.equal(fresh[1]["image"], new[1]["image"])

"""Checkpoint loading, the transferable trunk, feature extraction and its on-disk cache."""
import numpy as np
import pytest
import torch
from eval_fakes import BlobCXR, tiny_model

from mlvicx_core.evaluation import embeddings as emb
from mlvicx_core.checkpoints import CheckpointError
from mlvicx_core.checkpoints import load_model as load_encoder
from mlvicx_core.checkpoints import save_model as save_encoder
from mlvicx_core.evaluation.baselines import reference_encoder
from mlvicx_core.evaluation.embeddings import dataset_fingerprint, extract_features
from mlvicx_core.evaluation.trunk import Trunk


def test_load_encoder_round_trip_and_strictness(tmp_path):
    model = tiny_model(seed=1)
    save_encoder(model, tmp_path / "a.pt")
    loaded = load_encoder(tmp_path / "a.pt")
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).global_, model(x).global_)
        torch.testing.assert_close(loaded(x).multi, model(x).multi)
    ckpt = torch.load(tmp_path / "a.pt", weights_only=False)
    del ckpt["model"]["projector.0.weight"]
    torch.save(ckpt, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match=r"b\.pt.*missing \['projector\.0\.weight'\]"):
        load_encoder(tmp_path / "b.pt")
    torch.save({"state_dict": {}}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="c.pt: expected a 'model' entry"):
        load_encoder(tmp_path / "c.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_encoder(tmp_path / "nope.pt")


def test_trunk_copies_weights_and_drops_or_keeps_gates():
    model = tiny_model()
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        gated = Trunk(model, keep_gates=True)(x)
        torch.testing.assert_close(gated, model.encode(x))  # with gates == the model's encoder
        plain = Trunk(model)(x)
        b = model.backbone  # without gates == plain torchvision ResNet pooled features
        torch.testing.assert_close(plain, b(model.normalize(x)))
    trunk = Trunk(model)
    with torch.no_grad():
        trunk.backbone.conv1.weight.zero_()
    assert model.backbone.conv1.weight.abs().sum() > 0  # a copy, the pretrained model is untouched


def test_extract_features_kinds_values_and_cache(tmp_path, monkeypatch):
    model = tiny_model()
    ds = BlobCXR(n=10)
    feats = extract_features(model, ds, "trunk", batch_size=4, cache_dir=tmp_path)
    assert feats.x.shape == (10, 512) and feats.labels.shape == (10, 2)
    np.testing.assert_array_equal(feats.index, np.arange(10))
    assert list(feats.patient_ids[:3]) == ["p000", "p000", "p001"]
    images = torch.stack([ds[i]["image"] for i in range(10)])
    with torch.no_grad():
        np.testing.assert_allclose(feats.x, Trunk(model)(images).numpy(), atol=1e-5)
        out = model(images)
    g = extract_features(model, ds, "global", batch_size=4)
    m = extract_features(model, ds, "multi", batch_size=4)
    np.testing.assert_allclose(g.x, out.global_.numpy(), atol=1e-5)
    np.testing.assert_allclose(m.x, out.multi.numpy(), atol=1e-5)

    # cache hit: identical arrays, and the network is not run again
    monkeypatch.setattr(emb, "_extract", lambda *a, **k: pytest.fail("cache miss"))
    again = extract_features(model, ds, "trunk", batch_size=4, cache_dir=tmp_path)
    for a, b in zip(feats, again):
        np.testing.assert_array_equal(a, b)
    monkeypatch.undo()
    # a changed checkpoint (one weight) misses and yields other features
    with torch.no_grad():
        model.backbone.layer4[1].conv2.weight.mul_(1.5)
    changed = extract_features(model, ds, "trunk", batch_size=4, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 2
    assert not np.allclose(changed.x, feats.x)
    # another dataset (other seed) has another identity
    assert dataset_fingerprint(BlobCXR(n=10, seed=1)) != dataset_fingerprint(ds)
    assert dataset_fingerprint(BlobCXR(n=10)) == dataset_fingerprint(ds)


def test_extract_errors_and_baselines():
    vicreg = tiny_model(multilevel=False, context_bottleneck=False)
    with pytest.raises(ValueError, match="multi-level branch"):
        extract_features(vicreg, BlobCXR(n=4), "multi")
    with pytest.raises(ValueError, match="kind='pooled'"):
        extract_features(vicreg, BlobCXR(n=4), "pooled")
    r1 = reference_encoder("random", vicreg.config, seed=5)
    r2 = reference_encoder("random", vicreg.config, seed=5)
    torch.testing.assert_close(r1.backbone.conv1.weight, r2.backbone.conv1.weight)
    with pytest.raises(ValueError, match="reference encoder 'simclr'"):
        reference_encoder("simclr", vicreg.config)


def test_feature_cache_key_covers_every_image_in_memory(tmp_path):
    """Issue 12 item 8: the key hashed only the first and last image, so a changed middle image
    returned stale features from the cache."""
    model = tiny_model()
    ds = BlobCXR(n=10)
    before = extract_features(model, ds, "trunk", batch_size=4, cache_dir=tmp_path)
    key = dataset_fingerprint(ds)
    ds.noise[5] = 0.0  # one middle image goes black; labels, ids, first and last image unchanged
    assert dataset_fingerprint(ds) != key
    after = extract_features(model, ds, "trunk", batch_size=4, cache_dir=tmp_path)
    fresh = extract_features(model, ds, "trunk", batch_size=4)  # no cache: the truth
    np.testing.assert_array_equal(after.x, fresh.x)
    assert not np.allclose(after.x[5], before.x[5])
    np.testing.assert_array_equal(np.delete(after.x, 5, 0), np.delete(before.x, 5, 0))
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_feature_cache_key_of_files_uses_their_stat_without_reading_pixels(tmp_path):
    """File-backed datasets (no transform) are keyed by path, size, mtime and inode of every file:
    no image is decoded for the key, and any rewrite of a middle file changes it."""
    import os

    from PIL import Image

    from mlvicx_core.data.folder import ImageFolderDataset

    folder = tmp_path / "png"
    folder.mkdir()
    for k in range(5):
        Image.fromarray(np.full((8, 8), 40 * k, np.uint8)).save(folder / f"{k}.png")
    ds = ImageFolderDataset(folder, image_size=8)

    def no_decoding(i):
        raise AssertionError("the key decoded an image")
    ds.load_image = no_decoding
    key = dataset_fingerprint(ds)
    assert dataset_fingerprint(ImageFolderDataset(folder, image_size=8)) == key
    mid = folder / "2.png"
    st = os.stat(mid)
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(mid)  # same size on disk: 8x8 constant
    os.utime(mid, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the old mtime restored
    assert os.stat(mid).st_size == st.st_size
    # written in place: same inode, size and mtime -> the documented blind spot
    if os.stat(mid).st_ino == st.st_ino:
        assert dataset_fingerprint(ds) == key
    os.utime(mid, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # any mtime change is seen
    assert dataset_fingerprint(ds) != key
    os.utime(mid, ns=(st.st_atime_ns, st.st_mtime_ns))
    tmp = folder / "new.tmp"
    tmp.write_bytes(mid.read_bytes())
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, mid)  # replaced by rename with size and mtime preserved (rsync -t): new inode
    assert dataset_fingerprint(ds) != key
    # a parameter that changes the pixels (bit depth, size) is in the key
    assert dataset_fingerprint(ImageFolderDataset(folder, image_size=16)) != \
        dataset_fingerprint(ImageFolderDataset(folder, image_size=8))
    # with a transform the key hashes the transformed pixels themselves
    half = ImageFolderDataset(folder, image_size=8, transform=lambda x: x * 0.5)
    quarter = ImageFolderDataset(folder, image_size=8, transform=lambda x: x * 0.25)
    assert dataset_fingerprint(half) != dataset_fingerprint(quarter)


def test_a_wrapper_that_hides_its_transform_is_keyed_by_pixels(tmp_path):
    """A view forwarding ``describe`` but not ``transform`` could hide a transform: its key hashes
    the served pixels, so two bases that differ only by transform get different keys."""
    from PIL import Image

    from mlvicx_core.data.folder import ImageFolderDataset

    folder = tmp_path / "png"
    folder.mkdir()
    for k in range(3):
        Image.fromarray(np.full((8, 8), 40 * k, np.uint8)).save(folder / f"{k}.png")

    class View(torch.utils.data.Dataset):
        def __init__(self, base):
            self.base, self.labels, self.patient_ids = base, base.labels, base.patient_ids

        def __len__(self):
            return len(self.base)

        def __getitem__(self, i):
            return self.base[i]

        def describe(self, i):
            return self.base.describe(i)
    plain = View(ImageFolderDataset(folder, image_size=8))
    dimmed = View(ImageFolderDataset(folder, image_size=8, transform=lambda x: x * 0.5))
    assert dataset_fingerprint(plain) != dataset_fingerprint(dimmed)

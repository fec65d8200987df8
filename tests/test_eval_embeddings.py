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

"""The pretraining data pipeline: the image-folder dataset, the registry, the default augmenter."""
import numpy as np
import pytest
import torch
from train_helpers import TINY_MODEL, TinyCXR, simple_augment, tiny_config

from mlvicx_core.train import pipeline
from mlvicx_core.train.metrics import read_metrics
from mlvicx_core.train.runconfig import ConfigError
from mlvicx_core.train.trainer import pretrain


def test_registry_builds_and_reports(tmp_path):
    cfg = tiny_config(tmp_path, **{"data.dataset": "tiny"})
    with pytest.raises(ConfigError, match="data.dataset='tiny' is not registered"):
        pipeline.build_pretrain_dataset(cfg)
    pipeline.register_dataset("tiny", lambda c: TinyCXR(24, pipeline.stored_size(c)))
    try:
        ds = pipeline.build_pretrain_dataset(cfg)
        assert len(ds) == 24 and ds[0]["image"].shape == (1, 32, 32)
    finally:
        del pipeline.DATASETS["tiny"]


def test_vicreg_variant_trains_and_logs_only_global_terms(tmp_path):
    import dataclasses

    cfg = dataclasses.replace(tiny_config(tmp_path, **{"train.max_steps": 2}),
                              model=dataclasses.replace(TINY_MODEL, multilevel=False,
                                                        context_bottleneck=False))
    res = pretrain(cfg, dataset=TinyCXR(32), augment=simple_augment, run_dir=tmp_path / "v")
    df = read_metrics(res.run_dir)
    assert not any(c.startswith(("multi/", "diag/multi")) for c in df.columns)
    assert np.allclose(df["loss"], df["global/loss"])


def test_default_augmenter_follows_the_interface(tmp_path):
    cfg = tiny_config(tmp_path)
    aug = pipeline.build_augment(cfg)
    images = torch.stack([TinyCXR(4, 48)[i]["image"] for i in range(4)])  # stored > model size
    a1, b1 = aug(images, generator=torch.Generator().manual_seed(0))
    a2, b2 = aug(images, generator=torch.Generator().manual_seed(0))
    assert a1.shape == b1.shape == (4, 1, 32, 32) and a1.dtype == torch.float32
    assert torch.equal(a1, a2) and torch.equal(b1, b2)  # the generator alone decides
    assert not torch.equal(a1, b1)
    assert float(a1.min()) >= 0.0 and float(a1.max()) <= 1.0


def test_synthetic_dataset_follows_the_contract(tmp_path):
    # the phantom renders 64 px and up; the 32 px tiny model crops its views from 64 px images
    cfg = tiny_config(tmp_path, **{"data.dataset": "synthetic", "data.length": 6,
                                   "data.image_size": 64})
    ds = pipeline.build_pretrain_dataset(cfg)
    s = ds[3]
    assert len(ds) == 6 and s["image"].shape == (1, 64, 64) and s["index"] == 3
    assert torch.equal(ds[3]["image"], s["image"])  # depends only on the index (exact resume)

"""Configuration, presets, --set overrides and the mlvicx command line."""
import dataclasses

import pytest
import torch
import torchvision
import yaml
from train_helpers import TinyCXR, simple_augment, tiny_config

from mlvicx_core.cli import SUBCOMMANDS, main
from mlvicx_core.config import get_preset
from mlvicx_core.train.runconfig import (
    ConfigError,
    apply_overrides,
    config_hash,
    load_config,
    valid_keys,
)
from mlvicx_core.train.trainer import pretrain


def test_paper_preset_is_the_method_recipe():
    cfg = load_config("paper")
    assert cfg.model == get_preset("paper")
    o, t = cfg.optim, cfg.train
    assert (o.name, o.base_lr, o.weight_decay, o.momentum, o.trust_coefficient) == \
        ("lars", 0.2, 1e-6, 0.9, 0.001)
    assert (o.warmup_epochs, o.final_lr_ratio, t.batch_size, t.epochs) == (2.0, 0.001, 64, 300)


def test_teaching_preset_runs_on_the_synthetic_data():
    cfg = load_config("teaching")
    assert cfg.model == get_preset("teaching") and cfg.data.dataset == "synthetic"


def test_overrides_are_typed():
    cfg = apply_overrides(load_config("teaching"), [
        "train.epochs=3", "optim.base_lr=1", "model.projector=[64, 64]", "optim.grad_clip=1.5",
        "data.root=/some/where", "train.amp=false"])
    assert cfg.train.epochs == 3 and cfg.optim.base_lr == 1.0 and isinstance(cfg.optim.base_lr,
                                                                              float)
    assert cfg.model.projector == (64, 64) and cfg.optim.grad_clip == 1.5
    assert cfg.data.root == "/some/where" and cfg.train.amp is False
    with pytest.raises(ConfigError, match=r"train\.epochs='three'"):
        apply_overrides(cfg, ["train.epochs=three"])
    with pytest.raises(ConfigError, match=r"train\.amp=1: expected true or false"):
        apply_overrides(cfg, ["train.amp=1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides(cfg, ["train.epochs"])
    with pytest.raises(ConfigError, match="model: backbone='vgg'"):
        apply_overrides(cfg, ["model.backbone=vgg"])


def test_config_hash_tracks_only_what_changes_the_weights():
    cfg = load_config("teaching")
    same = apply_overrides(cfg, ["train.out_dir=/elsewhere", "train.progress=false",
                                 "data.num_workers=4"])
    assert config_hash(same) == config_hash(cfg)
    assert config_hash(apply_overrides(cfg, ["model.lam=0.5"])) != config_hash(cfg)
    assert config_hash(apply_overrides(cfg, ["train.seed=1"])) != config_hash(cfg)


def test_unknown_key_lists_valid_keys(capsys):
    assert main(["pretrain", "--set", "train.epoch=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'train.epoch'" in err
    for key in ("train.epochs", "model.lam", "optim.base_lr", "data.root"):
        assert f"  {key}\n" in err
    assert len(valid_keys()) == err.count("\n  ")


def test_missing_data_root_names_path_and_expectation(tmp_path, capsys):
    missing = tmp_path / "no-such-folder"
    assert main(["pretrain", "--set", "data.dataset=folder", "--set", f"data.root={missing}"]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "expected a folder of radiographs (.png" in err
    assert main(["pretrain", "--set", "data.dataset=folder"]) == 2
    assert "needs data.root" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["pretrain", "--set", "data.dataset=folder", "--set", f"data.root={empty}"]) == 2
    assert f"{empty}: no images with suffixes" in capsys.readouterr().err
    assert main(["pretrain", "--set", "data.dataset=imagenet"]) == 2
    assert "'folder', 'nih'" in capsys.readouterr().err


def test_unknown_preset_lists_presets(capsys):
    assert main(["pretrain", "--preset", "huge"]) == 2
    assert "expected one of ['paper', 'teaching']" in capsys.readouterr().err


def test_dry_run_prints_the_resolved_config(capsys):
    assert main(["pretrain", "--preset", "paper", "--set", "train.epochs=1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    resolved = yaml.safe_load(out.split("\n", 1)[1])
    assert resolved["train"]["epochs"] == 1 and resolved["optim"]["name"] == "lars"
    assert resolved["model"]["image_size"] == 224


def test_yaml_file_preset(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model: {preset: teaching, lam: 0.25}\ntrain: {epochs: 2}\n")
    cfg = load_config(str(path))
    assert cfg.model == dataclasses.replace(get_preset("teaching"), lam=0.25)
    assert cfg.train.epochs == 2 and cfg.preset == "mine"
    path.write_text("train: {epochz: 2}\n")
    with pytest.raises(ConfigError, match="unknown config key 'train.epochz'"):
        load_config(str(path))


def test_export_trunk_command(tmp_path, capsys):
    res = pretrain(tiny_config(tmp_path, **{"train.max_steps": 1}), dataset=TinyCXR(32),
                   augment=simple_augment, run_dir=tmp_path / "r")
    out = tmp_path / "trunk.pt"
    assert main(["export-trunk", str(res.checkpoint), str(out)]) == 0
    sd = torch.load(out, weights_only=True)
    net = torchvision.models.resnet18()
    assert sorted(net.load_state_dict(sd, strict=False).missing_keys) == ["fc.bias", "fc.weight"]
    assert torch.equal(sd["conv1.weight"], res.model.backbone.conv1.weight)


def test_subcommands_are_registered():
    assert {"pretrain", "demo", "export-trunk"} <= set(SUBCOMMANDS)


def test_demo_end_to_end(tmp_path, capsys):
    sets = ["data.length=16", "data.image_size=64", "train.batch_size=8", "train.epochs=1", "train.tensorboard=false",
            "train.progress=false", "model.image_size=32", "model.projector=[32,32]",
            "model.ml_projector=[32,32]", "model.fusion_size=8", "model.fusion_channels=16",
            "model.pool_size=2", "train.diag_every=1"]
    argv = ["demo", "--out", str(tmp_path / "demo")]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    out = capsys.readouterr().out
    run = tmp_path / "demo" / "teaching"
    assert "trained 2 steps" in out and f"Results are in {run}" in out
    assert (run / "training.png").stat().st_size > 10_000 and (run / "trunk.pt").is_file()
    assert main(argv) == 0
    assert "reused the finished run" in capsys.readouterr().out

"""The keys the teaching recipe and the online probe added (issue 11): ``aug.*``,
``train.eval_every``, ``train.probe_images`` and ``eval.features``. Their bounds (errors name the
key, the value and the expectation, from ``--set``, YAML files and Python dicts), their round trip
through ``to_yaml`` and ``load_config``, ``mlvicx pretrain --keys``, the content hash, and where
they act. (``aug.crop_scale`` min > max and an even ``aug.blur_kernel`` are in test_train_cli.)"""
import dataclasses
import json

import pytest
import torch
import yaml

from mlvicx_core.cli import main
from mlvicx_core.config import (ConfigError, apply_overrides, config_hash, from_dict, load_config,
                                valid_keys)
from mlvicx_core.data.augment import BatchTwoViews, kernel_size

AUG_KEYS = ("crop_scale", "crop_ratio", "flip_p", "jitter_p", "brightness", "contrast", "blur_p",
            "blur_sigma", "blur_kernel", "solarize_p", "solarize_threshold")
NEW_KEYS = (*(f"aug.{k}" for k in AUG_KEYS), "train.eval_every", "train.probe_images",
            "eval.features")

#: a value other than the default for every new key, each inside its bounds
CHANGED = {"aug.crop_scale": [0.5, 1.0], "aug.crop_ratio": [0.9, 1.1], "aug.flip_p": 0.25,
           "aug.jitter_p": 0.45, "aug.brightness": 0.2, "aug.contrast": 0.15,
           "aug.blur_p": [0.5, 0.0], "aug.blur_sigma": [0.1, 0.5], "aug.blur_kernel": 5,
           "aug.solarize_p": [0.0, 0.05], "aug.solarize_threshold": 0.75,
           "train.eval_every": 8, "train.probe_images": 64, "eval.features": "multi"}

BAD = [
    ("aug.crop_scale=[0,1]", r"aug\.crop_scale=\[0, 1\]: expected every value > 0"),
    ("aug.crop_scale=[0.5,1.5]", r"aug\.crop_scale=\[0\.5, 1\.5\]: expected every value <= 1"),
    ("aug.crop_scale=[0.5]", r"aug\.crop_scale=\[0\.5\]: expected a list of 2 values"),
    ("aug.crop_scale=0.5", r"aug\.crop_scale=0\.5: expected a list of 2 values"),
    ("aug.crop_ratio=[0,1]", r"aug\.crop_ratio=\[0, 1\]: expected every value > 0"),
    ("aug.crop_ratio=[1.5,0.5]", r"aug\.crop_ratio=\(1\.5, 0\.5\): expected \[min, max\] with "
                                 r"min <= max"),
    ("aug.flip_p=1.5", r"aug\.flip_p=1\.5: expected every value <= 1"),
    ("aug.flip_p=-0.1", r"aug\.flip_p=-0\.1: expected every value >= 0"),
    ("aug.flip_p=yes", r"aug\.flip_p=True: expected a number"),
    ("aug.jitter_p=2", r"aug\.jitter_p=2: expected every value <= 1"),
    ("aug.brightness=1", r"aug\.brightness=1: expected every value < 1"),
    ("aug.brightness=-0.2", r"aug\.brightness=-0\.2: expected every value >= 0"),
    ("aug.contrast=1.0", r"aug\.contrast=1\.0: expected every value < 1"),
    ("aug.contrast=.inf", r"aug\.contrast=inf: expected a finite number"),
    ("aug.blur_p=[0.5,1.2]", r"aug\.blur_p=\[0\.5, 1\.2\]: expected every value <= 1"),
    ("aug.blur_p=[1]", r"aug\.blur_p=\[1\]: expected a list of 2 values"),
    ("aug.blur_sigma=[0,1]", r"aug\.blur_sigma=\[0, 1\]: expected every value > 0"),
    ("aug.blur_sigma=[2,1]", r"aug\.blur_sigma=\(2\.0, 1\.0\): expected \[min, max\] with "
                             r"min <= max"),
    ("aug.blur_kernel=0", r"aug\.blur_kernel=0: expected every value >= 1"),
    ("aug.blur_kernel=3.5", r"aug\.blur_kernel=3\.5: expected an integer or null"),
    ("aug.solarize_p=[0,-0.1]", r"aug\.solarize_p=\[0, -0\.1\]: expected every value >= 0"),
    ("aug.solarize_threshold=1.5", r"aug\.solarize_threshold=1\.5: expected every value <= 1"),
    ("aug.solarize_threshold=-1", r"aug\.solarize_threshold=-1: expected every value >= 0"),
    ("train.eval_every=-1", r"train\.eval_every=-1: expected every value >= 0"),
    ("train.eval_every=2.5", r"train\.eval_every=2\.5: expected an integer"),
    ("train.eval_every=null", r"train\.eval_every=None: expected an integer"),
    ("train.probe_images=7", r"train\.probe_images=7: expected every value >= 8"),
    ("train.probe_images=many", r"train\.probe_images='many': expected an integer"),
    ("eval.features=pixels", r"eval\.features='pixels': expected 'trunk' or 'layer3\+layer4' or "
                             r"'global' or 'multi'"),
    ("eval.features=[trunk]", r"eval\.features=\['trunk'\]: expected 'trunk' or"),
]


@pytest.mark.parametrize("override, message", BAD)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(load_config("teaching"), [override])


FROM_FILES = ("aug.crop_scale=[0.5,1.5]", "aug.flip_p=-0.1", "aug.blur_kernel=3.5",
              "train.probe_images=7", "eval.features=pixels")


@pytest.mark.parametrize("override, message", [b for b in BAD if b[0] in FROM_FILES])
def test_bad_values_name_the_key_from_yaml_files_and_dicts(tmp_path, override, message):
    key, raw = override.split("=", 1)
    section, name = key.split(".")
    value = yaml.safe_load(raw)
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"base": "teaching", section: {name: value}}))
    with pytest.raises(ConfigError, match=f"{path}: {message}"):
        load_config(str(path))
    with pytest.raises(ConfigError, match=message):
        load_config("teaching", {key: value})
    with pytest.raises(ConfigError, match=message):
        from_dict({section: {name: value}})


@pytest.mark.parametrize("override", [
    "aug.crop_scale=[1,1]", "aug.crop_scale=[0.01,0.01]", "aug.crop_ratio=[1,1]",
    "aug.crop_ratio=[0.1,10]", "aug.flip_p=0", "aug.flip_p=1", "aug.jitter_p=0",
    "aug.brightness=0", "aug.brightness=0.99", "aug.contrast=0", "aug.blur_p=[0,1]",
    "aug.blur_sigma=[0.5,0.5]", "aug.blur_kernel=1", "aug.blur_kernel=null",
    "aug.solarize_p=[1,0]", "aug.solarize_threshold=0", "aug.solarize_threshold=1",
    "train.eval_every=0", "train.eval_every=1", "train.probe_images=8", "eval.features=trunk",
    "eval.features=layer3+layer4", "eval.features=global", "eval.features=multi",
])
def test_edge_values_are_accepted_and_build_the_views(override):
    cfg = apply_overrides(load_config("teaching"), [override])
    a, b = BatchTwoViews(cfg.aug, cfg.data.view_size)(torch.rand(2, 1, 64, 64))  # the views work
    assert a.shape == b.shape == (2, 1, 32, 32) == (2, 1, cfg.data.view_size, cfg.data.view_size)


def test_every_new_key_reaches_the_config_and_the_views():
    cfg = load_config("teaching", CHANGED)
    for key, value in CHANGED.items():
        section, name = key.split(".")
        got = getattr(getattr(cfg, section), name)
        assert got == (tuple(value) if isinstance(value, list) else value), key
    views = BatchTwoViews(cfg.aug, 64)  # the augmenter reads the aug.* section itself
    assert views.aug is cfg.aug and views.kernel == kernel_size(cfg.aug, 64) == 5


def test_new_keys_round_trip_through_yaml(tmp_path):
    cfg = load_config("teaching", CHANGED)
    text = cfg.to_yaml()
    path = tmp_path / "saved.yaml"
    path.write_text(text)
    loaded = load_config(str(path))
    assert dataclasses.replace(loaded, preset=cfg.preset) == cfg
    assert config_hash(loaded) == config_hash(cfg)
    assert from_dict(yaml.safe_load(text)) == cfg
    # the YAML holds plain values: lists for pairs, null for an automatic blur kernel
    saved = yaml.safe_load(text)
    assert saved["aug"]["crop_scale"] == [0.5, 1.0] and saved["eval"]["features"] == "multi"
    default = load_config("teaching")
    assert yaml.safe_load(default.to_yaml())["aug"]["blur_kernel"] is None
    assert load_config("teaching", {"aug.blur_kernel": None}) == default
    # the checkpoint's config (to_dict, JSON) too
    assert from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_keys_lists_the_new_keys(capsys):
    assert main(["pretrain", "--keys"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert set(NEW_KEYS) <= set(lines) and set(NEW_KEYS) <= set(valid_keys())
    expected = {  # type; default (the paper's recipe for aug.*)
        "aug.crop_scale": "a list of 2 values [a number, a number]; default [0.08, 1.0]",
        "aug.crop_ratio": "a list of 2 values [a number, a number]; default [0.75, 1.33",
        "aug.flip_p": "a number; default 0.5", "aug.jitter_p": "a number; default 0.8",
        "aug.brightness": "a number; default 0.4", "aug.contrast": "a number; default 0.4",
        "aug.blur_p": "a list of 2 values [a number, a number]; default [1.0, 0.1]",
        "aug.blur_sigma": "a list of 2 values [a number, a number]; default [0.1, 2.0]",
        "aug.blur_kernel": "an integer or null; default null",
        "aug.solarize_p": "a list of 2 values [a number, a number]; default [0.0, 0.2]",
        "aug.solarize_threshold": "a number; default 0.5",
        "train.eval_every": "an integer; default 0. steps between online-probe read-outs",
        "train.probe_images": "an integer; default 1600. training-split images the online "
                              "probe's read-outs are fitted on",
        "train.probe_val_images": "an integer; default 1024. validation-split images the online "
                                  "probe scores",
        "eval.features": "'trunk' or 'layer3+layer4' or 'global' or 'multi'; default \"trunk\"",
    }
    for key, text in expected.items():
        assert text in lines[key], lines[key]
        doc = lines[key].split(". ", 1)
        assert len(doc) == 2 and doc[1].strip(), f"{key} has no doc"


def test_hash_follows_the_weights():
    """aug.* change the trained weights (a new run); the probe's keys do not (the run is reused)."""
    cfg = load_config("teaching")
    for key in NEW_KEYS:
        changed = load_config("teaching", {key: CHANGED[key]})
        if key.startswith("aug."):
            assert config_hash(changed) != config_hash(cfg), key
        else:
            assert config_hash(changed) == config_hash(cfg), key


def test_probe_keys_reach_the_online_probe():
    from mlvicx_core.train.online_probe import OnlineProbe

    cfg = load_config("teaching", {"train.probe_images": 16, "train.probe_val_images": 12,
                                   "eval.features": "layer3+layer4", "data.seed": 3})
    probe = OnlineProbe.from_config(cfg)
    assert probe.fit_images.shape == (16, 1, 64, 64) and probe.features == "layer3+layer4"
    assert probe.score_images.shape == (12, 1, 64, 64)
    assert probe.fit_labels.shape == (16, 5) and probe.score_labels.shape == (12, 5)


def test_former_size_keys_are_read_under_their_new_names(tmp_path):
    """``data.image_size`` / ``data.load_size`` became ``data.view_size`` / ``data.stored_size``;
    presets, ``--set`` and the configs of older checkpoints that use the former names still load,
    to the same configuration and content hash."""
    new = load_config("teaching", {"data.view_size": 48, "data.stored_size": 96})
    old = load_config("teaching", {"data.image_size": 48, "data.load_size": 96})
    assert old == new and (old.data.view_size, old.data.stored_size) == (48, 96)
    saved = new.to_dict()
    saved["data"]["image_size"] = saved["data"].pop("view_size")
    saved["data"]["load_size"] = saved["data"].pop("stored_size")
    assert config_hash(from_dict(saved)) == config_hash(new)
    path = tmp_path / "old.yaml"
    path.write_text("base: teaching\ndata: {image_size: 40, view_size: 40}\n")
    with pytest.raises(ConfigError, match=r"data.image_size and data.view_size are one key "
                                          r"\(data.image_size is its former name\): give "
                                          r"data.view_size only"):
        load_config(str(path))

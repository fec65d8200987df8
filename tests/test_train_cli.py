"""Configuration, presets, --set overrides and the mlvicx command line."""
import dataclasses

import pytest
import torch
import torchvision
import yaml
from train_helpers import TinyCXR, simple_augment, tiny_config

from mlvicx_core.cli import SUBCOMMANDS, main
from mlvicx_core.config import (ConfigError, apply_overrides, config_hash, get_preset, load_config,
                                preset_names, valid_keys)
from mlvicx_core.train.trainer import pretrain
from mlvicx_core.config import VARIANTS


def test_paper_preset_is_the_method_recipe():
    cfg = load_config("paper")
    assert cfg.model == get_preset("paper")
    o, t = cfg.optim, cfg.train
    assert (o.name, o.base_lr, o.weight_decay, o.momentum, o.trust_coefficient) == \
        ("lars", 0.2, 1e-6, 0.9, 0.001)
    assert (o.warmup_epochs, o.final_lr_ratio, t.batch_size, t.epochs) == (2.0, 0.001, 64, 300)
    assert cfg.data.view_size == 224 and cfg.data.dataset == "nih" and cfg.data.split == "train"
    a = cfg.aug  # METHOD.md section 4: the two asymmetric views
    assert (a.crop_scale, a.flip_p, a.jitter_p, a.brightness, a.contrast) == \
        ((0.08, 1.0), 0.5, 0.8, 0.4, 0.4)
    assert (a.blur_p, a.blur_sigma, a.solarize_p) == ((1.0, 0.1), (0.1, 2.0), (0.0, 0.2))
    assert (cfg.loss.lam, cfg.loss.sim_coeff, cfg.loss.std_coeff, cfg.loss.cov_coeff) == \
        (1.0, 25.0, 25.0, 1.0)


def test_teaching_preset_runs_on_the_synthetic_data():
    cfg = load_config("teaching")
    assert cfg.model == get_preset("teaching") and cfg.data.dataset == "synthetic"


def test_vicreg_presets_are_the_variant_on_top_of_their_base():
    assert {"paper", "teaching", "vicreg", "vicreg-teaching"} <= set(preset_names())
    for preset, base in (("vicreg", "paper"), ("vicreg-teaching", "teaching")):
        cfg = load_config(preset)
        assert cfg.preset == preset
        assert cfg.model == dataclasses.replace(get_preset(base), method="vicreg", multilevel=False,
                                                context_bottleneck=False)
        assert cfg.model == get_preset(preset)
        assert dataclasses.replace(cfg, preset="x") == dataclasses.replace(
            apply_overrides(load_config(base), VARIANTS["vicreg"]), preset="x")


def test_pretrain_vicreg_preset_dry_run(capsys):
    assert main(["pretrain", "--preset", "vicreg", "--dry-run"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out.split("\n", 1)[1])
    assert resolved["model"]["multilevel"] is False and resolved["data"]["view_size"] == 224
    assert main(["pretrain", "--variant", "mlvicx-no-cb", "--dry-run"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out.split("\n", 1)[1])
    assert resolved["model"]["context_bottleneck"] is False and resolved["model"]["multilevel"]


def test_overrides_are_typed():
    cfg = apply_overrides(load_config("teaching"), [
        "train.epochs=3", "optim.base_lr=1", "model.projector=[64, 64]", "optim.grad_clip=1.5",
        "data.root=/some/where", "train.amp=false", "aug.crop_scale=[0.5, 1]",
        "aug.blur_p=[0, 0]"])
    assert cfg.train.epochs == 3 and cfg.optim.base_lr == 1.0 and isinstance(cfg.optim.base_lr,
                                                                              float)
    assert cfg.model.projector == (64, 64) and cfg.optim.grad_clip == 1.5
    assert cfg.data.root == "/some/where" and cfg.train.amp is False
    assert cfg.aug.crop_scale == (0.5, 1.0) and cfg.aug.blur_p == (0.0, 0.0)
    with pytest.raises(ConfigError, match=r"train\.epochs='three': expected an integer"):
        apply_overrides(cfg, ["train.epochs=three"])
    with pytest.raises(ConfigError, match=r"train\.amp=1: expected true or false"):
        apply_overrides(cfg, ["train.amp=1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides(cfg, ["train.epochs"])
    with pytest.raises(ConfigError, match=r"model\.backbone='vgg': expected 'resnet18' or"):
        apply_overrides(cfg, ["model.backbone=vgg"])


@pytest.mark.parametrize("override, message", [
    # keys whose default is None are checked from their annotation too
    ("train.max_steps=2.5", r"train\.max_steps=2\.5: expected an integer or null"),
    ("train.max_steps=true", r"train\.max_steps=True: expected an integer or null"),
    ("train.max_steps=abc", r"train\.max_steps='abc': expected an integer or null"),
    ("train.max_steps=0", r"train\.max_steps=0: expected every value >= 1"),
    ("model.projector=[0]", r"model\.projector=\[0\]: expected every value >= 1"),
    ("model.projector=[-4,8]", r"model\.projector=\[-4, 8\]: expected every value >= 1"),
    ("model.projector=[a,b]", r"model\.projector=\['a', 'b'\]: expected a list of an integer"),
    ("model.projector=[]", r"model\.projector=\(\): expected at least one layer width"),
    ("optim.betas=[0.9]", r"optim\.betas=\[0\.9\]: expected a list of 2 values"),
    ("optim.betas=[2,3]", r"optim\.betas=\[2, 3\]: expected every value < 1"),
    ("optim.weight_decay=-1", r"optim\.weight_decay=-1: expected every value >= 0"),
    ("optim.base_lr=.nan", r"optim\.base_lr=nan: expected a number"),
    ("optim.base_lr=.inf", r"optim\.base_lr=inf: expected a finite number"),
    ("optim.name=adam", r"optim\.name='adam': expected 'lars' or 'adamw' or 'sgd'"),
    ("train.device=tpu", r"train\.device='tpu': expected auto, cpu, cuda, cuda:<n> or mps"),
    ("data.view_size=7", r"data\.view_size=7: expected every value >= 8"),
    ("data.view_size=-3", r"data\.view_size=-3: expected every value >= 8"),
    ("data.view_size=abc", r"data\.view_size='abc': expected an integer"),
    ("data.view_size=[64]", r"data\.view_size=\[64\]: expected an integer"),
    ("data.root=5", r"data\.root=5: expected a string or null"),
    ("train.run_name=[a]", r"train\.run_name=\['a'\]: expected a string or null"),
    ("loss.lam=-1", r"loss\.lam=-1: expected every value >= 0"),
    ("loss.sim_coeff=-25", r"loss\.sim_coeff=-25: expected every value >= 0"),
    ("model.levels=[stem,stem]", r"model\.levels=.*expected each tap at most once"),
    ("model.levels=[layer5]", r"model\.levels=\['layer5'\]: expected a list of 'stem' or"),
    ("aug.crop_scale=[0.9,0.5]", r"aug\.crop_scale=\(0\.9, 0\.5\): expected \[min, max\]"),
    ("aug.blur_kernel=4", r"aug\.blur_kernel=4: expected an odd kernel side"),
    ("data.split_fractions=[0.5,0.5,0.5]", r"data\.split_fractions=.*summing to 1"),
    ("eval.tasks=[probe,clip]", r"eval\.tasks=\['probe', 'clip'\]: expected a list of 'probe'"),
    ("model.lam=0.5", r"unknown config key 'model\.lam'"),
    ("model.lam=-1", r"unknown config key 'model\.lam'"),  # the loss weights are loss.*
    ("model.sim_coeff=-25", r"unknown config key 'model\.sim_coeff'"),
    ("model.image_size=64", r"unknown config key 'model\.image_size'"),  # it is data.view_size
    ("model.image_size=7", r"unknown config key 'model\.image_size'"),
    ("model.image_size=32", r"unknown config key 'model\.image_size'"),
    ("optim.base_lr=-1e-3", r"optim\.base_lr='-1e-3': expected every value > 0"),
    ("optim.base_lr=1e400", r"optim\.base_lr='1e400': expected a finite number"),
    ("train.max_steps=1e3", r"train\.max_steps='1e3': expected an integer or null"),
    # issue 19 item 5: a run folder outside train.out_dir, or out_dir itself
    ("train.run_name=../escaped", (r"train\.run_name='\.\./escaped': expected a folder name inside "
                                  r"train\.out_dir")),
    ("train.run_name=/tmp/abs", r"train\.run_name='/tmp/abs': expected a folder name inside"),
    ("train.run_name=.", r"train\.run_name='\.': expected a folder name inside train\.out_dir"),
    ("train.run_name=..", r"train\.run_name='\.\.': expected a folder name inside"),
    ("train.run_name=a/b", r"train\.run_name='a/b': expected a folder name inside"),
    ("train.run_name=' '", r"train\.run_name=' ': expected a folder name inside"),
    # issue 19 item 7: views larger than the stored images would be upsampled
    ("data.view_size=128",
     (r"data\.view_size=128: larger than data\.stored_size=64: every view would be upsampled "
      r"from 64 px .*set data\.stored_size to at least 128")),
])
def test_bad_values_name_the_key_and_the_expectation(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(load_config("teaching"), [override])


def test_view_size_and_stored_size_are_checked_together_in_any_order():
    """The check across the two keys sees the final values of one command line (issue 19), also
    under their former names (RENAMED_KEYS)."""
    for order in (["data.view_size=128", "data.stored_size=128"],
                  ["data.stored_size=128", "data.view_size=128"],
                  ["data.load_size=128", "data.image_size=128"]):
        cfg = apply_overrides(load_config("teaching"), order)
        assert (cfg.data.view_size, cfg.data.stored_size) == (128, 128)
    cfg = apply_overrides(load_config("teaching"), ["data.view_size=128", "data.stored_size=null"])
    assert (cfg.data.view_size, cfg.data.stored_size) == (128, None)
    assert apply_overrides(load_config("teaching"), ["train.run_name=my-run"]).train.run_name == \
        "my-run"


@pytest.mark.parametrize("text, message", [
    # issue 19 item 4: two sections of one name; PyYAML kept the second (epochs 300, not 3)
    ("base: teaching\ntrain:\n  epochs: 3\nloss: {lam: 0.5}\ntrain:\n  batch_size: 8\n",
     "section 'train' is given twice (lines 2 and 5)"),
    ("train:\n  epochs: 3\n  batch_size: 8\n  epochs: 4\n",
     "key 'train.epochs' is given twice (lines 2 and 4)"),
    ("aug: {flip_p: 0.5, flip_p: 0.1}\n", "key 'aug.flip_p' is given twice (lines 1 and 1)"),
    ("base: teaching\nbase: paper\n", "section 'base' is given twice (lines 1 and 2)"),
    ("", ("the file is empty; expected a mapping of sections (model, loss, aug, data, optim, "
         "train, eval)")),
    ("# nothing but a comment\n\n", "the file is empty"),
])
def test_yaml_files_that_do_not_mean_what_they_say_are_refused(tmp_path, capsys, text, message):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    assert main(["pretrain", "--preset", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err == f"mlvicx pretrain: error: {path}: {message}" + err.split(message, 1)[1]
    assert err.count("\n") == 1 and "Traceback" not in err
    with pytest.raises(ConfigError, match="given twice|is empty"):
        load_config(str(path))


def test_a_yaml_merge_key_is_not_a_duplicate(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("base: teaching\ntrain: {<<: {epochs: 2, batch_size: 8}, epochs: 3}\n")
    cfg = load_config(str(path))
    assert (cfg.train.epochs, cfg.train.batch_size) == (3, 8)


def test_yaml_1_1_floats_are_numbers(tmp_path, capsys):
    cfg = apply_overrides(load_config("teaching"), ["optim.base_lr=1e-3", "optim.weight_decay=1.0e6"])
    assert cfg.optim.base_lr == 1e-3 and cfg.optim.weight_decay == 1e6
    assert apply_overrides(cfg, ["optim.base_lr=1E6"]).optim.base_lr == 1e6
    # in a YAML file and on the command line too (item 10: refused as "expected ... (float)")
    path = tmp_path / "mine.yaml"
    path.write_text("base: teaching\noptim: {base_lr: 1e-3, weight_decay: 1.0e6}\n")
    assert load_config(str(path)).optim.base_lr == 1e-3
    assert main(["pretrain", "--preset", str(path), "--set", "optim.final_lr_ratio=1e-4",
                 "--dry-run"]) == 0
    optim = yaml.safe_load(capsys.readouterr().out.split("\n", 1)[1])["optim"]
    assert (optim["base_lr"], optim["weight_decay"], optim["final_lr_ratio"]) == (1e-3, 1e6, 1e-4)


def test_synthetic_data_below_64_px_names_the_key(capsys):
    """The synthetic radiographs are rendered at 64-512 px (item 9: a traceback before)."""
    assert main(["pretrain", "--set", "data.stored_size=32", "--set", "train.max_steps=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlvicx pretrain: error: stored image size 32 (data.stored_size, else "
                          "data.view_size): the synthetic radiographs are rendered at 64-512 px")
    assert "keep data.stored_size >= 64" in err


def test_config_hash_tracks_only_what_changes_the_weights():
    cfg = load_config("teaching")
    same = apply_overrides(cfg, ["train.out_dir=/elsewhere", "train.progress=false",
                                 "data.num_workers=4", "train.max_steps=7", "eval.n_boot=3",
                                 "train.eval_every=5"])
    assert config_hash(same) == config_hash(cfg)
    for change in ("loss.lam=0.5", "train.seed=1", "aug.crop_scale=[0.5,1]", "data.length=99"):
        assert config_hash(apply_overrides(cfg, [change])) != config_hash(cfg), change


def test_unknown_key_lists_valid_keys(capsys):
    assert main(["pretrain", "--set", "train.epoch=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'train.epoch'" in err
    for key in ("train.epochs", "loss.lam", "aug.blur_p", "optim.base_lr", "data.root",
                "eval.fractions"):
        assert f"  {key}\n" in err
    assert len(valid_keys()) == err.count("\n  ")


def test_keys_lists_every_key_with_its_type(capsys):
    assert main(["pretrain", "--keys"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(valid_keys())
    line = next(x for x in out if x.startswith("aug.crop_scale"))
    assert "a list of 2 values [a number, a number]; default [0.08, 1.0]" in line


def test_missing_data_root_names_path_and_expectation(tmp_path, capsys):
    missing = tmp_path / "no-such-folder"
    assert main(["pretrain", "--set", "data.dataset=folder", "--set", f"data.root={missing}"]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "expected a folder of radiographs (PNG" in err
    assert main(["pretrain", "--set", "data.dataset=folder"]) == 2
    assert "needs data.root" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["pretrain", "--set", "data.dataset=folder", "--set", f"data.root={empty}"]) == 2
    assert f"{empty}: no images with suffixes" in capsys.readouterr().err
    assert main(["pretrain", "--set", "data.dataset=imagenet"]) == 2
    assert "'folder', 'nih'" in capsys.readouterr().err


def test_bad_yaml_files_are_named(tmp_path, capsys):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    assert main(["pretrain", "--preset", str(path)]) == 2
    assert f"{path}: expected a mapping of sections at the top level, got list" in \
        capsys.readouterr().err
    path.write_text("train: 3\n")
    assert main(["pretrain", "--preset", str(path)]) == 2
    assert f"{path}: section 'train': expected a mapping" in capsys.readouterr().err
    path.write_text("train: {epochs: [1]}\n")
    assert main(["pretrain", "--preset", str(path)]) == 2
    assert f"{path}: train.epochs=[1]: expected an integer" in capsys.readouterr().err


def test_unknown_preset_lists_presets(capsys):
    assert main(["pretrain", "--preset", "huge"]) == 2
    assert ("expected one of ['paper', 'results', 'results-smoke', 'teaching', 'vicreg', "
            "'vicreg-teaching']") in \
        capsys.readouterr().err


def test_dry_run_prints_the_resolved_config(capsys):
    assert main(["pretrain", "--preset", "paper", "--set", "train.epochs=1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    resolved = yaml.safe_load(out.split("\n", 1)[1])
    assert resolved["train"]["epochs"] == 1 and resolved["optim"]["name"] == "lars"
    assert resolved["data"]["view_size"] == 224


def test_yaml_file_preset_with_base_and_variant(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: teaching\nvariant: mlvicx-frozen\nloss: {lam: 0.25}\n"
                    "aug: {crop_scale: [0.6, 1.0]}\ntrain: {epochs: 2}\n")
    cfg = load_config(str(path))
    assert cfg.model == dataclasses.replace(get_preset("teaching"), freeze_lateral=True)
    assert cfg.loss.lam == 0.25 and cfg.aug.crop_scale == (0.6, 1.0)
    assert cfg.train.epochs == 2 and cfg.preset == "mine"
    path.write_text("train: {epochz: 2}\n")
    with pytest.raises(ConfigError, match="unknown config key 'train.epochz'"):
        load_config(str(path))
    path.write_text("base: mine\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(str(path))


def test_augmentation_keys_reach_the_augmenter(tmp_path):
    from mlvicx_core.train.trainer import default_augment

    cfg = apply_overrides(load_config("teaching"), ["data.view_size=64", "aug.crop_scale=[1,1]",
                                                    "aug.flip_p=0",
                                                    "aug.jitter_p=0", "aug.blur_p=[0,0]",
                                                    "aug.solarize_p=[0,0]"])
    aug = default_augment(cfg)
    assert aug.aug is cfg.aug and aug.size == 64
    images = torch.rand(3, 1, 64, 64)
    a, b = aug(images, generator=torch.Generator().manual_seed(0))
    # every random op is off: both views are the image (a full-size crop resized to itself)
    assert torch.equal(a, images) and torch.equal(b, images)


def test_export_trunk_command(tmp_path, capsys):
    # width 64: torchvision's ResNet-18 (the teaching preset is at width 32)
    res = pretrain(tiny_config(tmp_path, **{"train.max_steps": 1, "model.width": 64}),
                   dataset=TinyCXR(32), augment=simple_augment, run_dir=tmp_path / "r")
    out = tmp_path / "trunk.pt"
    assert main(["export-trunk", str(res.checkpoint), str(out)]) == 0
    sd = torch.load(out, weights_only=True)
    net = torchvision.models.resnet18()
    assert sorted(net.load_state_dict(sd, strict=False).missing_keys) == ["fc.bias", "fc.weight"]
    assert torch.equal(sd["conv1.weight"], res.model.backbone.conv1.weight)


def test_subcommands_are_registered():
    assert {"pretrain", "demo", "evaluate", "results", "export-trunk"} <= set(SUBCOMMANDS)


@pytest.mark.parametrize("device, cuda, message", [
    ("cuda", 0, "train.device='cuda': this machine has no usable CUDA device (torch "),
    ("cuda:0", 0, "train.device='cuda:0': this machine has no usable CUDA device"),
    ("cuda:7", 1, ("train.device='cuda:7': this machine has 1 CUDA device(s), cuda:0 to cuda:0; "
                  "expected one of them or auto")),
    ("mps", 0, ("train.device='mps': Apple's MPS backend is not available on this machine; "
               "expected auto or cpu")),
])
def test_a_device_the_machine_lacks_is_one_line(monkeypatch, capsys, tmp_path, device, cuda,
                                                message):
    """Issue 19 item 6: cuda, cuda:7 and mps on a machine without them were tracebacks."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert main(["pretrain", "--set", f"train.device={device}", "--set",
                 f"train.out_dir={tmp_path}", "--set", "train.max_steps=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mlvicx pretrain: error: {message}") and err.count("\n") == 1
    assert not list(tmp_path.iterdir())  # refused before any work
    from mlvicx_core.evaluation.embeddings import resolve_device

    with pytest.raises(ConfigError, match=r"eval\.device='mps': Apple's MPS backend"):
        resolve_device("mps")
    assert resolve_device("cpu") == torch.device("cpu")

"""The MLVICX model: shapes, parameter counts, the pooled multi-level branch, training of every module."""
import dataclasses
import urllib.error

import pytest
import torch
import torch.nn.functional as F
import torchvision

from mlvicx_core import MLVICX, get_preset, load_config, mlvicx_loss, preset_names

PRESETS = preset_names()
SIZE = {p: load_config(p).data.view_size for p in PRESETS}
from mlvicx_core.multilevel import MultiLevelFusion


def n_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def paper_model():
    torch.manual_seed(0)
    return MLVICX("paper")


def test_paper_parameter_counts(paper_model):
    m = paper_model
    assert n_params(m.backbone) == 11_176_512  # torchvision ResNet-18 without fc
    assert n_params(m.projector) == 35_688_448  # 512-4096-4096-4096 with BN
    assert n_params(m.ml_projector) == 67_145_728  # 8192-4096-4096-4096 with BN
    assert n_params(m.fusion.lateral) == 526_848  # (64+64+128+256+512)*512 + 5*512
    assert len(m.fusion.lateral) == 5


@pytest.mark.parametrize("preset", PRESETS)
def test_output_shapes_per_preset(preset):
    cfg = get_preset(preset)
    torch.manual_seed(0)
    model = MLVICX(cfg).eval()
    s = SIZE[preset]
    x = torch.rand(2, 1, s, s)
    with torch.no_grad():
        emb = model(x)
        taps = model.taps(x)
    assert emb.global_.shape == (2, cfg.projector[-1])
    if cfg.multilevel:
        assert emb.multi.shape == (2, cfg.ml_projector[-1])
    else:
        assert emb.multi is None and model.fusion is None
    w = cfg.width  # ResNet-18's channels are w, w, 2w, 4w, 8w (64 at the paper's width)
    expected = {"stem": (w, s // 2), "layer1": (w, s // 4), "layer2": (2 * w, s // 8),
                "layer3": (4 * w, s // 16), "layer4": (8 * w, s // 32)}
    for level, (c, side) in expected.items():
        assert taps[level].shape == (2, c, side, side), level
    assert model.encode(x).shape == (2, 8 * w)


def literal_fusion(maps, convs, fusion_size, pool_size):
    """The definition, plainly: resize each map to S x S, 1x1 conv, sum, adaptive-avg-pool, flatten."""
    total = 0
    for x, conv in zip(maps, convs):
        up = F.interpolate(x, size=(fusion_size, fusion_size), mode="bilinear", align_corners=False)
        total = total + F.conv2d(up, conv.weight, conv.bias)
    return F.adaptive_avg_pool2d(total, pool_size).flatten(1)


def assert_rel_close(actual, expected, rel=1e-5):
    err = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= rel * scale, f"max abs error {err:.3e} vs scale {scale:.3e}"


@pytest.mark.parametrize("preset", PRESETS)
def test_pooled_branch_equals_literal_definition(preset):
    cfg = get_preset(preset, multilevel=True)  # vicreg presets: test their would-be branch too
    s = SIZE[preset]
    shapes = {"stem": (64, s // 2), "layer1": (64, s // 4), "layer2": (128, s // 8),
              "layer3": (256, s // 16), "layer4": (512, s // 32)}
    torch.manual_seed(1)
    fusion = MultiLevelFusion([shapes[lv][0] for lv in cfg.levels], cfg.fusion_channels,
                              cfg.fusion_size, cfg.pool_size)
    maps = [torch.randn(3, shapes[lv][0], shapes[lv][1], shapes[lv][1]) for lv in cfg.levels]
    assert_rel_close(fusion(maps), literal_fusion(maps, fusion.lateral, cfg.fusion_size,
                                                  cfg.pool_size))


@pytest.mark.parametrize("hw", [(37, 53), (5, 200), (64, 64), (1, 1)])
def test_pooled_branch_handles_any_map_size(hw):
    torch.manual_seed(2)
    fusion = MultiLevelFusion([8, 16], 12, fusion_size=24, pool_size=3)
    maps = [torch.randn(2, 8, *hw), torch.randn(2, 16, hw[0] // 2 + 1, hw[1] // 3 + 1)]
    assert_rel_close(fusion(maps), literal_fusion(maps, fusion.lateral, 24, 3))


def test_pooled_and_literal_models_agree_end_to_end():
    cfg = get_preset("teaching")
    torch.manual_seed(3)
    pooled = MLVICX(cfg).eval()
    literal = MLVICX(dataclasses.replace(cfg, multilevel_impl="literal")).eval()
    literal.load_state_dict(pooled.state_dict())
    x = torch.rand(4, 1, 64, 64)
    with torch.no_grad():
        a, b = pooled(x), literal(x)
    assert_rel_close(a.multi, b.multi, rel=1e-4)  # after three Linear+BN layers
    torch.testing.assert_close(a.global_, b.global_)


def test_gradients_of_pooled_branch_match_literal():
    torch.manual_seed(4)
    fusion = MultiLevelFusion([4, 6], 5, fusion_size=16, pool_size=4)
    maps = [torch.randn(2, 4, 9, 9, requires_grad=True), torch.randn(2, 6, 3, 3, requires_grad=True)]
    w = torch.randn(2, 5 * 16)
    (fusion(maps) * w).sum().backward()
    grads = [m.grad.clone() for m in maps] + [c.weight.grad.clone() for c in fusion.lateral]
    for t in list(maps) + list(fusion.parameters()):
        t.grad = None
    (literal_fusion(maps, fusion.lateral, 16, 4) * w).sum().backward()
    for g, t in zip(grads, list(maps) + [c.weight for c in fusion.lateral]):
        assert_rel_close(g, t.grad)


def _one_step(model, lr=0.1):
    params = [p for p in model.parameters() if p.requires_grad]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(params, lr=lr)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 64, 64, generator=g)
    a, b = model(x), model(x.flip(-1))
    mlvicx_loss(a.global_, b.global_, a.multi, b.multi)["loss"].backward()
    opt.step()
    return before


def test_every_trainable_parameter_changes_after_one_step():
    torch.manual_seed(5)
    model = MLVICX("teaching").train()
    before = _one_step(model)
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert unchanged == []


def test_freeze_lateral_keeps_the_released_codes_untrained_convs():
    torch.manual_seed(6)
    model = MLVICX(get_preset("teaching", freeze_lateral=True)).train()
    before = _one_step(model)
    for n, p in model.named_parameters():
        if n.startswith("fusion.lateral"):
            assert not p.requires_grad and torch.equal(p, before[n]), n
        else:
            assert p.requires_grad and not torch.equal(p, before[n]), n


def test_grey_input_equals_repeated_rgb():
    torch.manual_seed(7)
    model = MLVICX("teaching").eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x).multi, model(x.repeat(1, 3, 1, 1)).multi)
    with pytest.raises(ValueError, match=r"\(B, 1 or 3, H, W\)"):
        model(torch.rand(2, 2, 64, 64))


def test_levels_option_selects_taps():
    cfg = get_preset("teaching", levels=("layer3", "layer4"), context_bottleneck=False, width=64)
    model = MLVICX(cfg)
    assert [c.in_channels for c in model.fusion.lateral] == [256, 512]
    assert all(isinstance(g, torch.nn.Identity) for g in model.gates.values())
    assert model(torch.rand(2, 1, 64, 64)).multi.shape == (2, 1024)


@pytest.mark.parametrize("backbone,channels", [("resnet34", [64, 64, 128, 256, 512]),
                                               ("resnet50", [64, 256, 512, 1024, 2048])])
def test_other_resnets_adapt_the_taps(backbone, channels):
    cfg = get_preset("teaching", backbone=backbone, projector=(32,), ml_projector=(32,), width=64)
    model = MLVICX(cfg)
    assert [c.in_channels for c in model.fusion.lateral] == channels
    assert model.projector[0].in_features == channels[-1]
    emb = model(torch.rand(2, 1, 64, 64))
    assert emb.global_.shape == (2, 32) and emb.multi.shape == (2, 32)


def test_trunk_exports_as_plain_torchvision_resnet():
    model = MLVICX(get_preset("teaching", width=64))  # the teaching preset is at width 32
    resnet = torchvision.models.resnet18()
    missing, unexpected = resnet.load_state_dict(model.trunk_state_dict(), strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []
    torch.testing.assert_close(resnet.conv1.weight, model.backbone.conv1.weight)
    _, unexpected = resnet.load_state_dict(model.trunk_state_dict(with_gates=True), strict=False)
    assert unexpected and all(k.startswith("gates.") for k in unexpected)


def test_imagenet_weights_offline_give_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached weights

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match=r"ImageNet weights for resnet18.*pretrained=None"):
        MLVICX(get_preset("teaching", pretrained="imagenet", width=64))


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        get_preset("huge")
    with pytest.raises(ValueError, match=r"unknown model option\(s\) \['lamda'\].*'levels'"):
        get_preset("paper", lamda=2)
    with pytest.raises(ValueError, match="model.levels="):
        get_preset("paper", levels=("layer5",))
    with pytest.raises(ValueError, match="model.levels=.*at most once"):
        get_preset("paper", levels=("stem", "stem"))
    with pytest.raises(ValueError, match="model.backbone="):
        get_preset("paper", backbone="vit")


def test_projector_can_end_in_a_plain_linear_layer():
    """projector_last_bn=False: official VICReg's projector (no BatchNorm after the last Linear)."""
    m = MLVICX(get_preset("teaching", projector_last_bn=False))
    assert isinstance(m.projector[-1], torch.nn.Linear) and isinstance(m.ml_projector[-1],
                                                                      torch.nn.Linear)
    kinds = [type(x).__name__ for x in m.projector]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert type(MLVICX("paper").projector[-1]).__name__ == "BatchNorm1d"  # the authors' code
    assert get_preset("teaching").projector_last_bn is False  # the teaching recipe's choice

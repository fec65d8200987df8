"""``model.width`` and ``model.stem``: width 64 with the ImageNet stem is torchvision's ResNet-18
exactly; other widths and the CIFAR stem have the shapes and parameter counts a formula written
here gives."""
import pytest
import torch
import torchvision

from mlvicx_core import MLVICX, get_preset
from mlvicx_core.config import ConfigError
from mlvicx_core.model import build_backbone


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def resnet18_params(w: int, stem: str) -> int:
    """Parameters of a ResNet-18 trunk (no fc) of base width w, counted by hand: the stem conv
    (7x7 or 3x3, 3 -> w) and its BatchNorm; per stage c = w, 2w, 4w, 8w: two BasicBlocks of two
    3x3 convs and two BatchNorms each, the first block reading the previous stage's channels,
    plus a 1x1 downsampling conv and BatchNorm from the second stage on."""
    k = 7 if stem == "imagenet" else 3
    total = 3 * k * k * w + 2 * w
    c_in = w
    for i in range(4):
        c = w * 2 ** i
        total += 9 * c_in * c + 2 * c + 9 * c * c + 2 * c  # block 1
        if i > 0:
            total += c_in * c + 2 * c  # downsampling
        total += 2 * (9 * c * c + 2 * c)  # block 2
        c_in = c
    return total


def test_formula_matches_the_published_count():
    assert resnet18_params(64, "imagenet") == 11_176_512


def test_width_64_imagenet_stem_is_torchvision_resnet18():
    torch.manual_seed(0)
    ours = build_backbone("resnet18", None, 64, "imagenet")
    ref = torchvision.models.resnet18()
    ref.fc = torch.nn.Identity()
    assert ({k: tuple(v.shape) for k, v in ours.state_dict().items()}
            == {k: tuple(v.shape) for k, v in ref.state_dict().items()})
    ours.load_state_dict(ref.state_dict())
    x = torch.rand(3, 3, 64, 64)
    ours.eval(), ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)
    # and the default model config builds exactly this trunk
    assert get_preset("paper").width == 64 and get_preset("paper").stem == "imagenet"
    assert type(MLVICX(get_preset("teaching", width=64)).backbone) is torchvision.models.ResNet


@pytest.mark.parametrize("width, stem", [(32, "imagenet"), (48, "imagenet"), (16, "imagenet"),
                                         (32, "cifar"), (64, "cifar")])
def test_other_widths_and_stems_have_the_expected_shapes_and_counts(width, stem):
    torch.manual_seed(0)
    model = MLVICX(get_preset("teaching", width=width, stem=stem)).eval()
    assert n_params(model.backbone) == resnet18_params(width, stem)
    s = 32
    x = torch.rand(2, 1, s, s)
    with torch.no_grad():
        taps = model.taps(x)
        emb = model(x)
    first = s if stem == "cifar" else s // 2  # the CIFAR stem keeps the resolution, no max-pool
    after_pool = s if stem == "cifar" else s // 4
    expected = {"stem": (width, first), "layer1": (width, after_pool),
                "layer2": (2 * width, after_pool // 2), "layer3": (4 * width, after_pool // 4),
                "layer4": (8 * width, after_pool // 8)}
    for level, (c, side) in expected.items():
        assert taps[level].shape == (2, c, side, side), level
    assert model.tap_channels == {lv: c for lv, (c, _) in expected.items()}
    assert model.encode(x).shape == (2, 8 * width) and model.feature_dim == 8 * width
    assert emb.global_.shape == (2, 1024) and emb.multi.shape == (2, 1024)
    conv1 = model.backbone.conv1
    assert conv1.kernel_size == ((7, 7) if stem == "imagenet" else (3, 3))
    assert conv1.stride == ((2, 2) if stem == "imagenet" else (1, 1))


def test_width_scales_every_stage_of_resnet50():
    torch.manual_seed(0)
    net = build_backbone("resnet50", None, 32, "imagenet").eval()
    assert net(torch.rand(1, 3, 32, 32)).shape == (1, 2048 // 2)
    assert net.layer1[0].conv1.in_channels == 32 and net.layer4[-1].conv3.out_channels == 1024


def test_bad_width_and_stem_are_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"model\.width=2: expected every value >= 4"):
        get_preset("teaching", width=2)
    with pytest.raises(ConfigError, match=r"model\.stem='tiny': expected 'imagenet' or 'cifar'"):
        get_preset("teaching", stem="tiny")
    with pytest.raises(ConfigError, match=r"model\.pretrained='imagenet'.*width=64"):
        get_preset("teaching", width=32, pretrained="imagenet")

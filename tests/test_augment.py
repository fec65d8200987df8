"""Two-view augmentation: determinism, contract, per-op rates and effects on hand-made signals.

The parameters are ``AugConfig`` (the ``aug.*`` keys); the references are written here (Pillow's
bicubic resize, a per-crop ``F.interpolate``, windows of a ramp, binomial rates)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mlvicx_core.config import AugConfig, ConfigError
from mlvicx_core.data.augment import (
    BatchTwoViews,
    crop_resize_batch,
    gaussian_blur,
    kernel_size,
    sample_crop_boxes,
    sample_view,
)

S = 32


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tests run thousands of tiny ops: a thread pool only adds overhead (and contention)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rate_tol(p, n):
    """Five binomial standard deviations (plus a hair): a correct rate fails ~1 run in 2 million."""
    return 5 * math.sqrt(p * (1 - p) / n) + 1e-9


def gen(seed):
    return torch.Generator().manual_seed(seed)


def ramp(h=S, w=S):
    """Strictly increasing left to right and top to bottom: every crop and flip is identifiable."""
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return ((x + w * y).float() / (h * w - 1))[None]


#: every random op off: a full-image crop, no flip, jitter, blur or solarize (a plain resize)
STILL = AugConfig(crop_scale=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, blur_p=(0.0, 0.0),
                  solarize_p=(0.0, 0.0))


def crop_resize_one(img, box, flip, size):
    """Per-crop reference of the batched resize: crop, ``F.interpolate`` (bicubic, antialiased, =
    Pillow), clamp, flip."""
    top, left, h, w = (int(v) for v in box)
    out = img[:, top:top + h, left:left + w]
    if (h, w) != (size, size):
        out = F.interpolate(out[None], size=(size, size), mode="bicubic", align_corners=False,
                            antialias=True)[0].clamp_(0, 1)
    return out.flip(-1) if flip else out


# -- contract and determinism ----------------------------------------------------------------------
def test_bad_inputs_name_the_problem():
    with pytest.raises(ConfigError, match="aug.crop_scale"):
        AugConfig(crop_scale=(0.5, 0.2))
    with pytest.raises(ConfigError, match="aug.blur_kernel"):
        AugConfig(blur_kernel=4)
    with pytest.raises(ValueError, match=r"BatchTwoViews input: expected a float tensor of shape "
                                         r"\(B, 1, H, W\), got \(1, 20, 20\)"):
        BatchTwoViews(AugConfig(), S)(torch.rand(1, 20, 20))


def test_kernel_scales_with_image_size():
    assert [kernel_size(AugConfig(), s) for s in (224, 128, 64, 32)] == [23, 13, 7, 3]
    assert kernel_size(AugConfig(blur_kernel=23), 64) == 23


# -- geometric ops ---------------------------------------------------------------------------------
def test_crop_box_statistics():
    boxes = sample_crop_boxes(AugConfig(crop_scale=(0.08, 1.0)), 4000, 100, 100, gen(2)).double()
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 100).all() and (left + w <= 100).all()
    area = h * w / 1e4
    assert area.min() >= 0.07 and area.max() <= 1.0
    r = w / h
    assert r.min() >= 0.72 and r.max() <= 1.38  # 3/4..4/3 up to pixel rounding
    # accepted tries are uniform in area except where the aspect makes them too big; mean < 0.54
    assert 0.4 < area.mean() < 0.54


# -- photometric ops -------------------------------------------------------------------------------
def _rate(view, img, n=1500, **over):
    """n draws of view ``view`` (0 or 1; photometric only: full crop, no flip) of ``img``."""
    aug = AugConfig(**{"crop_scale": (1, 1), "flip_p": 0, **over})
    a, b = BatchTwoViews(aug, S)(img[None].expand(n, -1, -1, -1).contiguous(), generator=gen(5))
    return (a, b)[view]


def test_blur_rate_view1_always_view2_ten_percent():
    delta = torch.zeros(1, S, S)
    delta[0, S // 2, S // 2] = 1.0
    # sigma >= 1 so every blur moves most of the centre's mass (centre weight <= 0.16)
    for view, rate in ((0, 1.0), (1, 0.1)):
        out = _rate(view, delta, jitter_p=0, solarize_p=(0, 0), blur_sigma=(1.0, 2.0))
        blurred = (out[:, 0, S // 2, S // 2] < 0.5).float()
        assert abs(blurred.mean() - rate) <= rate_tol(rate, len(out))
        assert torch.allclose(out.sum(dim=(1, 2, 3)), torch.ones(len(out)), atol=1e-5)


def test_blur_sigma_matches_second_moment_of_a_blurred_delta():
    delta = torch.zeros(4, 1, 65, 65)
    delta[:, 0, 32, 32] = 1.0
    sigma = torch.tensor([0.1, 0.7, 1.3, 2.0])
    out = gaussian_blur(delta, sigma, kernel_size=23)
    t = torch.arange(65.0) - 32
    var_x = (out[:, 0] * t[None, None] ** 2).sum(dim=(1, 2))
    # reference: the variance of the sampled, truncated (|t| <= 11) Gaussian, written out in numpy;
    # about sigma^2 for sigma >= 1, smaller below (sampling a narrow Gaussian on integers)
    tt = np.arange(-11, 12, dtype=np.float64)
    for s_, v in zip(sigma.tolist(), var_x.tolist()):
        w = np.exp(-tt ** 2 / (2 * s_ ** 2))
        assert math.isclose(v, float((w * tt ** 2).sum() / w.sum()), rel_tol=1e-4, abs_tol=1e-12)
    assert torch.allclose(var_x[2:].sqrt(), sigma[2:], rtol=1e-3)
    # with a kernel of 3 at 32 px, sigma = 2 is truncated: weights [a, b, a] with a/b = exp(-1/8)
    k3 = gaussian_blur(delta[:1, :, 24:41, 24:41], torch.tensor([2.0]), 3)[0, 0, 8]
    assert math.isclose(float(k3[7] / k3[8]), math.exp(-1 / 8), rel_tol=1e-5)


def test_solarize_rate_and_values():
    img = torch.full((1, S, S), 0.75)
    for view, rate in ((0, 0.0), (1, 0.2)):
        out = _rate(view, img, jitter_p=0)
        vals = out[:, 0, 0, 0]  # blurring a constant changes it only by float rounding
        solarized = (vals - 0.25).abs() < 1e-5
        assert torch.all(solarized | ((vals - 0.75).abs() < 1e-5))
        assert abs(solarized.float().mean() - rate) <= rate_tol(rate, len(out))
    below = _rate(1, torch.full((1, S, S), 0.3), n=200, jitter_p=0)
    # below the 0.5 threshold nothing changes
    assert torch.allclose(below, torch.full_like(below, 0.3), atol=1e-5)


def test_brightness_factor_range_and_jitter_rate():
    img = torch.full((1, S, S), 0.5)  # contrast is a no-op on a constant image
    out = _rate(1, img, n=2000, blur_p=(0, 0), solarize_p=(0, 0))[:, 0, 0, 0]
    b = out / 0.5
    assert b.min() >= 0.6 - 1e-6 and b.max() <= 1.4 + 1e-6
    jittered = b != 1
    assert abs(jittered.float().mean() - 0.8) <= rate_tol(0.8, 2000)
    bj = b[jittered]
    assert bj.min() < 0.62 and bj.max() > 1.38           # the whole range is reached
    assert abs(bj.mean() - 1.0) < 0.03                    # and it is uniform: mean 1, var 0.8^2/12
    assert abs(bj.var() - 0.8 ** 2 / 12) < 0.006


def test_contrast_blends_towards_the_mean():
    from mlvicx_core.data.augment import color_jitter
    x = torch.tensor([0.2, 0.4, 0.6, 0.8]).view(1, 1, 2, 2)
    out = color_jitter(x, torch.tensor([1.0]), torch.tensor([0.5]))
    assert torch.allclose(out.flatten(), torch.tensor([0.35, 0.45, 0.55, 0.65]))


# -- batched path ----------------------------------------------------------------------------------
def test_batch_without_randomness_equals_plain_resize():
    bt = BatchTwoViews(STILL, S)
    for side in (16, 48, 2 * S, S):  # up, down by 1.5, down by 2, same size
        x = torch.rand(3, 1, side, side)
        a, b = bt(x, generator=gen(0))
        ref = np.stack([np.asarray(Image.fromarray(img[0].numpy(), mode="F")
                                   .resize((S, S), Image.BICUBIC)) for img in x])
        ref = torch.from_numpy(ref.clip(0, 1))[:, None]  # Pillow: an independent implementation
        assert torch.allclose(a, ref, atol=1e-5) and torch.equal(a, b), side
    assert torch.allclose(bt(x, generator=gen(0))[0], x, atol=1e-6)  # same size: identity
    x = torch.rand(1, 1, 48, 48)  # and the torch filter it implements
    ref2 = F.interpolate(x, size=(S, S), mode="bicubic", antialias=True).clamp(0, 1)
    assert torch.allclose(bt(x, generator=gen(0))[0], ref2, atol=1e-6)


def test_batch_crop_resize_equals_per_sample_crop_resize():
    x = torch.rand(40, 1, 57, 45)
    d = sample_view(AugConfig(crop_scale=(0.05, 1.0), crop_ratio=(0.5, 2.0)), 0, 40, 57, 45, gen(4))
    batch = crop_resize_batch(x, d.boxes, d.flip, S)
    single = torch.stack([crop_resize_one(x[i], d.boxes[i], bool(d.flip[i]), S) for i in range(40)])
    assert d.flip.any() and (~d.flip).any()
    assert torch.allclose(batch, single, atol=2e-5)


def test_batch_crops_and_flips_match_windows_of_a_ramp():
    img = ramp(64, 64)[None].expand(300, 1, 64, 64)
    aug = AugConfig(crop_scale=(0.25, 0.25), crop_ratio=(1, 1), jitter_p=0, blur_p=(0, 0),
                    solarize_p=(0, 0))
    v, _ = BatchTwoViews(aug, S)(img, generator=gen(3))
    flipped = v[:, 0, 0, 0] > v[:, 0, 0, -1]
    assert abs(flipped.float().mean() - 0.5) <= rate_tol(0.5, 300)
    for i in range(0, 300, 7):
        w = v[i].flip(-1) if flipped[i] else v[i]
        top, left = divmod(int(round(float(w[0, 0, 0]) * (64 * 64 - 1))), 64)
        assert torch.allclose(w, img[0, :, top:top + S, left:left + S], atol=1e-5)


def test_batch_statistics_and_determinism():
    n = 1500
    delta = torch.zeros(n, 1, S, S)
    delta[:, 0, S // 2, S // 2] = 1.0
    bt = BatchTwoViews(AugConfig(crop_scale=(1, 1), flip_p=0, jitter_p=0, solarize_p=(0, 0),
                                 blur_sigma=(1.0, 2.0)), S)
    a, b = bt(delta, generator=gen(9))
    assert (a[:, 0, S // 2, S // 2] < 0.5).all()
    assert abs((b[:, 0, S // 2, S // 2] < 0.5).float().mean() - 0.1) <= rate_tol(0.1, n)
    const = torch.full((n, 1, S, S), 0.75)
    a, b = BatchTwoViews(AugConfig(crop_scale=(1, 1), jitter_p=0), S)(const, generator=gen(9))
    assert torch.allclose(a, torch.full_like(a, 0.75), atol=1e-5)
    solarized = (b[:, 0, 0, 0] - 0.25).abs() < 1e-5
    assert abs(solarized.float().mean() - 0.2) <= rate_tol(0.2, n)
    x = torch.rand(4, 1, 40, 40)
    r1, r2, r3 = (BatchTwoViews(AugConfig(), S)(x, generator=gen(s)) for s in (1, 1, 2))
    assert torch.equal(r1[0], r2[0]) and torch.equal(r1[1], r2[1])
    assert not torch.equal(r1[0], r3[0])
    assert r1[0].shape == (4, 1, S, S) and r1[0].dtype == torch.float32
    assert 0 <= r1[0].min() and r1[0].max() <= 1

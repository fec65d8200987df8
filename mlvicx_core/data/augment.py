"""Two asymmetric views per image (BYOL/VICReg recipe, METHOD.md section 4), for whole batches.

The parameters are the ``aug.*`` keys (:class:`~mlvicx_core.config.AugConfig`: knobs shared by both
views are single values, the two the paper makes asymmetric, ``blur_p`` and ``solarize_p``, are
pairs ``[view 1, view 2]``); the side of the views is ``data.view_size``. Each view applies, in
this order (the BYOL order; grayscale conversion is a no-op on 1 channel):

1. random resized crop: area fraction ``a ~ U(crop_scale)``, aspect ``r ~ logU(crop_ratio)``,
   ``w = round(sqrt(a H W r))``, ``h = round(sqrt(a H W / r))``, up to 10 tries, else the largest
   centred crop with the aspect clamped into the ratio range (the torchvision algorithm); resized
   to S x S
2. horizontal flip with probability ``flip_p``
3. with probability ``jitter_p``: brightness ``x <- clamp(b x)``, then contrast
   ``x <- clamp(c x + (1 - c) mean(x))``, ``b ~ U(1 +- brightness)``, ``c ~ U(1 +- contrast)``
   (hue and saturation do nothing to a grey image; both orders give the same result up to clamping,
   so the order is fixed)
4. with probability ``blur_p[v]``: separable Gaussian blur, ``sigma ~ U(blur_sigma)`` pixels,
   reflect padding, kernel ``blur_kernel`` (default: 23 px at 224 px, scaled as
   ``odd(round(23 S / 224))``, i.e. 13 at 128 and 7 at 64, the SimCLR "10 % of the image" rule;
   sigma is not scaled, so at small sizes a large sigma is truncated by the smaller kernel, as in
   SimCLR)
5. with probability ``solarize_p[v]``: ``x <- 1 - x`` where ``x >= solarize_threshold``

Intensity contract in and out: float32 (B, 1, H, W) in [0, 1] (see ``base.py``).

Randomness: every random number comes from an explicit ``torch.Generator`` on the CPU (never the
global RNG), so a seed fixes the result on every device; :class:`BatchTwoViews` draws all
parameters of a batch from one generator (the trainer's, saved in every checkpoint).

Resampling: each crop is resized with the antialiased bicubic filter of Pillow and
``F.interpolate(mode="bicubic", antialias=True)`` (Keys cubic, a = -0.5, widened by the downscale
factor): the filter taps of every crop are computed and applied to the whole batch with gathers and
multiply-adds (rows, then columns), so it runs unchanged on the GPU after the batch was moved there.
"""
from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


def kernel_size(aug: Any, size: int) -> int:
    """Blur kernel side of views of side ``size``: ``aug.blur_kernel``, or 23 px at 224 px scaled
    with the size, made odd, at least 3."""
    if aug.blur_kernel is not None:
        return aug.blur_kernel
    k = max(3, round(23 * size / 224))
    return k if k % 2 else k + 1


@dataclass
class ViewDraw:
    """The random choices for n images: crop boxes (top, left, h, w) in input pixels (long, (n, 4)),
    flip (bool, n), brightness and contrast factors (float, n; 1 where no jitter), blur sigma
    (float, n; 0 = no blur), solarize (bool, n)."""

    boxes: torch.Tensor
    flip: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    sigma: torch.Tensor
    solarize: torch.Tensor


def _uniform(lo: float, hi: float, n: int, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


def sample_crop_boxes(aug: Any, n: int, height: int, width: int,
                      generator: torch.Generator) -> torch.Tensor:
    """(n, 4) long boxes (top, left, h, w): the RandomResizedCrop algorithm, vectorised over n, with
    ``aug.crop_scale`` and ``aug.crop_ratio``."""
    tries = 10
    ratio = aug.crop_ratio
    area = height * width * _uniform(*aug.crop_scale, n * tries, generator).view(n, tries)
    log_r = _uniform(math.log(ratio[0]), math.log(ratio[1]), n * tries, generator)
    r = torch.exp(log_r).view(n, tries)
    w = torch.round(torch.sqrt(area * r))
    h = torch.round(torch.sqrt(area / r))
    ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = torch.argmax(ok.to(torch.int8), dim=1)  # first successful try per image
    w, h = w.gather(1, first[:, None])[:, 0], h.gather(1, first[:, None])[:, 0]
    u_top, u_left = torch.rand(2, n, generator=generator, dtype=torch.float64)
    top = torch.floor(u_top * (height - h + 1))
    left = torch.floor(u_left * (width - w + 1))
    # fallback when all tries failed: the largest centred crop with the aspect clamped into ratio
    in_r = width / height
    if in_r < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_r > ratio[1]:
        fw, fh = round(height * ratio[1]), height
    else:
        fw, fh = width, height
    fail = ~ok.any(dim=1)
    h = torch.where(fail, float(fh), h)
    w = torch.where(fail, float(fw), w)
    top = torch.where(fail, float((height - fh) // 2), top)
    left = torch.where(fail, float((width - fw) // 2), left)
    return torch.stack([top, left, h, w], dim=1).long()


def sample_view(aug: Any, view: int, n: int, height: int, width: int,
                generator: torch.Generator) -> ViewDraw:
    """Draw every random choice of view ``view`` (0 or 1) for n images of size height x width."""
    boxes = sample_crop_boxes(aug, n, height, width, generator)
    flip = torch.rand(n, generator=generator) < aug.flip_p
    jitter = torch.rand(n, generator=generator) < aug.jitter_p
    b = _uniform(1 - aug.brightness, 1 + aug.brightness, n, generator).float()
    c = _uniform(1 - aug.contrast, 1 + aug.contrast, n, generator).float()
    blur = torch.rand(n, generator=generator) < aug.blur_p[view]
    sigma = _uniform(*aug.blur_sigma, n, generator).float()
    solarize = torch.rand(n, generator=generator) < aug.solarize_p[view]
    one = torch.ones(n)
    return ViewDraw(boxes, flip, torch.where(jitter, b, one), torch.where(jitter, c, one),
                    torch.where(blur, sigma, torch.zeros(n)), solarize)


# -- photometric ops on (B, 1, S, S) batches with per-sample parameters ----------------------------
def color_jitter(x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
    """Per sample: ``x <- clamp(b x)``, then ``x <- clamp(c x + (1 - c) mean(x))``, into [0, 1]."""
    b = brightness.to(x)[:, None, None, None]
    c = contrast.to(x)[:, None, None, None]
    x = (x * b).clamp(0, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (c * x + (1 - c) * mean).clamp(0, 1)


def gaussian_kernels(sigma: torch.Tensor, size: int) -> torch.Tensor:
    """(B, size) normalised 1-D kernels exp(-t^2 / (2 sigma^2)); sigma = 0 gives the identity."""
    t = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    s = sigma.float().clamp_min(1e-6)[:, None]
    k = torch.exp(-0.5 * (t[None] / s) ** 2)
    k = k / k.sum(dim=1, keepdim=True)
    delta = (t == 0).float().expand_as(k)
    return torch.where((sigma > 0)[:, None], k, delta)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable blur of each sample with its own sigma (0 = untouched), reflect padding."""
    bsz, _, hgt, wid = x.shape
    r = kernel_size // 2
    if r >= min(hgt, wid):
        raise ValueError(f"blur kernel {kernel_size} too large for a {hgt}x{wid} image "
                         "(set aug.blur_kernel)")
    k = gaussian_kernels(sigma, kernel_size).to(x)
    y = F.pad(x.reshape(1, bsz, hgt, wid), (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k.view(bsz, 1, kernel_size, 1), groups=bsz)  # vertical pass
    y = F.conv2d(y, k.view(bsz, 1, 1, kernel_size), groups=bsz)  # horizontal pass
    return y.view(bsz, 1, hgt, wid)


def solarize(x: torch.Tensor, mask: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """``1 - x`` where ``x >= threshold``, for the samples where mask is True."""
    m = mask.to(x.device)[:, None, None, None] & (x >= threshold)
    return torch.where(m, 1 - x, x)


def photometric(x: torch.Tensor, aug: Any, d: ViewDraw, kernel: int) -> torch.Tensor:
    """Jitter, blur (kernel side ``kernel``) and solarize, skipping the ops no sample uses."""
    if (d.brightness != 1).any() or (d.contrast != 1).any():
        x = color_jitter(x, d.brightness, d.contrast)
    if (d.sigma > 0).any():
        x = gaussian_blur(x, d.sigma, kernel)
    if d.solarize.any():
        x = solarize(x, d.solarize, aug.solarize_threshold)
    return x


# -- geometric ops ---------------------------------------------------------------------------------
def _cubic(t: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """Keys' cubic convolution kernel with a = -0.5 (Pillow's and torch's antialiased bicubic)."""
    t = t.abs()
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = (((t - 5) * t + 8) * t - 4) * a
    return torch.where(t <= 1, near, torch.where(t < 2, far, torch.zeros_like(t)))


def resample_taps(start: torch.Tensor, length: torch.Tensor, in_size: int,
                  out_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Antialiased bicubic resize of ``x[start:start+length]`` to ``out_size`` as T taps per output.

    Returns input indices (B, out, T) long and weights (B, out, T) float32 with
    ``y[o] = sum_t w[o, t] x[idx[o, t]]``. Output pixel o is centred at ``c = start + (o + 1/2) s``,
    ``s = length / out``; input pixel i weighs ``cubic((i + 1/2 - c) / max(s, 1))``, zero outside
    the crop, normalised to sum 1 (the filter of Pillow and ``F.interpolate(antialias=True)``).
    """
    start, length = start.double()[:, None, None], length.double()[:, None, None]
    scale = length / out_size
    support = 2.0 * scale.clamp_min(1.0)
    taps = int(math.ceil(2 * float(support.max()))) + 2
    centre = start + (torch.arange(out_size, dtype=torch.float64)[None, :, None] + 0.5) * scale
    idx = torch.floor(centre - support - 0.5) + torch.arange(taps, dtype=torch.float64)
    w = _cubic((idx + 0.5 - centre) / scale.clamp_min(1.0))
    w = w * ((idx >= start) & (idx < start + length))
    w = w / w.sum(dim=-1, keepdim=True)
    return idx.clamp(0, in_size - 1).long(), w.float()


def _apply_taps(x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(B, H, W) resampled along dim 1 with per-sample taps (B, O, T) -> (B, O, W)."""
    bsz, _, wid = x.shape
    out = x.new_zeros(bsz, idx.shape[1], wid)
    for t in range(idx.shape[2]):  # a loop over taps keeps memory at one (B, O, W) gather
        rows = torch.gather(x, 1, idx[:, :, t, None].expand(-1, -1, wid))
        out += w[:, :, t, None] * rows
    return out


def crop_resize_batch(x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor,
                      size: int) -> torch.Tensor:
    """(B, 1, H, W) -> (B, 1, S, S): every crop resized at once, rows then columns, with per-sample
    taps (gathers and multiply-adds only, any device); the filter of
    ``F.interpolate(crop, mode="bicubic", antialias=True)`` per crop. A flip reverses the column
    taps."""
    _, _, hgt, wid = x.shape
    iy, wy = resample_taps(boxes[:, 0], boxes[:, 2], hgt, size)
    ix, wx = resample_taps(boxes[:, 1], boxes[:, 3], wid, size)
    f = flip[:, None, None]
    ix, wx = torch.where(f, ix.flip(1), ix), torch.where(f, wx.flip(1), wx)
    dev = x.device
    y = _apply_taps(x[:, 0], iy.to(dev), wy.to(dev, x.dtype))           # (B, S, W)
    y = _apply_taps(y.transpose(1, 2), ix.to(dev), wx.to(dev, x.dtype))  # (B, S_x, S_y)
    return y.transpose(1, 2)[:, None].clamp_(0, 1)


# -- the augmenter ---------------------------------------------------------------------------------
class BatchTwoViews:
    """Batched two-view augmenter on any device: ``(B, 1, H, W) -> two (B, 1, S, S)``.

    ``aug``: an :class:`~mlvicx_core.config.AugConfig` (the ``aug.*`` keys); ``size``: the side S
    of the views (``data.view_size``). Parameters are drawn on the CPU from ``generator`` (or an
    internal one seeded by ``seed``), so a seed gives the same crops, flips and factors on CPU,
    CUDA or MPS.
    """

    def __init__(self, aug: Any, size: int, seed: int | None = None) -> None:
        self.aug, self.size, self.kernel = aug, int(size), kernel_size(aug, size)
        self.generator = torch.Generator().manual_seed(
            secrets.randbits(62) if seed is None else int(seed))

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None):
        if x.ndim != 4 or x.shape[1] != 1 or not x.is_floating_point():
            raise ValueError(f"BatchTwoViews input: expected a float tensor of shape (B, 1, H, W), "
                             f"got {tuple(x.shape)} {x.dtype}")
        g = generator if generator is not None else self.generator
        out = []
        for view in (0, 1):
            d = sample_view(self.aug, view, x.shape[0], x.shape[-2], x.shape[-1], g)
            v = crop_resize_batch(x, d.boxes, d.flip, self.size)
            out.append(photometric(v, self.aug, d, self.kernel))
        return out[0], out[1]

"""Two asymmetric views per image (BYOL/VICReg recipe, METHOD.md section 4), per sample or batch.

Each view applies, in this order (the BYOL order; grayscale conversion is a no-op on 1 channel):

1. random resized crop: area fraction ``a ~ U(scale)``, aspect ``r ~ logU(ratio)``,
   ``w = round(sqrt(a H W r))``, ``h = round(sqrt(a H W / r))``, up to 10 tries, else the largest
   centred crop with the aspect clamped into ``ratio`` (the torchvision algorithm); resized to S x S
2. horizontal flip with probability ``flip_p``
3. with probability ``jitter_p``: brightness ``x <- clamp(b x)``, then contrast
   ``x <- clamp(c x + (1 - c) mean(x))``, ``b ~ U(1 +- brightness)``, ``c ~ U(1 +- contrast)``
   (hue and saturation do nothing to a grey image; both orders give the same result up to clamping,
   so the order is fixed)
4. with probability ``blur_p``: separable Gaussian blur, ``sigma ~ U(blur_sigma)`` pixels, reflect
   padding, kernel ``blur_kernel`` (default: 23 px at 224 px, scaled as ``odd(round(23 S / 224))``,
   i.e. 13 at 128 and 7 at 64, the SimCLR "10 % of the image" rule; sigma is not scaled, so at small
   sizes a large sigma is truncated by the smaller kernel, as in SimCLR)
5. with probability ``solarize_p``: ``x <- 1 - x`` where ``x >= 0.5``

Intensity contract in and out: float32 (1, H, W) in [0, 1] (see ``base.py``).

Randomness: every random number comes from an explicit ``torch.Generator`` on the CPU (never the
global RNG), so a seed fixes the result on every device. Per sample, ``TwoViewDataset`` seeds a
fresh generator from ``(seed, epoch, index)``: the views of sample i in epoch e are the same
whatever the number of DataLoader workers or the order in which they run. Call ``set_epoch(e)``
before each epoch (with ``persistent_workers=True`` the workers keep the epoch they were started
with, so leave that off or rebuild the loader). ``BatchTwoViews`` draws all parameters of a batch
from one generator.

Resampling: both paths resize each crop with the antialiased bicubic filter of Pillow and
``F.interpolate(mode="bicubic", antialias=True)`` (Keys cubic, a = -0.5, widened by the downscale
factor). ``TwoViews`` calls ``F.interpolate`` on the crop; ``BatchTwoViews`` computes each crop's
filter taps and applies them to the whole batch with gathers and multiply-adds (rows, then columns),
so it runs unchanged on the GPU after the batch was moved there and matches the per-sample path.
"""
from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, get_worker_info


@dataclass(frozen=True)
class ViewParams:
    """Parameters of one view; ``ViewParams.view1(S)`` and ``.view2(S)`` are the paper's two."""

    image_size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    blur_p: float = 1.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int | None = None
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5

    def __post_init__(self) -> None:
        if not (isinstance(self.image_size, int) and self.image_size >= 8):
            raise ValueError(f"image_size={self.image_size!r}: expected an int >= 8")
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"scale={self.scale}: expected 0 < min <= max <= 1")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio={self.ratio}: expected 0 < min <= max")
        for name in ("flip_p", "jitter_p", "blur_p", "solarize_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected a probability in [0, 1]")
        for name in ("brightness", "contrast"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected a jitter in [0, 1)")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma={self.blur_sigma}: expected 0 < min <= max")
        if self.blur_kernel is not None and (self.blur_kernel < 1 or self.blur_kernel % 2 == 0):
            raise ValueError(f"blur_kernel={self.blur_kernel}: expected an odd positive int")

    @property
    def kernel_size(self) -> int:
        """Blur kernel side: ``blur_kernel`` or 23 px at 224 px scaled with S, made odd, >= 3."""
        if self.blur_kernel is not None:
            return self.blur_kernel
        k = max(3, round(23 * self.image_size / 224))
        return k if k % 2 else k + 1

    @classmethod
    def view1(cls, image_size: int, **overrides: Any) -> "ViewParams":
        """The always-blurred, never-solarized view."""
        return cls(image_size, **{"blur_p": 1.0, "solarize_p": 0.0, **overrides})

    @classmethod
    def view2(cls, image_size: int, **overrides: Any) -> "ViewParams":
        """The rarely-blurred (10 %), sometimes-solarized (20 %) view."""
        return cls(image_size, **{"blur_p": 0.1, "solarize_p": 0.2, **overrides})


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


def sample_crop_boxes(p: ViewParams, n: int, height: int, width: int,
                      generator: torch.Generator) -> torch.Tensor:
    """(n, 4) long boxes (top, left, h, w): the RandomResizedCrop algorithm, vectorised over n."""
    tries = 10
    area = height * width * _uniform(*p.scale, n * tries, generator).view(n, tries)
    log_r = _uniform(math.log(p.ratio[0]), math.log(p.ratio[1]), n * tries, generator)
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
    if in_r < p.ratio[0]:
        fw, fh = width, round(width / p.ratio[0])
    elif in_r > p.ratio[1]:
        fw, fh = round(height * p.ratio[1]), height
    else:
        fw, fh = width, height
    fail = ~ok.any(dim=1)
    h = torch.where(fail, float(fh), h)
    w = torch.where(fail, float(fw), w)
    top = torch.where(fail, float((height - fh) // 2), top)
    left = torch.where(fail, float((width - fw) // 2), left)
    return torch.stack([top, left, h, w], dim=1).long()


def sample_view(p: ViewParams, n: int, height: int, width: int,
                generator: torch.Generator) -> ViewDraw:
    """Draw every random choice of one view for n images of size height x width."""
    boxes = sample_crop_boxes(p, n, height, width, generator)
    flip = torch.rand(n, generator=generator) < p.flip_p
    jitter = torch.rand(n, generator=generator) < p.jitter_p
    b = _uniform(1 - p.brightness, 1 + p.brightness, n, generator).float()
    c = _uniform(1 - p.contrast, 1 + p.contrast, n, generator).float()
    blur = torch.rand(n, generator=generator) < p.blur_p
    sigma = _uniform(*p.blur_sigma, n, generator).float()
    solarize = torch.rand(n, generator=generator) < p.solarize_p
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
                         "(set ViewParams.blur_kernel)")
    k = gaussian_kernels(sigma, kernel_size).to(x)
    y = F.pad(x.reshape(1, bsz, hgt, wid), (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k.view(bsz, 1, kernel_size, 1), groups=bsz)  # vertical pass
    y = F.conv2d(y, k.view(bsz, 1, 1, kernel_size), groups=bsz)  # horizontal pass
    return y.view(bsz, 1, hgt, wid)


def solarize(x: torch.Tensor, mask: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """``1 - x`` where ``x >= threshold``, for the samples where mask is True."""
    m = mask.to(x.device)[:, None, None, None] & (x >= threshold)
    return torch.where(m, 1 - x, x)


def photometric(x: torch.Tensor, p: ViewParams, d: ViewDraw) -> torch.Tensor:
    """Jitter, blur and solarize, skipping the ops no sample in the batch uses."""
    if (d.brightness != 1).any() or (d.contrast != 1).any():
        x = color_jitter(x, d.brightness, d.contrast)
    if (d.sigma > 0).any():
        x = gaussian_blur(x, d.sigma, p.kernel_size)
    if d.solarize.any():
        x = solarize(x, d.solarize, p.solarize_threshold)
    return x


# -- geometric ops ---------------------------------------------------------------------------------
def crop_resize_one(img: torch.Tensor, box: torch.Tensor, flip: bool, size: int) -> torch.Tensor:
    """(1, H, W) -> (1, S, S): crop, bicubic antialiased resize (= Pillow), clamp, optional flip."""
    top, left, h, w = (int(v) for v in box)
    out = img[:, top:top + h, left:left + w]
    if (h, w) != (size, size):
        out = F.interpolate(out[None], size=(size, size), mode="bicubic", align_corners=False,
                            antialias=True)[0].clamp_(0, 1)
    return out.flip(-1) if flip else out


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
    taps (gathers and multiply-adds only, any device); the filter of ``crop_resize_one``.
    A flip reverses the column taps."""
    _, _, hgt, wid = x.shape
    iy, wy = resample_taps(boxes[:, 0], boxes[:, 2], hgt, size)
    ix, wx = resample_taps(boxes[:, 1], boxes[:, 3], wid, size)
    f = flip[:, None, None]
    ix, wx = torch.where(f, ix.flip(1), ix), torch.where(f, wx.flip(1), wx)
    dev = x.device
    y = _apply_taps(x[:, 0], iy.to(dev), wy.to(dev, x.dtype))           # (B, S, W)
    y = _apply_taps(y.transpose(1, 2), ix.to(dev), wx.to(dev, x.dtype))  # (B, S_x, S_y)
    return y.transpose(1, 2)[:, None].clamp_(0, 1)


# -- public transforms -----------------------------------------------------------------------------
def _check_images(x: torch.Tensor, ndim: int, what: str) -> None:
    if x.ndim != ndim or x.shape[-3] != 1 or not x.is_floating_point():
        want = "(1, H, W)" if ndim == 3 else "(B, 1, H, W)"
        raise ValueError(f"{what}: expected a float tensor of shape {want}, got "
                         f"{tuple(x.shape)} {x.dtype}")


def seed_from(*values: int) -> int:
    """A well-mixed 63-bit seed from several ints (numpy SeedSequence), e.g. seed, epoch, index."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1, np.uint64)[0]
               >> np.uint64(1))


class TwoViews:
    """Per-sample two-view augmenter: ``(1, H, W) -> (view_a, view_b)``, each (1, S, S) float32.

    ``views(img, generator=g)`` draws from g (what ``TwoViewDataset`` does). Without a generator an
    internal one is used, seeded from ``seed`` and, inside a DataLoader worker, from that worker's
    ``torch.initial_seed()`` too (distinct per worker and per epoch, reproducible after
    ``torch.manual_seed`` in the main process); ``seed=None`` draws fresh entropy.
    """

    def __init__(self, image_size: int, seed: int | None = None,
                 view1: ViewParams | None = None, view2: ViewParams | None = None, **overrides):
        self.view1 = view1 or ViewParams.view1(image_size, **overrides)
        self.view2 = view2 or ViewParams.view2(image_size, **overrides)
        self.seed = secrets.randbits(62) if seed is None else int(seed)
        self._gen: torch.Generator | None = None
        self._gen_owner: Any = None

    @classmethod
    def from_config(cls, aug: Any, image_size: int, seed: int | None = None) -> "TwoViews":
        """The per-sample augmenter an ``AugConfig`` describes, with views of side ``image_size``."""
        view1, view2 = views_from_config(aug, image_size)
        return cls(image_size, seed=seed, view1=view1, view2=view2)

    def _default_generator(self) -> torch.Generator:
        info = get_worker_info()
        owner = (info.id, torch.initial_seed()) if info is not None else None
        if self._gen is None or owner != self._gen_owner:
            extra = [owner[1] % (1 << 63)] if owner is not None else []
            self._gen = torch.Generator().manual_seed(seed_from(self.seed, *extra))
            self._gen_owner = owner
        return self._gen

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None):
        _check_images(img, 3, "TwoViews input")
        g = generator if generator is not None else self._default_generator()
        out = []
        for p in (self.view1, self.view2):
            d = sample_view(p, 1, img.shape[-2], img.shape[-1], g)
            v = crop_resize_one(img.float(), d.boxes[0], bool(d.flip[0]), p.image_size)
            out.append(photometric(v[None], p, d)[0])
        return out[0], out[1]


class BatchTwoViews:
    """Batched two-view augmenter on any device: ``(B, 1, H, W) -> two (B, 1, S, S)``.

    Parameters are drawn on the CPU from ``generator`` (or an internal one seeded by ``seed``), so a
    seed gives the same crops, flips and factors on CPU, CUDA or MPS.
    """

    def __init__(self, image_size: int, seed: int | None = None,
                 view1: ViewParams | None = None, view2: ViewParams | None = None, **overrides):
        self.view1 = view1 or ViewParams.view1(image_size, **overrides)
        self.view2 = view2 or ViewParams.view2(image_size, **overrides)
        self.generator = torch.Generator().manual_seed(
            secrets.randbits(62) if seed is None else int(seed))

    @classmethod
    def from_config(cls, aug: Any, image_size: int, seed: int | None = None) -> "BatchTwoViews":
        """The batched augmenter an ``AugConfig`` describes, with views of side ``image_size``."""
        view1, view2 = views_from_config(aug, image_size)
        return cls(image_size, seed=seed, view1=view1, view2=view2)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None):
        _check_images(x, 4, "BatchTwoViews input")
        g = generator if generator is not None else self.generator
        out = []
        for p in (self.view1, self.view2):
            d = sample_view(p, x.shape[0], x.shape[-2], x.shape[-1], g)
            v = crop_resize_batch(x, d.boxes, d.flip, p.image_size)
            out.append(photometric(v, p, d))
        return out[0], out[1]


class TwoViewDataset(Dataset):
    """Wraps a ``CXRDataset`` (its own ``transform`` must be None): sample i of epoch e is
    ``dict(view_a, view_b, labels, index, patient_id)`` with views drawn from a generator seeded by
    ``seed_from(seed, e, i)``. Masks are not carried: they would not follow the crops."""

    def __init__(self, base: Dataset, two_views: TwoViews, seed: int | None = None):
        if getattr(base, "transform", None) is not None:
            raise ValueError(f"TwoViewDataset: {type(base).__name__}.transform must be None "
                             "(the two views are made here)")
        self.base, self.two_views = base, two_views
        self.seed = secrets.randbits(62) if seed is None else int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentations ``__getitem__`` returns (call before each epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.base[index]
        i = int(sample["index"])  # the index actually served (differs if the base skipped a file)
        g = torch.Generator().manual_seed(seed_from(self.seed, self.epoch, i))
        view_a, view_b = self.two_views(sample["image"], generator=g)
        return {"view_a": view_a, "view_b": view_b, "labels": sample["labels"], "index": i,
                "patient_id": sample["patient_id"]}


def views_from_config(aug: Any, image_size: int) -> tuple[ViewParams, ViewParams]:
    """The two :class:`ViewParams` an ``AugConfig`` (``mlvicx_core.config``) describes at size S.

    Knobs shared by both views are single values there; ``blur_p`` and ``solarize_p`` are pairs
    ``(view 1, view 2)``.
    """
    shared = dict(scale=tuple(aug.crop_scale), ratio=tuple(aug.crop_ratio), flip_p=aug.flip_p,
                  jitter_p=aug.jitter_p, brightness=aug.brightness, contrast=aug.contrast,
                  blur_sigma=tuple(aug.blur_sigma), blur_kernel=aug.blur_kernel,
                  solarize_threshold=aug.solarize_threshold)
    return tuple(ViewParams(image_size, blur_p=aug.blur_p[v], solarize_p=aug.solarize_p[v],
                            **shared) for v in (0, 1))


def no_randomness(p: ViewParams) -> ViewParams:
    """The view with every random op off: full-image crop, no flip, jitter, blur or solarize."""
    return replace(p, scale=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, blur_p=0.0,
                   solarize_p=0.0)

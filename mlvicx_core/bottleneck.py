"""Context bottleneck: the attention gate MLVICX places after every backbone tap.

Channel attention, then spatial attention, both multiplicative, no residual (METHOD.md section 2)::

    M_c = sigmoid(W2 relu(W1 avgpool(X)) + W2 relu(W1 maxpool(X)))     W1: C -> C/2, W2: C/2 -> C
    X'  = M_c * X
    M_s = sigmoid(conv7x7([mean_c X'; max_c X']))                       2 -> 1 channels
    X'' = M_s * X'

W1, W2 and the 7x7 conv have no bias; W1/W2 are 1x1 convs shared by the average and max paths.

Implementation
--------------
:class:`ContextBottleneck` runs the whole gate as one autograd function
(:class:`ContextGateFunction`) with a hand-written backward. Written as plain autograd ops, the gate
makes two full-size (B, C, H, W) tensors in the forward (``X'`` and ``X''``, and saves ``X'``) and
fourteen in the backward: each ``amax`` backward compares, counts and rescales a full mask, and
every product's gradient is a fresh tensor. On CPU a fresh large tensor costs more in page faults
than the arithmetic on it. Here the forward makes one (``X'``, turned *in place* into ``X''``) and
the backward one (a buffer holding ``g * X``, then, once that is reduced, ``dL/dX``):

- saved for the backward: ``X`` (which the trunk keeps anyway), the small gates ``M_c`` (B, C) and
  ``M_s`` (B, 1, H, W), the pooled statistics, and the positions of the two maxima (``torch.max``
  with indices), not ``X'``;
- the reductions over channels and over pixels are batched matrix-vector products, and each max
  routes its gradient to the saved position with a scatter over (B, C) or (B, H, W) entries;
- the small parts (the channel MLP, the 2 -> 1 conv) use the aten backward kernels autograd uses
  (``sigmoid_backward``, ``threshold_backward``, ``convolution_backward`` for the conv's weight);
  the conv's input gradient is the forward conv with the flipped kernel (on CPU, oneDNN's forward
  kernel is about 10x faster for this 1 -> 2 channel shape than its backward-input kernel).

The forward is op for op the plain definition (the same values bit for bit); gradients agree with
the plain autograd definition to float rounding (the sums are taken in a different order).

Ties in a max: the whole gradient goes to the *first* maximal element (lowest channel index for
``max_c``; first in row-major (h, w) order for the spatial max pool), the element ``torch.max``
returns. Autograd's ``amax`` splits it evenly between tied maxima instead. The two differ only for
exactly tied maxima. The common ones are zeros: the gate reads a ReLU's output, so a pixel or a
channel that is zero throughout ties at 0, and the ReLU's backward zeroes the gradient there
whichever element received it, so every parameter gradient is the same under both rules (a test
checks this). Ties at a positive value need exactly equal activations, e.g. a constant image region
(a flat border) can hold a stem channel's maximum at many pixels; there the same total gradient
lands on one pixel instead of being spread, another valid subgradient of the max. Set
``ContextBottleneck.fused = False`` for the plain composite definition (``amax``, even split; also
the way to get double backward, which the fused function does not support). Under ``torch.compile``
the module always traces the plain definition (inductor fuses it better than it does the fused
function), so compiled models keep ``amax``'s tie rule.

Devices: the code is device-agnostic. On CUDA the scatter that sums the ``max_c`` term into the
(B, C) channel-gate gradient accumulates with atomics, so without
``torch.use_deterministic_algorithms(True)`` that gradient can differ between runs at float
rounding (the other two scatters write each element at most once).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable


class ChannelAttention(nn.Module):
    """``M_c``: a (B, C, 1, 1) gate from globally pooled statistics (plain autograd definition)."""

    def __init__(self, channels: int, reduction: int = 2) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        mx = self.mlp(x.amax(dim=(2, 3), keepdim=True))
        return torch.sigmoid(avg + mx)


class SpatialAttention(nn.Module):
    """``M_s``: a (B, 1, H, W) gate from the channel mean and max (plain autograd definition)."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stats = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(stats))


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)   # torch.compiler.is_compiling: torch >= 2.3
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return compiler.is_compiling()
    return False


def _flat(t: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> a (B, C, H*W) *view* for contiguous and channels_last tensors (else a copy).

    The reductions and scatters below index pixels as p = h * W + w in either memory layout.
    """
    b, c, h, w = t.shape
    if t.is_contiguous():
        return t.view(b, c, h * w)
    if t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).view(b, h * w, c).transpose(1, 2)
    return t.contiguous().view(b, c, h * w)


def _gate_forward(x, w1, w2, w_conv, padding: int, with_indices: bool):
    """The gate's forward, op for op the plain definition; returns ``(X'', saved)``.

    ``saved`` holds what the backward needs (``X'`` is not among it: it becomes ``X''`` in place).
    ``with_indices=False`` (no gradient wanted) takes the maxima with ``amax`` (the same values,
    several times cheaper than ``max`` with indices on CPU) and saves nothing.
    """
    if w_conv.shape[-2:] != (2 * padding + 1,) * 2:
        raise ValueError(f"spatial conv {tuple(w_conv.shape)} with padding {padding}: the gate "
                         "needs an odd square kernel with padding k // 2 (output size = input)")
    # -- channel gate: the ops of ChannelAttention (max with its position in place of amax)
    avg = x.mean(dim=(2, 3), keepdim=True)                            # (B, C, 1, 1)
    if with_indices:
        mx, idx_hw = _flat(x).max(dim=2, keepdim=True)                # (B, C, 1): value, position
        mx = mx.unsqueeze(3)
    else:
        mx, idx_hw = x.amax(dim=(2, 3), keepdim=True), None
    h_avg = F.relu(F.conv2d(avg, w1))                                 # (B, C/2, 1, 1)
    h_max = F.relu(F.conv2d(mx, w1))
    m_c = torch.sigmoid(F.conv2d(h_avg, w2) + F.conv2d(h_max, w2))   # (B, C, 1, 1)
    # -- spatial gate on X' = M_c * X: the ops of SpatialAttention
    x1 = m_c * x                                                      # the one full-size tensor
    if with_indices:
        s_max, idx_c = x1.max(dim=1, keepdim=True)                    # (B, 1, H, W): value, channel
    else:
        s_max, idx_c = x1.amax(dim=1, keepdim=True), None
    stats = torch.cat([x1.mean(dim=1, keepdim=True), s_max], dim=1)  # (B, 2, H, W)
    m_s = torch.sigmoid(F.conv2d(stats, w_conv, padding=padding))    # (B, 1, H, W)
    out = x1.mul_(m_s)                                                # X'' overwrites X'
    saved = (x, w1, w2, w_conv, avg, mx, h_avg, h_max, m_c, stats, m_s, idx_hw, idx_c)
    return out, (saved if with_indices else None)


class ContextGateFunction(torch.autograd.Function):
    """``X'' = M_s * (M_c * X)`` for ``X`` (B, C, H, W) as one autograd node.

    Inputs: ``x`` (B, C, H, W), ``w1`` (C/2, C, 1, 1), ``w2`` (C, C/2, 1, 1),
    ``w_conv`` (1, 2, k, k), ``padding`` (k // 2). Output: (B, C, H, W), the plain definition's
    value bit for bit.
    """

    @staticmethod
    def forward(ctx, x, w1, w2, w_conv, padding: int):
        out, saved = _gate_forward(x, w1, w2, w_conv, padding, with_indices=True)
        ctx.save_for_backward(*saved)
        ctx.padding = padding
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, w1, w2, w_conv, avg, mx, h_avg, h_max, m_c, stats, m_s, idx_hw, idx_c = ctx.saved_tensors
        need_x, need_w1, need_w2, need_wc = ctx.needs_input_grad[:4]
        b, c, h, w = x.shape
        p = h * w
        dt = torch.promote_types(g.dtype, x.dtype)    # the dtype the full-size products run in
        # Explicit dtypes, no autocast: a backward called inside an autocast region must not
        # re-cast these products (autograd's own backward kernels are not autocast either).
        with torch.autocast(device_type=x.device.type, enabled=False):
            # One full-size buffer serves twice: first g * X, then (once that is reduced) dL/dX.
            fmt = (torch.channels_last if not x.is_contiguous()
                   and x.is_contiguous(memory_format=torch.channels_last)
                   else torch.contiguous_format)
            buf = torch.empty(x.shape, dtype=dt, device=x.device, memory_format=fmt)
            gx = _flat(torch.mul(g, x, out=buf))                       # (B, C, P) view of buf
            mc = m_c.view(b, c, 1).to(dt)
            ms = m_s.view(b, p, 1).to(dt)
            # dL/dM_s[b, p] = sum_c g X' = sum_c M_c[b, c] (g X)[b, c, p]
            d_ms = torch.bmm(mc.transpose(1, 2), gx).view(b, 1, h, w)
            # dL/dM_c[b, c] = sum_p dL/dX'[b, c, p] X[b, c, p] with dL/dX' = g M_s + (spatial
            # statistics' terms, added below)
            # (bmm as (1 x P)(P x C): ~4x faster on CPU than the equal (C x P)(P x 1) product)
            d_mc = torch.bmm(ms.transpose(1, 2), gx.transpose(1, 2)).view(b, c)
            # the 2 -> 1 conv and its sigmoid. The input gradient of a stride-1 "same" conv is the
            # forward conv with the kernel flipped and in/out channels swapped: on CPU, oneDNN's
            # forward kernel is ~10x faster here than convolution_backward's input gradient.
            d_pre_s = torch.ops.aten.sigmoid_backward(d_ms.to(m_s.dtype), m_s)
            wc = w_conv.to(d_pre_s.dtype)
            d_stats = F.conv2d(d_pre_s, wc.transpose(0, 1).flip((2, 3)), padding=ctx.padding)
            d_wc = None
            if need_wc:
                d_wc = torch.ops.aten.convolution_backward(
                    d_pre_s, stats.to(d_pre_s.dtype), wc, None, [1, 1], [ctx.padding] * 2,
                    [1, 1], False, [0, 0], 1, [False, True, False])[1]
            d_mean_c = (d_stats[:, 0:1] / c).to(dt)                   # mean over C: 1/C each
            d_max_c = d_stats[:, 1:2].to(dt).reshape(b, 1, p)         # to the first max channel
            xf = _flat(x).to(dt)
            idx_c = idx_c.view(b, 1, p)
            d_mc += torch.bmm(d_mean_c.reshape(b, 1, p), xf.transpose(1, 2)).view(b, c)
            d_mc.scatter_add_(1, idx_c.view(b, p),
                              (d_max_c * xf.gather(1, idx_c)).view(b, p))
            # the channel MLP: pre = W2 h_avg + W2 h_max, M_c = sigmoid(pre)
            d_pre = torch.ops.aten.sigmoid_backward(d_mc.to(m_c.dtype).view_as(m_c), m_c)
            d_pre = d_pre.view(b, c)
            ha, hm = h_avg.flatten(1), h_max.flatten(1)               # (B, C/2)
            mat_w1, mat_w2 = w1.flatten(1).to(d_pre.dtype), w2.flatten(1).to(d_pre.dtype)
            d_w2 = (d_pre.t() @ (ha + hm).to(d_pre.dtype)).view_as(w2) if need_w2 else None
            d_h = d_pre @ mat_w2                                      # (B, C/2), both paths
            d_ha = torch.ops.aten.threshold_backward(d_h, ha.to(d_h.dtype), 0)
            d_hm = torch.ops.aten.threshold_backward(d_h, hm.to(d_h.dtype), 0)
            d_w1 = None
            if need_w1:
                d_w1 = (d_ha.t() @ avg.flatten(1).to(d_ha.dtype)
                        + d_hm.t() @ mx.flatten(1).to(d_hm.dtype)).view_as(w1)
            d_x = None
            if need_x:
                # dL/dX = M_c (g M_s + d_mean_c + max_c scatter) + d_avg / P + max-pool scatter
                d_x = torch.addcmul(d_mean_c, g, m_s.to(dt), out=buf)  # g X is no longer needed
                dxf = _flat(d_x)                                      # a view (layout above)
                dxf.scatter_add_(1, idx_c, d_max_c)
                d_x.mul_(mc.view(b, c, 1, 1))
                d_avg = (d_ha @ mat_w1).to(dt)                        # (B, C)
                d_x.add_((d_avg / p).view(b, c, 1, 1))
                d_mx = (d_hm @ mat_w1).to(dt)
                dxf.scatter_add_(2, idx_hw, d_mx.view(b, c, 1))
                d_x = d_x.to(x.dtype)
        return (d_x,
                None if d_w1 is None else d_w1.to(w1.dtype),
                None if d_w2 is None else d_w2.to(w2.dtype),
                None if not need_wc else d_wc.to(w_conv.dtype),
                None)


class ContextBottleneck(nn.Module):
    """``X'' = M_s(M_c(X) * X) * (M_c(X) * X)``; shape-preserving (B, C, H, W) -> (B, C, H, W).

    Parameters (checkpoint names): ``channel.mlp.0.weight`` (W1), ``channel.mlp.2.weight`` (W2),
    ``spatial.conv.weight`` (the 7x7 conv). ``fused`` (default ``True``) runs the gate as one
    :class:`ContextGateFunction`; ``False`` runs the submodules' plain autograd definition.
    """

    def __init__(self, channels: int, reduction: int = 2, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(kernel_size)
        self.fused = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Under torch.compile the plain definition is the better input: inductor fuses its
        # elementwise work and reductions itself (docs/TRAINING.md, "Finished investigations": the compiled
        # plain gate beats the compiled fused function), so the fused function is for eager mode.
        if not self.fused or _is_compiling():
            x = self.channel(x) * x
            return self.spatial(x) * x
        args = (x, self.channel.mlp[0].weight, self.channel.mlp[2].weight,
                self.spatial.conv.weight)
        padding = self.spatial.conv.padding[0]
        if torch.is_grad_enabled() and any(t.requires_grad for t in args):
            return ContextGateFunction.apply(*args, padding)
        return _gate_forward(*args, padding, with_indices=False)[0]   # inference: nothing saved

"""The fused context bottleneck against the plain definition of METHOD.md section 2.

The references below are written out here, from the equations, with ordinary autograd ops:

    M_c = sigmoid(W2 relu(W1 avgpool(X)) + W2 relu(W1 maxpool(X)))
    X'  = M_c * X
    M_s = sigmoid(conv7x7([mean_c X'; max_c X']))
    X'' = M_s * X'

Tie rule of the fused gate: a max sends its whole gradient to the *first* maximal element (lowest
channel for max_c, first in row-major (h, w) order for the spatial max pool). ``plain_gate(...,
ties="first")`` spells that out with a one-hot selection; ``ties="split"`` is autograd's ``amax``
(gradient split evenly between tied maxima), which the fused gate matches wherever the maximum is
unique, and, in the network, also at ties among ReLU zeros (``test_ties_at_relu_zeros...``).

Tolerances: outputs are compared bit for bit (the fused forward is op for op the definition). The
gradients are the same sums taken in a different order (batched matrix products instead of
broadcast-and-reduce), so in float32 they agree to a few ulps of the largest entry: max |diff| is
about 1e-6 of max |grad| for these sizes (sums of up to C*H*W terms, eps = 6e-8); the tests allow
1e-5. In float64 the fused backward is held to autograd's at 1e-12 and checked by gradcheck.
"""
import pytest
import torch
import torch.nn.functional as F

from mlvicx_core.bottleneck import ContextBottleneck, ContextGateFunction


def first_max(t: torch.Tensor, dim: int) -> torch.Tensor:
    """max over ``dim`` whose gradient goes wholly to the first maximal element (lowest index)."""
    n = t.shape[dim]
    shape = [1] * t.ndim
    shape[dim] = n
    position = torch.arange(n, device=t.device).view(shape)
    is_max = t.detach() == t.detach().amax(dim=dim, keepdim=True)
    first = torch.where(is_max, position, n).amin(dim=dim, keepdim=True)
    one_hot = (position == first).to(t.dtype)
    return (t * one_hot).sum(dim=dim, keepdim=True)


def plain_gate(x, w1, w2, w_conv, ties="first"):
    """The context bottleneck from its equations; ``ties``: "first" or "split" (autograd amax)."""
    b, c, h, w = x.shape
    if ties == "first":
        max_hw = first_max(x.reshape(b, c, h * w), dim=2).reshape(b, c, 1, 1)
    else:
        max_hw = x.amax(dim=(2, 3), keepdim=True)
    avg_hw = x.mean(dim=(2, 3), keepdim=True)

    def mlp(v):
        return F.conv2d(F.relu(F.conv2d(v, w1)), w2)

    m_c = torch.sigmoid(mlp(avg_hw) + mlp(max_hw))
    x1 = m_c * x
    max_c = first_max(x1, dim=1) if ties == "first" else x1.amax(dim=1, keepdim=True)
    stats = torch.cat([x1.mean(dim=1, keepdim=True), max_c], dim=1)
    m_s = torch.sigmoid(F.conv2d(stats, w_conv, padding=w_conv.shape[-1] // 2))
    return m_s * x1


def weights(gate: ContextBottleneck):
    return [gate.channel.mlp[0].weight, gate.channel.mlp[2].weight, gate.spatial.conv.weight]


def grads_of(fn, x, params, g):
    """(output, dL/dx, dL/dparams) for L = <fn(x, *params), g>."""
    x = x.detach().clone().requires_grad_(True)
    ps = [p.detach().clone().requires_grad_(True) for p in params]
    out = fn(x, *ps)
    grads = torch.autograd.grad(out, [x, *ps], g)
    return out.detach(), grads


def fused(x, w1, w2, w_conv):
    return ContextGateFunction.apply(x, w1, w2, w_conv, w_conv.shape[-1] // 2)


SHAPES = [(2, 8, 5, 7), (3, 6, 1, 1), (2, 4, 1, 9), (1, 16, 3, 3), (2, 3, 6, 5)]
# gradcheck perturbs every input entry (x and the three weights): smaller maps, same variety
GRADCHECK_SHAPES = [(2, 4, 3, 5), (3, 6, 1, 1), (2, 4, 1, 9), (1, 8, 3, 3), (2, 3, 5, 4)]


def close(a, b, rel):
    scale = b.abs().max().clamp_min(1e-30)
    return float((a - b).abs().max() / scale) <= rel


@pytest.mark.parametrize("shape", GRADCHECK_SHAPES)
def test_gradcheck_float64(shape):
    g = torch.Generator().manual_seed(sum(shape))
    gate = ContextBottleneck(shape[1]).double()
    x = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_(True) for p in weights(gate)]
    assert torch.autograd.gradcheck(fused, (x, *params))


@pytest.mark.parametrize("shape", SHAPES + [(4, 64, 14, 14)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("ties", ["first", "split"])  # random inputs: unique maxima, both agree
def test_matches_plain_definition(shape, dtype, ties):
    g = torch.Generator().manual_seed(7 * sum(shape))
    gate = ContextBottleneck(shape[1]).to(dtype)
    x = torch.randn(*shape, generator=g, dtype=dtype)
    grad_out = torch.randn(*shape, generator=g, dtype=dtype)
    out, grads = grads_of(fused, x, weights(gate), grad_out)
    ref_out, ref_grads = grads_of(lambda *a: plain_gate(*a, ties=ties), x, weights(gate), grad_out)
    assert torch.equal(out, ref_out)
    rel = 1e-12 if dtype == torch.float64 else 1e-5
    for name, a, b in zip(["x", "w1", "w2", "w_conv"], grads, ref_grads):
        assert close(a, b, rel), name


def test_channels_last_input():
    g = torch.Generator().manual_seed(11)
    gate = ContextBottleneck(16).double()
    x = torch.randn(2, 16, 6, 5, generator=g, dtype=torch.float64)
    x = x.contiguous(memory_format=torch.channels_last)
    grad_out = torch.randn(2, 16, 6, 5, generator=g, dtype=torch.float64)
    out, grads = grads_of(fused, x, weights(gate), grad_out)
    ref_out, ref_grads = grads_of(plain_gate, x, weights(gate), grad_out)
    assert torch.equal(out, ref_out)
    for a, b in zip(grads, ref_grads):
        assert close(a, b, 1e-12)


def tied_input(dtype=torch.float64):
    """Exact ties in the spatial max pool: a flat region holds each channel's maximum six times
    (row-major first: (1, 2)). Channel ties are in test_channel_ties_go_to_the_lowest_channel."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 4, 5, 6, generator=g, dtype=dtype)
    x[:, :, 1:3, 2:5] = 2.0
    return x


def test_ties_follow_the_first_maximum_rule():
    gate = ContextBottleneck(4).double()
    x = tied_input()
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=x.dtype)
    out, grads = grads_of(fused, x, weights(gate), grad_out)
    ref_out, ref_grads = grads_of(plain_gate, x, weights(gate), grad_out)
    assert torch.equal(out, ref_out)
    for a, b in zip(grads, ref_grads):
        assert close(a, b, 1e-12)
    # ...and that this differs from autograd's even split at the tied positions
    _, split_grads = grads_of(lambda *a: plain_gate(*a, ties="split"), x, weights(gate), grad_out)
    assert not close(grads[0], split_grads[0], 1e-6)


def test_channel_ties_go_to_the_lowest_channel():
    # M_s's max over channels ties when two channels of X' are equal: with equal W rows that is
    # exact, so make M_c uniform (zero MLP weights -> M_c = 1/2 for every channel)
    gate = ContextBottleneck(4).double()
    w1, w2, wc = weights(gate)
    w2 = torch.zeros_like(w2)
    x = torch.rand(1, 4, 3, 3, dtype=torch.float64)
    x[0, 1] = x[0, 3] = 5.0          # channels 1 and 3 tie everywhere, above the others
    grad_out = torch.ones_like(x)
    _, grads = grads_of(fused, x, [w1, w2, wc], grad_out)
    _, ref = grads_of(plain_gate, x, [w1, w2, wc], grad_out)
    assert close(grads[0], ref[0], 1e-12)
    # the max_c term adds to channel 1 only: channel 3's gradient is the mean-term one alone
    _, split = grads_of(lambda *a: plain_gate(*a, ties="split"), x, [w1, w2, wc], grad_out)
    d_first = grads[0][0, 1] - grads[0][0, 3]
    d_split = split[0][0, 1] - split[0][0, 3]
    assert d_first.abs().max() > 1e-6 and d_split.abs().max() < 1e-12


def test_ties_at_relu_zeros_give_the_amax_parameter_gradients():
    """In the network the gate reads a ReLU's output: whole zero pixels and zero channels tie at 0,
    and the ReLU's backward zeroes the gradient there, so both tie rules give the same gradients
    for everything before the gate and for the gate's weights."""
    g = torch.Generator().manual_seed(5)
    gate = ContextBottleneck(8).double()
    pre = torch.randn(3, 8, 6, 6, generator=g, dtype=torch.float64)
    pre[:, :, :2, :] = -1.0          # two rows of pixels where every channel is zero after ReLU
    pre[:, 5] = -1.0                 # a dead channel: its spatial max ties at 0 everywhere
    grad_out = torch.randn(pre.shape, generator=g, dtype=pre.dtype)
    _, grads = grads_of(lambda p, *w: fused(F.relu(p), *w), pre, weights(gate), grad_out)
    _, split = grads_of(lambda p, *w: plain_gate(F.relu(p), *w, ties="split"), pre,
                        weights(gate), grad_out)
    for name, a, b in zip(["pre-ReLU input", "w1", "w2", "w_conv"], grads, split):
        assert close(a, b, 1e-12), name


def test_module_interface_and_fused_switch():
    gate = ContextBottleneck(64)
    assert [(k, tuple(v.shape)) for k, v in gate.state_dict().items()] == [
        ("channel.mlp.0.weight", (32, 64, 1, 1)),
        ("channel.mlp.2.weight", (64, 32, 1, 1)),
        ("spatial.conv.weight", (1, 2, 7, 7)),
    ]
    x = torch.randn(2, 64, 9, 9)
    ref = plain_gate(x, *weights(gate), ties="split")
    gate.fused = False                   # the submodules' plain definition
    assert torch.equal(gate(x), ref)
    gate.fused = True
    assert torch.equal(gate(x), ref)
    with torch.no_grad():                # inference path (no indices saved): the same values
        assert torch.equal(gate(x), ref)


def test_output_is_an_ordinary_autograd_tensor_for_hooks():
    """Grad-CAM hooks the gate module's output and registers a tensor hook for its gradient."""
    gate = ContextBottleneck(8)
    x = torch.randn(2, 8, 5, 5, requires_grad=True)
    seen = {}

    def forward_hook(module, inputs, output):
        seen["activation"] = output.detach()
        output.register_hook(lambda grad: seen.__setitem__("gradient", grad.detach()))

    handle = gate.register_forward_hook(forward_hook)
    out = gate(x)
    assert out.requires_grad and out.grad_fn is not None
    (out * out).sum().backward()
    handle.remove()
    assert torch.equal(seen["activation"], out.detach())
    assert torch.equal(seen["gradient"], 2 * out.detach())
    # frozen weights, input requiring grad (Grad-CAM on a frozen trunk) still yields input grads
    gate.requires_grad_(False)
    gate.zero_grad(set_to_none=True)
    x.grad = None
    gate(x).sum().backward()
    assert x.grad is not None and all(p.grad is None for p in gate.parameters())


def test_bf16_autocast_matches_the_plain_gate_under_autocast():
    """Under autocast (CPU here, the same code path as CUDA) the fused gate runs the same forward
    ops, so the output is identical; the backward casts explicitly (agreement to bf16 rounding)."""
    g = torch.Generator().manual_seed(9)
    gate = ContextBottleneck(16)
    x = torch.randn(2, 16, 7, 7, generator=g)
    grad_out = torch.randn(2, 16, 7, 7, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, grads = grads_of(fused, x, weights(gate), grad_out)
        ref_out, ref_grads = grads_of(plain_gate, x, weights(gate), grad_out)
    assert out.dtype == ref_out.dtype and torch.equal(out, ref_out)
    for a, b, p in zip(grads, ref_grads, [x, *weights(gate)]):
        assert a.dtype == p.dtype
        assert close(a.float(), b.float(), 3e-2)


def test_compiled_models_trace_the_plain_definition(monkeypatch):
    """Under torch.compile the module hands inductor the plain definition (it fuses that better)."""
    import mlvicx_core.bottleneck as bottleneck

    gate = ContextBottleneck(8)
    x = torch.randn(2, 8, 5, 5, requires_grad=True)
    assert type(gate(x).grad_fn).__name__ == "ContextGateFunctionBackward"
    monkeypatch.setattr(bottleneck, "_is_compiling", lambda: True)
    out = gate(x)
    assert type(out.grad_fn).__name__ != "ContextGateFunctionBackward"
    assert torch.equal(out, plain_gate(x, *weights(gate), ties="split"))

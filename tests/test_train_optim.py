"""LARS against hand-computed updates, the parameter groups, and the warmup-cosine schedule."""
import math

import pytest
import torch
from torch import nn

from mlvicx_core.train.optim import (
    LARS,
    WarmupCosine,
    build_optimizer,
    build_scheduler,
    param_groups,
    peak_lr,
)


class LinBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 1)
        self.bn = nn.BatchNorm1d(1)


def _set_grads(m, gw, gb):
    m.lin.weight.grad = torch.tensor(gw)
    m.lin.bias.grad = torch.tensor(gb)


def test_param_groups_exclude_biases_and_norms():
    m = LinBN()
    decay, excluded = param_groups(m, weight_decay=0.1)
    assert [id(p) for p in decay["params"]] == [id(m.lin.weight)]
    assert {id(p) for p in excluded["params"]} == {id(m.lin.bias), id(m.bn.weight), id(m.bn.bias)}
    assert decay["weight_decay"] == 0.1 and decay["lars_adaptation"] is True
    assert excluded["weight_decay"] == 0.0 and excluded["lars_adaptation"] is False


def test_lars_two_steps_match_hand_computation():
    m = LinBN()
    with torch.no_grad():
        m.lin.weight.copy_(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
        m.lin.bias.copy_(torch.tensor([1.0]))
    opt = LARS(param_groups(m, weight_decay=0.1), lr=0.5, momentum=0.9, weight_decay=0.1,
               trust_coefficient=0.01)
    _set_grads(m, [[0.6, 0.8]], [0.5])
    opt.step()
    # d = g + 0.1 w = (0.9, 1.2), ||d|| = 1.5, q = 0.01 * 5 / 1.5 = 1/30, w -= 0.5 * d / 30
    assert torch.allclose(m.lin.weight, torch.tensor([[2.985, 3.98]]), atol=1e-7)
    # bias: excluded -> no decay, no trust ratio: b -= 0.5 * 0.5
    assert torch.allclose(m.lin.bias, torch.tensor([0.75]), atol=1e-7)

    _set_grads(m, [[0.6, 0.8]], [0.5])
    opt.step()
    # second step with momentum, written out in plain floats
    w1 = [2.985, 3.98]
    d2 = [0.6 + 0.1 * w1[0], 0.8 + 0.1 * w1[1]]
    q2 = 0.01 * math.hypot(*w1) / math.hypot(*d2)
    buf = [0.9 * (0.9 / 30) + q2 * d2[0], 0.9 * (1.2 / 30) + q2 * d2[1]]
    expected = [w1[0] - 0.5 * buf[0], w1[1] - 0.5 * buf[1]]
    assert torch.allclose(m.lin.weight, torch.tensor([expected]), atol=1e-6)
    assert torch.allclose(m.lin.bias, torch.tensor([0.75 - 0.5 * (0.9 * 0.5 + 0.5)]), atol=1e-7)


def test_lars_zero_weight_uses_trust_ratio_one():
    w = nn.Parameter(torch.zeros(2, 2))
    opt = LARS([w], lr=0.1, momentum=0.0, weight_decay=0.0, trust_coefficient=0.001)
    w.grad = torch.ones(2, 2)
    opt.step()
    assert torch.allclose(w, torch.full((2, 2), -0.1))


def test_adamw_groups_have_no_decay_on_excluded():
    m = LinBN()
    opt = build_optimizer(m, "adamw", lr=1e-3, weight_decay=0.05)
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    sgd = build_optimizer(m, "sgd", lr=1e-3, weight_decay=0.05, momentum=0.8)
    assert isinstance(sgd, torch.optim.SGD)
    assert [(g["weight_decay"], g["momentum"]) for g in sgd.param_groups] == [(0.05, 0.8),
                                                                               (0.0, 0.8)]
    with pytest.raises(ValueError, match="optim.name='adam'"):
        build_optimizer(m, "adam", lr=1e-3, weight_decay=0.0)


def test_peak_lr_linear_scaling():
    assert peak_lr(0.2, 64) == pytest.approx(0.05)
    assert peak_lr(0.2, 2048) == pytest.approx(1.6)


def test_warmup_cosine_values():
    f = WarmupCosine(warmup_steps=4, total_steps=12, final_ratio=0.001)
    assert [f(t) for t in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f(4) == pytest.approx(1.0)  # cosine starts at the peak
    assert f(8) == pytest.approx(0.001 + 0.999 * 0.5)  # half way: cos(pi/2) = 0
    assert f(11) == pytest.approx(0.001 + 0.999 * 0.5 * (1 + math.cos(7 * math.pi / 8)))
    assert f(12) == pytest.approx(0.001) and f(50) == pytest.approx(0.001)


def test_scheduler_drives_the_optimizer_lr():
    m = LinBN()
    opt = build_optimizer(m, "lars", lr=peak_lr(0.2, 64), weight_decay=1e-6)
    sched = build_scheduler(opt, warmup_steps=2, total_steps=6, final_ratio=0.001)
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        assert opt.param_groups[1]["lr"] == seen[-1]
        opt.step()
        sched.step()
    expected = [0.025, 0.05] + [0.05 * (0.001 + 0.999 * 0.5 * (1 + math.cos(math.pi * k / 4)))
                                for k in range(4)]
    assert seen == pytest.approx(expected)


def _plain_lars_step(p, g, buf, lr, momentum, wd, eta, adapt):
    """The update of the module docstring written with fresh tensors (the form before the in-place
    rewrite): d = g + wd w; q = eta ||w|| / ||d||; m = mu m + q d; w -= lr m. Returns m."""
    d = g.add(p, alpha=wd) if wd != 0 else g
    if adapt:
        w_norm, d_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
        one = torch.ones_like(w_norm)
        q = torch.where(w_norm > 0, torch.where(d_norm > 0, eta * w_norm / d_norm, one), one)
        d = d.mul(q)
    buf = d.clone() if buf is None else buf.mul(momentum).add(d)
    p.add_(buf, alpha=-lr)
    return buf


def test_lars_in_place_update_equals_the_plain_form_bit_for_bit():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(7, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 5))
    ref = [p.detach().clone() for p in net.parameters()]
    groups = param_groups(net, weight_decay=1e-2)
    opt = LARS(groups, lr=0.3, momentum=0.9, weight_decay=1e-2, trust_coefficient=0.02)
    flags = {id(p): (g["weight_decay"], g["lars_adaptation"]) for g in groups for p in g["params"]}
    bufs = [None] * len(ref)
    for step in range(4):
        x = torch.randn(12, 7)
        net.zero_grad(set_to_none=True)
        net(x).pow(2).mean().backward()
        grads = [p.grad.clone() for p in net.parameters()]
        opt.step()
        for i, (p, r, g) in enumerate(zip(net.parameters(), ref, grads)):
            wd, adapt = flags[id(p)]
            bufs[i] = _plain_lars_step(r, g, bufs[i], 0.3, 0.9, wd, 0.02, adapt)
            assert torch.equal(p.detach(), r), f"step {step}, parameter {i}"
            assert torch.equal(opt.state[p]["momentum_buffer"], bufs[i])

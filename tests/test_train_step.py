"""The training step's precision choices: which autocast each device gets from ``train.amp`` /
``train.amp_cpu`` (decided without a GPU: the CUDA answers come from a mocked
``torch.cuda.is_bf16_supported``), a bf16 step on CPU against the float32 step, and the loss's
dtype inside autocast; and the other CUDA-specific choices (channels_last, pinned memory,
SyncBatchNorm under DDP) taken from the config for a CUDA device without one (a stand-in for
DistributedDataParallel records what it was given)."""
import warnings

import pytest
import torch
from train_helpers import TINY_MODEL, TinyCXR, simple_augment, tiny_config

from mlvicx_core.config import (NON_RESULT_KEYS, ConfigError, LossConfig, apply_overrides,
                                 config_hash, describe_keys, load_config)
from mlvicx_core.loss import mlvicx_loss
from mlvicx_core.model import MLVICX
from mlvicx_core.train import distributed
from mlvicx_core.train.step import (autocast_dtype, autocast_for, build_step, device_choices,
                                    loss_terms, train_step)
from mlvicx_core.train.trainer import setup

BF16 = torch.bfloat16
CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda", 0), torch.device("mps")


# -- the decision ----------------------------------------------------------------------------------
@pytest.mark.parametrize("device, amp, amp_cpu, gpu_has_bf16, expected", [
    (CUDA, True, False, True, BF16),        # the paper preset on a GPU
    (CUDA, True, True, True, BF16),         # amp_cpu does not matter on CUDA
    (CUDA, True, False, False, None),       # a GPU without bf16: full precision
    (CUDA, False, False, True, None),       # train.amp=false
    (CPU, True, False, True, None),         # the default on CPU: full precision
    (CPU, True, True, False, BF16),         # the switch: bf16 on CPU (no GPU involved)
    (CPU, False, False, False, None),
    (MPS, True, True, True, None),          # MPS: always full precision
    (MPS, True, False, True, None),
])
def test_autocast_dtype_per_device_type(monkeypatch, device, amp, amp_cpu, gpu_has_bf16,
                                        expected):
    asked = []

    def is_bf16_supported(*args, **kwargs):
        asked.append(True)
        return gpu_has_bf16

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert autocast_dtype(device, amp, amp_cpu) is expected
    # only a CUDA device with amp on asks the GPU (so CPU and MPS runs never touch CUDA)
    assert bool(asked) == (device.type == "cuda" and amp)


def test_autocast_for_builds_the_context_of_the_device_type():
    # a CUDA context is built (not entered: no GPU here) for the device's type and dtype
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # "CUDA is not available": not entered here
        ctx = autocast_for(CUDA, BF16)
    assert isinstance(ctx, torch.autocast) and ctx.device == "cuda" and ctx.fast_dtype is BF16
    lin = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with autocast_for(CPU, BF16):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") is BF16
        assert lin(x).dtype is BF16
    with autocast_for(CPU, None):
        assert not torch.is_autocast_enabled("cpu")
        assert lin(x).dtype is torch.float32


def test_amp_cpu_without_amp_names_both_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.amp_cpu=True: needs train\.amp=true"):
        tiny_config(tmp_path, **{"train.amp": False, "train.amp_cpu": True})
    with pytest.raises(ConfigError, match=r"train\.amp_cpu=1: expected true or false"):
        tiny_config(tmp_path, **{"train.amp_cpu": 1})


def test_amp_cpu_is_a_listed_key_that_changes_the_results(tmp_path):
    cfg = tiny_config(tmp_path)
    assert cfg.train.amp_cpu is False                    # full precision on CPU by default
    line = next(x for x in describe_keys().splitlines() if x.startswith("train.amp_cpu "))
    assert "true or false; default false." in line
    # bf16 changes the trained weights: a different run folder, never a reuse of the fp32 run
    assert "train.amp_cpu" not in NON_RESULT_KEYS
    assert config_hash(apply_overrides(cfg, ["train.amp_cpu=true"])) != config_hash(cfg)


def test_build_step_resolves_the_config_into_the_state(tmp_path):
    for amp_cpu, expected in ((False, None), (True, BF16)):
        cfg = tiny_config(tmp_path, **{"train.amp_cpu": amp_cpu})
        state = build_step(cfg, MLVICX(cfg.model), CPU, steps_per_epoch=4)
        assert state.amp_dtype is expected


# -- a bf16 step on CPU ----------------------------------------------------------------------------
def _one_step(tmp_path, amp_cpu: bool):
    cfg = tiny_config(tmp_path, **{"train.amp_cpu": amp_cpu, "train.batch_size": 16})
    torch.manual_seed(0)
    model = MLVICX(cfg.model).train()
    state = build_step(cfg, model, CPU, steps_per_epoch=4)
    data = TinyCXR(16)
    images = torch.stack([data[i]["image"] for i in range(16)])
    a, b = simple_augment(images, torch.Generator().manual_seed(0))
    return model, train_step(state, a, b)


def test_bf16_step_on_cpu_is_finite_and_close_to_float32(tmp_path):
    model32, r32 = _one_step(tmp_path, amp_cpu=False)
    model16, r16 = _one_step(tmp_path, amp_cpu=True)
    # the forward really ran in bf16 (the embeddings), the loss in float32
    assert r32.za.global_.dtype is torch.float32 and r16.za.global_.dtype is BF16
    assert r16.za.multi.dtype is BF16
    assert all(p.dtype is torch.float32 for p in model16.parameters())
    assert set(r16.terms) == set(r32.terms)
    for k, v in r16.terms.items():
        assert torch.isfinite(torch.tensor(v)), k
    # bf16 keeps 8 bits of mantissa (relative rounding 2^-9 per op); through the ResNet-18 trunk
    # and the heads this batch's total loss moves by 0.16 % and each branch's by up to 0.85 %:
    # the tolerance is 2 %, on the total and on each weighted branch loss
    for k in ("loss", "global/loss", "multi/loss"):
        assert r16.terms[k] == pytest.approx(r32.terms[k], rel=2e-2), k
    assert r16.grad_norm == pytest.approx(r32.grad_norm, rel=5e-2)   # 0.85 % here
    # the float32 gradients of both steps point the same way (cosine 0.84 here; unrelated
    # directions in 11.6 M dimensions would give ~0)
    g32, g16 = (torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None])
                for m in (model32, model16))
    assert g16.dtype is torch.float32 and g16.isfinite().all()
    assert torch.nn.functional.cosine_similarity(g32, g16, dim=0) > 0.7
    assert all(p.isfinite().all() for p in model16.parameters())

def test_loss_of_bf16_embeddings_is_float32_and_equals_the_float64_loss():
    """Inside autocast (as the step's forward) the embeddings are bf16; the loss upcasts them and
    computes in float32, even when called inside the autocast region: its terms equal the float64
    loss of the same (bf16-valued) embeddings (the loss's values themselves are pinned against
    references in test_loss.py)."""
    torch.manual_seed(1)
    model = MLVICX(TINY_MODEL).train()
    x = torch.rand(2, 8, 1, 32, 32)
    w = LossConfig(lam=0.5)
    with torch.autocast("cpu", dtype=BF16):
        za, zb = model(x[0]), model(x[1])
        terms = loss_terms(za, zb, w)
    assert za.global_.dtype is BF16 and za.multi.dtype is BF16
    ref = mlvicx_loss(za.global_.double(), zb.global_.double(), za.multi.double(),
                      zb.multi.double(), lam=w.lam, sim_coeff=w.sim_coeff, std_coeff=w.std_coeff,
                      cov_coeff=w.cov_coeff, gamma=w.gamma, eps=w.eps, check_finite=False)
    for k, v in terms.items():
        assert v.dtype is torch.float32, k
        assert v.item() == pytest.approx(ref[k].item(), rel=1e-5, abs=1e-6), k
    terms["loss"].backward()
    assert all(p.grad.dtype is torch.float32 for p in model.parameters() if p.grad is not None)



# -- the CUDA-specific choices, decided without a GPU ----------------------------------------------
class FakeDDP(torch.nn.Module):
    """Stands in for DistributedDataParallel (which needs a process group): records its inputs."""

    def __init__(self, module, device_ids=None):
        super().__init__()
        self.module, self.device_ids = module, device_ids


def _batchnorms(module):
    return [type(m).__name__ for m in module.modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize("device, preset, overrides, expected", [
    # (autocast dtype, channels_last, pin_memory, SyncBatchNorm under DDP)
    (CUDA, "paper", [], (BF16, True, True, True)),
    (CUDA, "paper", ["train.sync_batchnorm=false", "train.amp=false"], (None, True, True, False)),
    (CUDA, "teaching", [], (BF16, False, True, True)),          # teaching turns channels_last off
    (CPU, "paper", [], (None, True, False, False)),
    (CPU, "paper", ["train.amp_cpu=true"], (BF16, True, False, False)),
    (CPU, "teaching", [], (None, False, False, False)),
    (MPS, "paper", ["train.amp_cpu=true"], (None, True, False, False)),
])
def test_device_choices_follow_the_config_and_the_device_type(monkeypatch, device, preset,
                                                             overrides, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    train = apply_overrides(load_config(preset), overrides).train
    c = device_choices(train, device)
    channels_last = c.memory_format is torch.channels_last
    assert (c.amp_dtype, channels_last, c.pin_memory, c.sync_batchnorm) == expected
    assert channels_last or c.memory_format is torch.contiguous_format


@pytest.mark.parametrize("device, sync, expected_bn, expected_ids", [
    (CUDA, True, "SyncBatchNorm", [0]),
    (torch.device("cuda", 3), True, "SyncBatchNorm", [3]),
    (CUDA, False, "BatchNorm2d", [0]),
    (CPU, True, "BatchNorm2d", None),        # gloo: SyncBatchNorm would fail, so never on CPU
])
def test_wrap_ddp_converts_batchnorm_only_on_cuda(monkeypatch, device, sync, expected_bn,
                                                  expected_ids):
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", FakeDDP)
    model = MLVICX(TINY_MODEL)
    n2d = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    wrapped = distributed.wrap_ddp(model, device, sync)
    assert isinstance(wrapped, FakeDDP) and wrapped.device_ids == expected_ids
    kinds = _batchnorms(wrapped.module)
    assert kinds.count(expected_bn) >= n2d > 0


def test_build_step_on_a_cuda_device_under_ddp_without_a_gpu(monkeypatch, tmp_path):
    """build_step decides everything from the config and the device without touching the GPU:
    bf16 autocast, channels_last, SyncBatchNorm inside DDP with this rank's GPU."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", FakeDDP)
    cfg = tiny_config(tmp_path, **{"train.channels_last": True})
    env = distributed.DistEnv(rank=1, world_size=2, local_rank=1)
    state = build_step(cfg, MLVICX(cfg.model), torch.device("cuda", 1), steps_per_epoch=4,
                       env=env)
    assert state.amp_dtype is BF16 and state.memory_format is torch.channels_last
    assert isinstance(state.net, FakeDDP) and state.net.device_ids == [1]
    assert "BatchNorm2d" not in _batchnorms(state.net) and "SyncBatchNorm" in _batchnorms(state.net)
    assert state.gather is distributed.gather_with_grad      # the global batch for var/cov


def test_setup_on_cpu_applies_the_choices(tmp_path):
    cfg = tiny_config(tmp_path, **{"train.channels_last": True})
    run = setup(cfg, dataset=TinyCXR(32), augment=simple_augment, run_dir=tmp_path / "r",
                probe=False)
    assert run.loader.pin_memory is False
    assert run.state.amp_dtype is None and run.state.memory_format is torch.channels_last
    conv = run.state.model.backbone.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()

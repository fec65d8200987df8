"""Atomic checkpoints, exact resume, reproducibility and the trunk export."""
import pytest
import torch
import torchvision
from train_helpers import TINY_MODEL, TinyCXR, simple_augment, tiny_config

from mlvicx_core import checkpoints as ckpt_mod
from mlvicx_core.checkpoints import CheckpointManager, export_trunk, load_checkpoint
from mlvicx_core.model import MLVICX
from mlvicx_core.train.trainer import pretrain


def _state(step):
    """What a training checkpoint holds (checkpoints.TRAINING_KEYS), with one weight."""
    return {"step": step, "model": {"w": torch.full((3,), float(step))}, "optimizer": {},
            "scheduler": {}, "rng": {}, "augment_rng": torch.zeros(4, dtype=torch.uint8),
            "config": {}}


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    mgr = CheckpointManager(tmp_path, keep_last=2)
    first = mgr.save(_state(1))
    real_save = torch.save

    def crashing_save(obj, f):
        f.write(b"partial bytes of a checkpoint")  # half-written file, then the process "dies"
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(ckpt_mod.torch, "save", crashing_save)
    with pytest.raises(OSError, match=r"could not write .*step-00000002\.pt: simulated crash"):
        mgr.save(_state(2))
    monkeypatch.setattr(ckpt_mod.torch, "save", real_save)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000001.pt"]  # no temp, no step 2
    assert mgr.latest() == first
    assert torch.equal(load_checkpoint(first)["model"]["w"], torch.ones(3))


def _dead_pid() -> int:
    import os
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()  # reaped: its pid names no live process (reuse within the test is vanishingly rare)
    assert p.pid != os.getpid()
    return p.pid


def test_stale_temp_file_is_ignored_and_cleaned_before_the_next_write(tmp_path, monkeypatch):
    import os

    mgr = CheckpointManager(tmp_path, keep_last=2)
    mgr.save(_state(1))
    stale = tmp_path / f".step-00000009.pt.tmp{_dead_pid()}"  # what a killed process leaves
    stale.write_bytes(b"garbage")
    live = tmp_path / f".step-00000010.pt.tmp{os.getppid()}"  # a live writer's: left alone
    live.write_bytes(b"in progress")
    assert mgr.latest().name == "step-00000001.pt"
    seen = []
    real_save = torch.save
    # the stale file is gone *before* the new checkpoint is written (a full disk gets its space)
    monkeypatch.setattr(ckpt_mod.torch, "save",
                        lambda obj, f: (seen.append(stale.exists()), real_save(obj, f)))
    for s in (2, 3, 4):
        mgr.save(_state(s))
    assert seen == [False, False, False]
    assert [p.name for p in mgr.checkpoints()] == ["step-00000003.pt", "step-00000004.pt"]
    assert not stale.exists() and live.exists()


def test_unreadable_latest_checkpoint_falls_back_with_a_warning(tmp_path):
    from mlvicx_core.checkpoints import CheckpointError

    mgr = CheckpointManager(tmp_path, keep_last=3)
    mgr.save(_state(1))
    good = mgr.save(_state(2))
    bad = mgr.save(_state(3))
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    with pytest.warns(UserWarning, match=r"step-00000003\.pt is not a readable checkpoint.*"
                                         r"falling back to .*step-00000002\.pt"):
        path, state = mgr.load_latest()
    assert path == good and state["step"] == 2
    with pytest.raises(CheckpointError, match=r"step-00000003\.pt is not a readable checkpoint"):
        load_checkpoint(bad)
    for p in mgr.checkpoints():
        p.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no readable checkpoint in"):
        mgr.load_latest()


def test_a_loadable_file_that_is_no_training_checkpoint_is_skipped_with_a_warning(tmp_path):
    """Issue 19 item 3: a file torch loads but that lacks what a run resumes from (a trunk
    exported over a checkpoint, a model file, a wrong type) is treated like an unreadable one."""
    from mlvicx_core.checkpoints import CheckpointError

    mgr = CheckpointManager(tmp_path, keep_last=5)
    good = mgr.save(_state(1))
    torch.save({"conv1.weight": torch.zeros(2), "bn1.weight": torch.ones(2)},
               tmp_path / "step-00000002.pt")  # a trunk
    torch.save({**_state(3), "step": "3"}, tmp_path / "step-00000003.pt")
    torch.save([1, 2], tmp_path / "step-00000004.pt")
    with pytest.warns(UserWarning) as caught:
        path, state = mgr.load_latest()
    assert path == good and state["step"] == 1
    (message,) = [str(w.message) for w in caught]
    assert message == (
        f"{tmp_path / 'step-00000004.pt'}: expected a dict, found list; "
        f"{tmp_path / 'step-00000003.pt'} is not a training checkpoint (step is str); "
        f"{tmp_path / 'step-00000002.pt'} is not a training checkpoint (missing ['step', 'model', "
        "'optimizer', 'scheduler', 'rng', 'augment_rng', 'config']; it holds 2 entries: "
        f"['conv1.weight', 'bn1.weight']); falling back to {good}")
    good.unlink()
    with pytest.raises(CheckpointError, match=r"^no readable checkpoint in .*step-00000002\.pt is "
                                              r"not a training checkpoint \(missing"):
        mgr.load_latest()


def test_ctrl_c_in_python_saves_the_step_and_raises_a_short_interruption(tmp_path):
    """Issue 19 item 2, in Python (a notebook's interrupt is SIGINT): the step that was running is
    finished and checkpointed, then a KeyboardInterrupt saying where is raised; the same call
    resumes bit-identically, and the previous SIGINT handler is back."""
    import os
    import signal

    from mlvicx_core.train.trainer import TrainingInterrupted

    calls = []

    def interrupting_augment(images, generator=None):
        calls.append(len(calls) + 1)
        if len(calls) == 2:  # Ctrl-C while step 2 runs
            os.kill(os.getpid(), signal.SIGINT)
        return simple_augment(images, generator=generator)

    before = signal.getsignal(signal.SIGINT)
    cfg = tiny_config(tmp_path, **{"train.max_steps": 5})  # train.ckpt_every=100: none due
    with pytest.raises(KeyboardInterrupt) as info:
        pretrain(cfg, dataset=TinyCXR(32), augment=interrupting_augment, run_dir=tmp_path / "r")
    err = info.value
    ckpt = tmp_path / "r" / "checkpoints" / "step-00000002.pt"
    assert isinstance(err, TrainingInterrupted) and (err.step, err.checkpoint) == (2, ckpt)
    assert err.exit_status == 130 and calls == [1, 2]
    assert str(err) == (f"interrupted by SIGINT after step 2 of 5; checkpoint written: {ckpt}. The "
                        "same command (or the same pretrain / train_or_load call) resumes from it")
    assert signal.getsignal(signal.SIGINT) is before
    assert [p.name for p in ckpt.parent.iterdir()] == [ckpt.name]
    resumed = _run(cfg, tmp_path / "r")
    straight = _run(cfg, tmp_path / "s")
    assert resumed.step == straight.step == 5 and resumed.losses == straight.losses[2:]
    _assert_same_state(resumed.model, straight.model)
    assert signal.getsignal(signal.SIGINT) is before


def _run(cfg, run_dir):
    return pretrain(cfg, dataset=TinyCXR(32), augment=simple_augment, run_dir=run_dir)


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_resume_is_exact(tmp_path):
    # 32 images, batch 8 -> 4 steps per epoch: the split at step 3 is mid-epoch, the rest crosses
    # an epoch boundary. LARS with momentum and a warmup, so optimizer and scheduler state matter.
    base = dict(**{"optim.name": "lars", "optim.base_lr": 0.5, "train.epochs": 3})
    straight = _run(tiny_config(tmp_path, **base, **{"train.max_steps": 6}), tmp_path / "a")
    part1 = _run(tiny_config(tmp_path, **base, **{"train.max_steps": 3}), tmp_path / "b")
    part2 = _run(tiny_config(tmp_path, **base, **{"train.max_steps": 6}), tmp_path / "b")
    assert part1.step == 3 and part2.step == 6 and straight.step == 6
    assert part1.losses + part2.losses == straight.losses  # bitwise on CPU
    _assert_same_state(part2.model, straight.model)
    s_opt = load_checkpoint(straight.checkpoint)["optimizer"]["state"]
    r_opt = load_checkpoint(part2.checkpoint)["optimizer"]["state"]
    for k in s_opt:
        assert torch.equal(s_opt[k]["momentum_buffer"], r_opt[k]["momentum_buffer"])
    # the metrics file of the resumed run holds each step exactly once
    steps = [int(line.split('"step": ')[1].split(",")[0])
             for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_same_seed_same_result_other_seed_differs(tmp_path):
    cfg = tiny_config(tmp_path, **{"train.max_steps": 3})
    a = _run(cfg, tmp_path / "a")
    b = _run(cfg, tmp_path / "b")
    assert a.losses == b.losses
    _assert_same_state(a.model, b.model)
    c = _run(tiny_config(tmp_path, **{"train.max_steps": 3, "train.seed": 1}), tmp_path / "c")
    assert c.losses != a.losses


def test_exported_trunk_loads_in_torchvision_resnet18(tmp_path):
    model = MLVICX(TINY_MODEL.replace(width=64))  # torchvision's ResNet-18 is width 64
    path = export_trunk(model, tmp_path / "trunk.pt")
    sd = torch.load(path, weights_only=True)
    net = torchvision.models.resnet18()
    res = net.load_state_dict(sd, strict=False)
    assert sorted(res.missing_keys) == ["fc.bias", "fc.weight"]
    assert res.unexpected_keys == []
    assert torch.equal(net.layer3[1].conv2.weight, model.backbone.layer3[1].conv2.weight)
    # the pooled trunk features agree where there are no gates in the way: compare raw trunks
    x = torch.rand(2, 3, 32, 32)
    net.fc = torch.nn.Identity()
    net.eval(), model.backbone.eval()
    assert torch.allclose(net(x), model.backbone(x), atol=1e-6)

    with_gates = torch.load(export_trunk(model, tmp_path / "g.pt", with_gates=True),
                            weights_only=True)
    res = torchvision.models.resnet18().load_state_dict(with_gates, strict=False)
    assert sorted(res.missing_keys) == ["fc.bias", "fc.weight"]
    assert res.unexpected_keys and all(k.startswith("gates.") for k in res.unexpected_keys)


def test_a_real_write_failure_names_the_file_and_its_errno(tmp_path):
    """A file-size limit (RLIMIT_FSIZE; no root needed, unlike a small full file system) makes the
    kernel refuse a write part-way, as a full disk does. torch reports that only as "[enforce fail
    at inline_container.cc] ... unexpected pos"; the error names the file and the real errno."""
    import errno
    import os
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    pytest.importorskip("resource")
    code = textwrap.dedent("""
        import resource, signal, sys, torch
        from mlvicx_core.checkpoints import CheckpointManager
        mgr = CheckpointManager(sys.argv[1], keep_last=3)
        mgr.save({"step": 1, "model": {"w": torch.zeros(10)}})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        try:
            mgr.save({"step": 2, "model": {"w": torch.zeros(1 << 20)}})  # 4 MiB
        except OSError as err:
            print(err.errno, err)
    """)
    repo = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                          text=True, timeout=300, check=False,
                          env={**os.environ, "PYTHONPATH": repo})
    assert proc.stdout.strip() == (f"{errno.EFBIG} [Errno {errno.EFBIG}] could not write "
                                   f"{tmp_path / 'step-00000002.pt'}: File too large"), proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000001.pt"]  # no temporary
    assert load_checkpoint(tmp_path / "step-00000001.pt")["step"] == 1


def test_metrics_line_torn_by_a_crash_is_dropped_on_resume(tmp_path):
    """kill -9 while a metrics record is written leaves half a line; every rerun stopped with a
    JSONDecodeError traceback on it before."""
    import json

    from mlvicx_core.train.metrics_log import MetricsWriter

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    with pytest.warns(UserWarning, match=r"metrics\.jsonl:3: not a complete metrics record"):
        writer = MetricsWriter(tmp_path, tensorboard=False, resume_step=2)
    writer.write({"step": 3, "loss": 1.0})
    writer.close()
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no temporary left

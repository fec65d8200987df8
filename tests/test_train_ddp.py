"""DistributedDataParallel: two gloo processes on CPU against one process on the global batch.

The equivalence is exact only where BatchNorm does not see the batch split (BN statistics are per rank
without SyncBatchNorm, which needs CUDA). So the gradient test uses a small linear/ReLU model without
BatchNorm and checks the machinery that matters: the gather with gradient before the variance and
covariance terms, the local invariance term, and DDP's gradient averaging. The torchrun test then runs
the real CLI with the real (tiny) MLVICX in two processes.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from torch import nn

from mlvicx_core.model import Embeddings
from mlvicx_core.train import distributed
from mlvicx_core.config import apply_overrides, load_config
from mlvicx_core.train.step import TwoViewForward, loss_terms

# torchrun in subprocesses: make test runs these, make test-fast leaves them out
pytestmark = pytest.mark.subprocess

REPO = Path(__file__).resolve().parents[1]
GLOBAL_BATCH, WORLD = 12, 2


class LinearHeads(nn.Module):
    """(B, 1, 6, 6) -> global (B, 10) through a hidden ReLU layer, multi (B, 7) linear. No BN."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(36, 16)
        self.glob = nn.Linear(16, 10)
        self.multi = nn.Linear(36, 7)

    def forward(self, x):
        x = x.flatten(1)
        return Embeddings(self.glob(torch.relu(self.hidden(x))), self.multi(x))


def _inputs():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(GLOBAL_BATCH, 1, 6, 6, generator=g)
    return a, a + 0.1 * torch.randn(a.shape, generator=g)


def _config():
    return apply_overrides(load_config("teaching"), {"loss.lam": 0.7}).loss


def _worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    torch.manual_seed(0)
    model = LinearHeads()
    net = distributed.wrap_ddp(TwoViewForward(model), torch.device("cpu"))
    a, b = _inputs()
    n = GLOBAL_BATCH // WORLD
    za, zb = net(a[rank * n:(rank + 1) * n], b[rank * n:(rank + 1) * n])
    terms = loss_terms(za, zb, _config(), gather=distributed.gather_with_grad)
    names = list(terms)
    mean = distributed.all_reduce_mean(torch.stack([terms[k].detach() for k in names]))
    terms["loss"].backward()
    torch.save({"names": names, "terms": mean,
                "grads": {k: p.grad.clone() for k, p in model.named_parameters()}},
               Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_two_processes_match_one_process_on_the_global_batch(tmp_path):
    # fork: the children reuse the imported modules (spawn would re-import torch, ~10 s here)
    mp.start_processes(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD,
                       join=True, start_method="fork" if sys.platform == "linux" else "spawn")

    torch.manual_seed(0)
    model = LinearHeads()
    za, zb = TwoViewForward(model)(*_inputs())
    ref = loss_terms(za, zb, _config(), gather=None)
    ref["loss"].backward()
    for rank in range(WORLD):
        out = torch.load(tmp_path / f"rank{rank}.pt")
        expected = torch.stack([ref[k].detach() for k in out["names"]])
        assert torch.allclose(out["terms"], expected, rtol=1e-5, atol=1e-6), out["names"]
        for k, p in model.named_parameters():
            assert torch.allclose(out["grads"][k], p.grad, rtol=1e-5, atol=1e-6), (rank, k)
    # the gather matters: without it the per-rank variance/covariance terms differ from the global
    n = GLOBAL_BATCH // WORLD
    local = loss_terms(Embeddings(za.global_[:n], za.multi[:n]),
                       Embeddings(zb.global_[:n], zb.multi[:n]), _config())
    assert not torch.allclose(local["global/covariance"], ref["global/covariance"], rtol=1e-3)


def _vote(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    # rank 1 got SIGTERM (15) before step 1, no rank got one before step 2
    votes = [distributed.agree_max({0: 0, 1: 15}[rank], torch.device("cpu")),
             distributed.agree_max(0, torch.device("cpu"))]
    Path(out_dir, f"vote{rank}.json").write_text(json.dumps(votes))
    dist.destroy_process_group()


def test_every_rank_agrees_to_stop_when_one_got_the_signal(tmp_path):
    """The trainer's stop decision after a signal (issue 19 item 2): a signal that reached one rank
    stops every rank after the same step."""
    assert distributed.agree_max(15, torch.device("cpu")) == 15  # one process: its own value
    mp.start_processes(_vote, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD,
                       join=True, start_method="fork" if sys.platform == "linux" else "spawn")
    for rank in range(WORLD):
        assert json.loads((tmp_path / f"vote{rank}.json").read_text()) == [15, 0]


def test_sampler_shards_are_disjoint_and_resume_part_way():
    data = list(range(20))
    shards = []
    for rank in range(2):
        s = distributed.ResumableDistributedSampler(data, num_replicas=2, rank=rank, seed=3)
        s.set_epoch(4)
        shards.append(list(s))
    assert sorted(shards[0] + shards[1]) == data and len(shards[0]) == 10
    s = distributed.ResumableDistributedSampler(data, num_replicas=2, rank=1, seed=3)
    s.set_epoch(4, start=6)
    assert list(s) == shards[1][6:] and len(s) == 4
    s.set_epoch(5)
    assert list(s) != shards[1]  # a new permutation every epoch


def test_batch_must_divide_over_ranks():
    with pytest.raises(ValueError, match="divisible by the number of processes"):
        distributed.per_rank_batch(9, distributed.DistEnv(0, 2, 0))


def _write_images(root: Path, n: int):
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(root / f"{i:03d}.png")


TINY_SETS = ["data.view_size=32", "model.projector=[32,32]", "model.ml_projector=[32,32]",
             "model.fusion_size=8", "model.fusion_channels=16", "model.pool_size=2",
             "train.batch_size=8", "train.progress=false", "train.tensorboard=false"]


def test_torchrun_two_process_cli_run(tmp_path):
    _write_images(tmp_path / "imgs", 24)
    args = ["pretrain", "--preset", "teaching", "--set", "data.dataset=folder",
            "--set", f"data.root={tmp_path / 'imgs'}", "--set", f"train.out_dir={tmp_path}",
            "--set", "train.run_name=ddp", "--set", "train.max_steps=2"]
    for s in TINY_SETS:
        args += ["--set", s]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "mlvicx_core.cli", *args],
        check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("finished 2 steps") == 1  # rank 0 only
    run = tmp_path / "ddp"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]  # one writer
    assert all(np.isfinite(r["loss"]) for r in records)
    assert (run / "checkpoints" / "step-00000002.pt").is_file() and (run / "trunk.pt").is_file()


def test_torchrun_sigterm_stops_every_rank_after_the_same_step_and_resumes(tmp_path):
    """Issue 19 item 2 under torchrun: SIGTERM to torchrun reaches both workers; rank 0 is held
    while it writes step 3's record (it gets the signal there), rank 1 waits for it in the step's
    stop vote. Both stop after step 3, rank 0 writes that checkpoint, and the resumed run equals an
    uninterrupted one."""
    from test_faults import SITECUSTOMIZE

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    _write_images(tmp_path / "imgs", 16)

    def torchrun(name, **fault):
        args = ["pretrain", "--preset", "teaching", "--set", "data.dataset=folder",
                "--set", f"data.root={tmp_path / 'imgs'}", "--set", f"train.out_dir={tmp_path}",
                "--set", f"train.run_name={name}", "--set", "train.max_steps=4",
                "--set", "train.ckpt_every=100", "--set", "data.load_size=null"]
        for s in TINY_SETS:
            args += ["--set", s]
        env = dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{REPO}", OMP_NUM_THREADS="1",
                   **{f"MLVICX_FAULT{k}": v for k, v in fault.items()})
        return subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
             "2", "-m", "mlvicx_core.cli", *args], cwd=tmp_path, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    fired, release = tmp_path / "fired", tmp_path / "release"
    child = torchrun("ddp", **{"": "pauseline:metrics.jsonl:2", "_FIRED": str(fired),
                               "_RELEASE": str(release)})
    while not fired.exists():
        assert child.poll() is None, child.communicate()
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    release.touch()
    out, err = child.communicate(timeout=240)
    run = tmp_path / "ddp"
    ckpt = run / "checkpoints" / "step-00000003.pt"
    assert err.count("mlvicx pretrain: interrupted by SIGTERM after step 3 of 4; checkpoint "
                     f"written: {ckpt}.") == 1, out[-3000:] + err[-3000:]  # rank 0 says it
    assert sorted(p.name for p in ckpt.parent.iterdir()) == [ckpt.name]

    for name in ("ddp", "straight"):
        out, err = torchrun(name).communicate(timeout=240)
        assert out.count("finished 4 steps") == 1, out[-3000:] + err[-3000:]
        assert (f"resuming {run} from step 3 (step-00000003.pt)" in out) == (name == "ddp")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    a = torch.load(run / "checkpoints" / "step-00000004.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "straight" / "checkpoints" / "step-00000004.pt",
                   weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

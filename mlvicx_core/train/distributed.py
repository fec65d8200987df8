"""Multi-GPU / multi-node training with ``torchrun`` (DistributedDataParallel).

``torchrun`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` in every process; :func:`setup` reads
them, joins the process group (NCCL on CUDA, gloo otherwise) and picks the device ``cuda:LOCAL_RANK``.
Without those variables everything degrades to one process and no process group.

Conventions of the kit under DDP:

- ``train.batch_size`` is the *global* batch; each rank loads ``batch_size / world_size`` images
  through a :class:`ResumableDistributedSampler` (disjoint shards, reshuffled every epoch).
- Only rank 0 writes (metrics, TensorBoard, checkpoints, progress bar); see :attr:`DistEnv.is_main`.
- The VICReg variance and covariance terms must see the global batch (METHOD.md section 3):
  :func:`gather_with_grad` concatenates the embeddings of all ranks *with* gradient
  (``torch.distributed.nn.functional.all_gather``, whose backward sums the incoming gradients and
  returns each rank its slice). Together with DDP's gradient averaging this gives exactly the
  gradient of the single-process loss on the concatenated batch (tested).
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: ``rank`` of ``world_size`` (``local_rank`` on its node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect() -> DistEnv:
    """The torchrun environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), or a single process."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return DistEnv()
    return DistEnv(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                   int(os.environ.get("LOCAL_RANK", "0")))


def setup(device: torch.device) -> DistEnv:
    """Join the torchrun process group if launched by torchrun (idempotent); returns the env."""
    env = detect()
    if env.is_distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return env


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def gather_with_grad(z: torch.Tensor) -> torch.Tensor:
    """(n, D) per rank -> (world_size * n, D) in rank order, differentiable; identity without DDP."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(z.contiguous()), dim=0)


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Average a tensor over ranks (for logging); unchanged without DDP."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return values


def agree_max(value: int, device: torch.device) -> int:
    """The largest ``value`` over all ranks, the same on every rank (a collective: every rank must
    call it at the same point); ``value`` itself without DDP. The trainer's stop decision after a
    signal, so that every rank stops after the same step."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (a collective); ``[obj]`` without
    DDP."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def wrap_ddp(model: nn.Module, device: torch.device, sync_batchnorm: bool = True) -> nn.Module:
    """DistributedDataParallel around ``model`` (BatchNorm -> SyncBatchNorm on CUDA if asked).

    SyncBatchNorm needs CUDA; on CPU (gloo) BatchNorm statistics stay per rank.
    """
    if sync_batchnorm and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` that can start an epoch part-way (to resume mid-epoch exactly).

    ``set_epoch(epoch, start=k)`` skips this rank's first ``k`` indices of that epoch's permutation,
    the ones already consumed before the interruption. Also used with one process (``num_replicas=1``)
    so that the order of the data depends only on the seed and the epoch.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = True) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        super().set_epoch(epoch)
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"start={start}: expected 0..{self.num_samples}")
        self.start = start

    def __iter__(self) -> Iterator[int]:
        it = super().__iter__()
        for _ in range(self.start):
            next(it)
        return it

    def __len__(self) -> int:
        return self.num_samples - self.start


def per_rank_batch(global_batch: int, env: DistEnv) -> int:
    """``global_batch / world_size``; raises if it does not divide."""
    if global_batch % env.world_size:
        raise ValueError(
            f"train.batch_size={global_batch} is the global batch and must be divisible by the "
            f"number of processes ({env.world_size})"
        )
    per = global_batch // env.world_size
    if per * env.world_size < 2:
        raise ValueError(f"train.batch_size={global_batch}: VICReg needs a global batch of at least 2")
    return per


def steps_per_epoch(num_samples: int, global_batch: int, env: DistEnv) -> int:
    """Optimizer steps per epoch (incomplete batches are dropped)."""
    per_rank_samples = num_samples // env.world_size
    return per_rank_samples // per_rank_batch(global_batch, env) if per_rank_samples else 0


__all__ = [
    "DistEnv", "ResumableDistributedSampler", "agree_max", "all_reduce_mean", "detect",
    "gather_objects", "gather_with_grad", "per_rank_batch", "setup", "steps_per_epoch", "teardown",
    "wrap_ddp",
]

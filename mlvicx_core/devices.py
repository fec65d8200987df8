"""Which device the kit computes on: one rule shared by training, evaluation and the benchmarks."""
from __future__ import annotations

import torch


def select_device(name: str | torch.device | None = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"`` (or ``None``): ``cuda:<local_rank>`` if available, else ``mps``, else ``cpu``; or
    the given name (a bare ``"cuda"`` also means ``cuda:<local_rank>``, so torchrun ranks get one GPU
    each)."""
    if isinstance(name, torch.device):
        return name
    if name == "cuda":
        return torch.device("cuda", local_rank)
    if name not in (None, "auto"):
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")

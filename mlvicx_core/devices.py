"""Which device the kit computes on: one rule shared by training, evaluation and the benchmarks."""
from __future__ import annotations

import torch

from .config import ConfigError


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def select_device(name: str | torch.device | None = "auto", local_rank: int = 0,
                  key: str = "train.device") -> torch.device:
    """``"auto"`` (or ``None``): ``cuda:<local_rank>`` if available, else ``mps``, else ``cpu``; or
    the given name (a bare ``"cuda"`` also means ``cuda:<local_rank>``, so torchrun ranks get one GPU
    each).

    A device this machine does not have (``cuda`` without a GPU, ``cuda:7`` with one, ``mps`` off a
    Mac) is a :class:`~mlvicx_core.config.ConfigError` naming ``key`` and what the machine has, not
    a traceback from the first tensor moved there.
    """
    if isinstance(name, torch.device):
        return name
    if name in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{key}={name!r}: expected auto, cpu, cuda, cuda:<n> or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{key}={name!r}: this machine has no usable CUDA device (torch "
                              f"{torch.__version__}, built for CUDA {torch.version.cuda or 'none'}"
                              "); expected auto or cpu")
        count = torch.cuda.device_count()
        index = device.index if device.index is not None else 0
        if index >= count:
            rank = f" (LOCAL_RANK {local_rank})" if name == "cuda" else ""
            raise ConfigError(f"{key}={name!r}{rank}: this machine has {count} CUDA device(s), "
                              f"cuda:0 to cuda:{count - 1}; expected one of them or auto")
    elif device.type == "mps" and not _mps_available():
        raise ConfigError(f"{key}={name!r}: Apple's MPS backend is not available on this machine; "
                          "expected auto or cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{key}={name!r}: expected auto, cpu, cuda, cuda:<n> or mps")
    return device

"""Embedding extraction for any encoder and any contract dataset, cached on disk.

Three kinds of features:

- ``"trunk"``: global-average-pooled layer4 of the transferable :class:`~.trunk.Trunk`
  (B, 512 for ResNet-18); ``gates=True`` keeps the context bottlenecks.
- ``"layer3+layer4"``: pooled layer3 and pooled layer4 of the same trunk, concatenated
  (B, 256 + 512 for ResNet-18): more of the mid-level detail small findings live in.
- ``"global"``: the global projector's output ``Embeddings.global_`` (B, D).
- ``"multi"``: the multi-level projector's output ``Embeddings.multi`` (B, D_ml); MLVICX only.

Extraction runs in eval mode under ``torch.no_grad()``, batched, on any device. With ``cache_dir``
the result is stored as ``<cache_dir>/<kind>-<model hash>-<dataset hash>.npz``: the model hash covers
every weight (:func:`state_fingerprint`), the dataset hash covers every image
(:func:`dataset_fingerprint` states exactly what it detects and what it does not).
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import uuid
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..config import FEATURE_KINDS
from ..devices import select_device
from ..model import MLVICX
from .trunk import Trunk

TRUNK_KINDS = ("trunk", "layer3+layer4")  # the kinds read from the transferable trunk
#: Enters every dataset key; bump it when a change of the kit alters the pixels that a dataset
#: serves from unchanged files (a reader fix), so that features cached before are not reused.
FINGERPRINT_VERSION = 2


class Features(NamedTuple):
    """Extracted features with what is needed to evaluate them, row-aligned."""

    x: np.ndarray  # (N, D) float32
    labels: np.ndarray  # (N, K) float32, NaN = unknown
    patient_ids: np.ndarray  # (N,) str
    index: np.ndarray  # (N,) int, dataset index of each row


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` -> cuda if available, else mps, else cpu (:func:`mlvicx_core.devices.select_device`)."""
    return select_device(device, key="eval.device")


def state_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 (16 hex digits) of every parameter and buffer: changes whenever any weight changes."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _item_file(dataset: Dataset, index: int) -> tuple[str, os.stat_result] | None:
    """(absolute path, stat) of the regular file ``dataset.describe(index)`` names, else None."""
    describe = getattr(dataset, "describe", None)
    if describe is None:
        return None
    name = describe(index)
    try:
        st = os.stat(name)
    except (OSError, ValueError, TypeError):
        return None
    return (os.path.abspath(name), st) if stat.S_ISREG(st.st_mode) else None


def dataset_fingerprint(dataset: Dataset) -> str:
    """A 16-hex-digit identity of a contract dataset, covering every image.

    What enters the key:

    - the dataset's class (module and qualified name), ``len``, ``image_size``, ``findings``,
      ``labels``, ``patient_ids``, its public scalar attributes (str/int/float/bool/None, e.g.
      ``root``, ``split``, ``seed``, ``bit_depth``, ``on_error``) and :data:`FINGERPRINT_VERSION`;
    - per image ``i``: when the dataset has a ``transform`` attribute that is None and
      ``describe(i)`` names an existing regular file (the file-backed datasets: NIH, folders,
      DICOM sets), that file's absolute path, size, modification time (ns) and inode, read with one
      ``os.stat`` (no decoding); otherwise (in-memory arrays such as MedMNIST, a ``CachedDataset``,
      synthetic images, wrappers without ``transform`` or ``describe``, any dataset with a
      transform) the exact float32 bytes and shape of ``dataset[i]["image"]``.

    Guarantee: a change to any image served by an in-memory / transformed dataset, and any rewrite
    of a file that changes its size, mtime or inode (ordinary saves, copies, ``rsync``, which
    replaces by rename), gives another key. Not detected: a file rewritten in place with its size
    kept and its old mtime restored (``touch -r``, ``cp -p`` over an existing file); a change of the
    kit's reading code (covered only by bumping :data:`FINGERPRINT_VERSION`); a transform or
    attribute whose effect is random (the pixel hash then differs every call, so nothing is reused).
    Cost: one ``os.stat`` per file-backed image, one sample read per other image (a pass over the
    data without the network).
    """
    h = hashlib.sha256()
    params = {k: v for k, v in sorted(getattr(dataset, "__dict__", {}).items())
              if not k.startswith("_") and isinstance(v, (str, int, float, bool, type(None)))}
    head = {"version": FINGERPRINT_VERSION, "n": len(dataset),
            "class": f"{type(dataset).__module__}.{type(dataset).__qualname__}",
            "image_size": repr(getattr(dataset, "image_size", None)),
            "findings": repr(getattr(dataset, "findings", None)), "params": params}
    h.update(json.dumps(head, sort_keys=True, default=repr).encode())
    for attr in ("labels", "patient_ids"):
        value = getattr(dataset, attr, None)
        if value is not None:
            arr = np.asarray(value)
            h.update(f"\0{attr}{arr.shape}\0".encode())
            h.update(arr.astype(str if attr == "patient_ids" else np.float32).tobytes())
    # stat keys only where the dataset states it has no transform (a wrapper without the
    # attribute may hide its base's transform): otherwise the served pixels are hashed
    by_file = hasattr(dataset, "transform") and dataset.transform is None
    for i in range(len(dataset)):
        found = _item_file(dataset, i) if by_file else None
        if found is not None:
            name, st = found
            h.update(f"f\0{name}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\n".encode())
        else:
            img = np.ascontiguousarray(np.asarray(dataset[i]["image"], dtype=np.float32))
            h.update(f"p\0{img.shape}\0".encode())
            h.update(img.tobytes())
    return h.hexdigest()[:16]


def loader(dataset: Dataset, batch_size: int = 64, num_workers: int = 0,
           shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A DataLoader over contract samples (deterministic order unless ``shuffle``)."""
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      generator=gen)


def check_images(images: torch.Tensor, where: str) -> None:
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"{where}: expected 'image' batches of shape (B, 1 or 3, S, S), got "
                         f"{tuple(images.shape)} (use a dataset without a two-view transform)")


def batch_features(net: torch.nn.Module, images: torch.Tensor, kind: str) -> torch.Tensor:
    """(B, D) features of one batch: ``net`` is a :class:`Trunk` for the trunk kinds, the MLVICX
    itself for ``global`` / ``multi``."""
    if kind == "trunk":
        return net(images)
    if kind == "layer3+layer4":
        taps = net.taps(images)
        return torch.cat([taps["layer3"].mean(dim=(2, 3)), taps["layer4"].mean(dim=(2, 3))], 1)
    emb = net(images)
    return emb.global_ if kind == "global" else emb.multi


def _network(model: MLVICX, kind: str, gates: bool) -> torch.nn.Module:
    if kind not in FEATURE_KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {FEATURE_KINDS}")
    if kind == "multi" and getattr(model, "fusion", None) is None:
        raise ValueError("kind='multi' needs an MLVICX with a multi-level branch (this is VICReg)")
    return Trunk(model, keep_gates=gates) if kind in TRUNK_KINDS else model


@torch.no_grad()
def trunk_features(model: MLVICX, images: torch.Tensor, kind: str = "trunk", gates: bool = False,
                   batch_size: int = 128) -> np.ndarray:
    """(N, D) features of in-memory images (N, 1, S, S) on the model's device, in eval mode (the
    model's train/eval mode is restored); the online probe's fast path (no cache, no loader)."""
    net = _network(model, kind, gates)
    device = next(model.parameters()).device
    was_training = model.training
    net.eval()
    out = [batch_features(net, images[i:i + batch_size].to(device), kind).float().cpu()
           for i in range(0, len(images), batch_size)]
    if was_training:
        model.train()
    return torch.cat(out).numpy()


@torch.no_grad()
def _extract(model: MLVICX, dataset: Dataset, kind: str, gates: bool, batch_size: int,
             device: torch.device, num_workers: int) -> Features:
    net = _network(model, kind, gates)
    was_training = model.training
    home = next(model.parameters()).device  # the caller's model goes back where it was
    net = net.to(device).eval()
    xs, ys, pids, idx = [], [], [], []
    for batch in loader(dataset, batch_size, num_workers):
        images = batch["image"]
        check_images(images, type(dataset).__name__)
        images = images.to(device, dtype=torch.float32)
        out = batch_features(net, images, kind)
        xs.append(out.float().cpu().numpy())
        ys.append(batch["labels"].float().numpy())
        pids.extend(str(p) for p in batch["patient_id"])
        idx.append(np.asarray(batch["index"]))
    model.to(home)
    if was_training:
        model.train()
    return Features(np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.float32),
                    np.asarray(pids, dtype=str), np.concatenate(idx).astype(np.int64))


def extract_features(model: MLVICX, dataset: Dataset, kind: str = "trunk", *, gates: bool = False,
                     batch_size: int = 64, device: str | torch.device | None = None,
                     num_workers: int = 0, cache_dir: str | Path | None = None) -> Features:
    """Features of every image of ``dataset`` under ``model`` (see the module docstring).

    Returns :class:`Features`; with ``cache_dir`` a second call with the same weights and dataset
    loads the stored arrays instead of running the network.
    """
    if kind not in FEATURE_KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {FEATURE_KINDS}")
    if len(dataset) == 0:
        raise ValueError(f"{type(dataset).__name__} is empty: nothing to extract")
    path = None
    if cache_dir is not None:
        tag = f"{kind}{'-gated' if gates and kind in TRUNK_KINDS else ''}"
        path = Path(cache_dir) / f"{tag}-{state_fingerprint(model)}-{dataset_fingerprint(dataset)}.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as f:
                return Features(f["x"], f["labels"], f["patient_ids"], f["index"])
    feats = _extract(model, dataset, kind, gates, batch_size, resolve_device(device), num_workers)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a killed run leaves no torn file, and the per-process temporary name
        # keeps two processes extracting the same features at once (notebooks) from colliding.
        tmp = path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp.npz")
        np.savez(tmp, **feats._asdict())
        os.replace(tmp, path)
    return feats

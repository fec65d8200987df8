"""Decode-and-resize-once cache: any ``CXRDataset`` at size S as one memory-mapped uint8 array.

Layout under a cache root (default ``<repo>/data/cache``), one directory per (name, split, size)::

    <root>/<name>/<split>/<S>px/images.npy     uint8 (N, S, S), memory-mapped when read
                               /meta.npz       labels float32 (N, K), patient_ids str (N,),
                                               ok bool (N,) (False: the source file was unreadable)
                               /manifest.json  written last: version, N, S, findings, fingerprint,
                                               build_id (random, new for every build)

Pixels: ``u8 = round(255 x)`` of the source image after the kit's resize (``base.resize_image``), so
a cached image differs from the source sample by at most 0.5/255.

Crash safety: a build writes into a hidden sibling ``.<S>px.tmp-<host>-<pid>-<hex>``, fsyncs every
file, writes the manifest last, then renames the directory into place (atomic on POSIX) and fsyncs
the parent. A reader only trusts a directory whose manifest exists, matches the expected fingerprint
and whose arrays have the manifest's shapes, so an interrupted build is never used; its temporary
directory is removed on the exception, or by the next build if the process was killed.

Live datasets and rebuilds: a ``CachedDataset`` opens its entry once, when it is created: the
manifest, the labels and ids and the memory map of ``images.npy`` are all read through one open
descriptor of the entry directory, so they come from one build, and the map keeps serving those
pixels even after another process rebuilds the entry (the old files are unlinked, not overwritten;
the map holds them). DataLoader workers started by ``fork`` (the Linux default) share that map. A
copy made by pickling (``spawn``/``forkserver`` workers) cannot share it and re-opens the entry by
path; if the entry was rebuilt meanwhile (another ``build_id`` or another ``images.npy`` file), it
raises ``RuntimeError`` naming the entry instead of serving another build's pixels under this
dataset's labels and patient ids.

Invalidation: the fingerprint hashes the file list (``dataset.describe(i)``, with size and mtime
when it names a file), the labels, patient ids and findings, the dataset's class and its public
scalar attributes (e.g. ``root``, ``split``, ``seed``), the size and the cache format version. Any
change means a rebuild. Masks are not cached: ``CachedDataset`` reads them from the source on
demand.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import socket
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .base import CXRDataset, resize_image

CACHE_VERSION = 1
_IGNORED_ATTRS = {"image_size", "transform", "on_error"}  # do not change the cached pixels


def default_cache_root() -> Path:
    """``<repository>/data/cache`` (git-ignored)."""
    return Path(__file__).resolve().parents[2] / "data" / "cache"


def cache_dir(root: str | os.PathLike, name: str, split: str, size: int) -> Path:
    """The directory of one cache entry: ``<root>/<name>/<split>/<size>px``."""
    for what, value in (("name", name), ("split", split)):
        if not value or "/" in value or value.startswith("."):
            raise ValueError(f"cache {what}={value!r}: expected a plain, non-hidden directory name")
    return Path(root) / name / split / f"{int(size)}px"


def source_fingerprint(dataset: CXRDataset, size: int, extra: Any = None) -> str:
    """sha256 over everything that determines the cached arrays (see the module docstring)."""
    h = hashlib.sha256()
    params = {k: v for k, v in sorted(vars(dataset).items())
              if not k.startswith("_") and k not in _IGNORED_ATTRS
              and isinstance(v, (str, int, float, bool, type(None)))}
    head = {"version": CACHE_VERSION, "size": int(size), "n": len(dataset),
            "class": f"{type(dataset).__module__}.{type(dataset).__qualname__}",
            "findings": list(dataset.findings), "params": params, "extra": extra}
    h.update(json.dumps(head, sort_keys=True, default=str).encode())
    h.update(np.ascontiguousarray(dataset.labels, dtype=np.float32).tobytes())
    h.update("\0".join(map(str, dataset.patient_ids)).encode())
    for i in range(len(dataset)):
        name = dataset.describe(i)
        try:
            st = os.stat(name)
            h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except (OSError, ValueError):  # not a file (synthetic data): its name is all there is
            h.update(f"{name}\n".encode())
    return h.hexdigest()


class _SourceImages(Dataset):
    """Item i: (uint8 (S, S) image, ok) from the source, in the source's own resize policy."""

    def __init__(self, source: CXRDataset, size: int):
        self.source, self.size = source, size
        self.direct = type(source).load_image is not CXRDataset.load_image
        if not self.direct and (source.transform is not None or source.image_size != size):
            raise ValueError(f"{type(source).__name__} has no load_image(): build the cache from "
                             f"its samples with transform=None and image_size={size} (got "
                             f"transform={source.transform!r}, image_size={source.image_size})")

    def __len__(self) -> int:
        return len(self.source)

    def _image(self, i: int) -> torch.Tensor:
        if not self.direct:
            return self.source._sample(i)["image"]
        arr = np.asarray(self.source.load_image(i), dtype=np.float32)
        if arr.ndim != 2:
            raise ValueError(f"{self.source.describe(i)}: load_image returned shape {arr.shape}, "
                             "expected (H, W)")
        return resize_image(torch.from_numpy(np.ascontiguousarray(arr))[None], self.size)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, bool]:
        try:
            img = self._image(i)
        except (OSError, ValueError) as err:
            if self.source.on_error == "raise":
                wrapped = OSError if isinstance(err, OSError) else ValueError  # keep the category
                raise wrapped(f"caching {self.source.describe(i)}: {err}") from err
            warnings.warn(f"cache: skipping {self.source.describe(i)}: {err}", stacklevel=2)
            return torch.zeros(self.size, self.size, dtype=torch.uint8), False
        return (img[0].clamp(0, 1) * 255).round().to(torch.uint8), True


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(path: Path, fingerprint: str | None = None) -> dict | None:
    """The manifest of a complete, consistent cache at ``path`` (with that fingerprint) or None."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        images = np.load(path / "images.npy", mmap_mode="r")
        with np.load(path / "meta.npz", allow_pickle=False) as meta:
            n_labels, n_ids = len(meta["labels"]), len(meta["patient_ids"])
    except (OSError, ValueError, KeyError):
        return None
    n, s = manifest.get("n"), manifest.get("size")
    if (manifest.get("version") != CACHE_VERSION or images.shape != (n, s, s)
            or images.dtype != np.uint8 or n_labels != n or n_ids != n
            or (fingerprint is not None and manifest.get("fingerprint") != fingerprint)):
        return None
    return manifest


class _Entry:
    """One build of a cache entry as opened: manifest, meta arrays, image map and its identity."""

    def __init__(self, manifest: dict, meta: dict[str, np.ndarray], images: np.ndarray,
                 identity: tuple) -> None:
        self.manifest, self.meta, self.images, self.identity = manifest, meta, images, identity

    def valid(self, fingerprint: str) -> bool:
        m, n, s = self.manifest, self.manifest.get("n"), self.manifest.get("size")
        return (m.get("version") == CACHE_VERSION and m.get("fingerprint") == fingerprint
                and self.images.shape == (n, s, s) and self.images.dtype == np.uint8
                and all(len(self.meta[k]) == n for k in ("labels", "patient_ids", "ok")))


def _open_entry(path: Path) -> _Entry:
    """Open the manifest, meta.npz and a read-only map of images.npy of the entry at ``path``.

    Where the platform allows it, the three files are opened relative to one descriptor of the
    directory: a rebuild that renames another directory into place meanwhile cannot mix builds.
    Raises OSError / ValueError / KeyError for a missing or torn entry.
    """
    use_dir_fd = os.open in os.supports_dir_fd and hasattr(os, "O_DIRECTORY")
    dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY) if use_dir_fd else None

    def opener(name: str, flags: int) -> int:
        return os.open(name, flags, dir_fd=dfd) if dfd is not None else os.open(path / name, flags)

    try:
        with open("manifest.json", "rb", opener=opener) as f:
            manifest = json.loads(f.read())
        with open("meta.npz", "rb", opener=opener) as f, np.load(f, allow_pickle=False) as meta:
            arrays = {k: meta[k] for k in ("labels", "patient_ids", "ok")}
        with open("images.npy", "rb", opener=opener) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"{path / 'images.npy'}: .npy format {version}; expected 1.0/2.0")
            st = os.fstat(f.fileno())
            if int(np.prod(shape)) == 0:
                images = np.zeros(shape, dtype=dtype)
            else:  # the map keeps its own duplicate of the descriptor: closing f is fine
                images = np.memmap(f, dtype=dtype, mode="r", offset=f.tell(), shape=shape,
                                   order="F" if fortran else "C")
    finally:
        if dfd is not None:
            os.close(dfd)
    identity = (manifest.get("build_id"), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    return _Entry(manifest, arrays, images, identity)


def _remove_dead_temporaries(final: Path) -> None:
    """Temporary build directories of this key left by killed processes on this host."""
    host = socket.gethostname()
    prefix = f".{final.name}.tmp-"
    for tmp in final.parent.glob(f"{prefix}*"):
        # "<host>-<pid>-<hex>": the host may itself contain '-', so split from the right, twice
        parts = tmp.name[len(prefix):].rsplit("-", 2)
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:  # alive, someone else's
            pass


def build_cache(source: CXRDataset, final: Path, size: int, fingerprint: str,
                num_workers: int = 0, batch_size: int = 32,
                on_write: Callable[[int], None] | None = None, replace: bool = False) -> dict:
    """Decode every source image once into ``final`` (replacing an old entry); returns the manifest.

    ``num_workers`` > 0 decodes in DataLoader worker processes. ``on_write(i)`` is called after each
    batch is written, with the number of images done (a progress hook; tests use it to interrupt).
    If a valid entry with the same fingerprint appeared meanwhile (a concurrent build of the same
    key), it is kept and this build's copy discarded, unless ``replace``.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temporaries(final)
    tag = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp = final.parent / f".{final.name}.tmp-{tag}"
    tmp.mkdir()
    try:
        n = len(source)
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                           shape=(n, size, size))
        ok = np.zeros(n, dtype=bool)
        loader = DataLoader(_SourceImages(source, size), batch_size=batch_size,
                            num_workers=num_workers, shuffle=False)
        done = 0
        for imgs, flags in loader:  # DataLoader keeps the order, so slices line up with indices
            images[done:done + len(imgs)] = imgs.numpy()
            ok[done:done + len(imgs)] = flags.numpy()
            done += len(imgs)
            if on_write is not None:
                on_write(done)
        images.flush()
        del images
        labels = np.asarray(source.labels, dtype=np.float32)
        if labels.ndim != 2 or len(labels) != n:
            raise ValueError(f"{type(source).__name__}.labels: expected shape ({n}, K), got "
                             f"{labels.shape}")
        np.savez(tmp / "meta.npz", labels=labels,
                 patient_ids=np.array([str(p) for p in source.patient_ids], dtype=str), ok=ok)
        manifest = {"version": CACHE_VERSION, "n": n, "size": size, "fingerprint": fingerprint,
                    "build_id": secrets.token_hex(8),
                    "findings": list(source.findings), "skipped": int((~ok).sum()),
                    "source": f"{type(source).__module__}.{type(source).__qualname__}"}
        for f in ("images.npy", "meta.npz"):
            _fsync(tmp / f)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))  # last: marks completion
        _fsync(tmp / "manifest.json")
        _fsync(tmp)
        if not replace and read_manifest(final, fingerprint) is not None:  # concurrent build won
            shutil.rmtree(tmp, ignore_errors=True)
            return json.loads((final / "manifest.json").read_text())
        trash = final.parent / f".{final.name}.old-{secrets.token_hex(4)}"
        if final.exists():
            os.rename(final, trash)
        try:
            os.rename(tmp, final)
        except OSError:
            if read_manifest(final, fingerprint) is None:  # not a concurrent identical build
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        _fsync(final.parent)
        shutil.rmtree(trash, ignore_errors=True)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class CachedDataset(CXRDataset):
    """A ``CXRDataset`` served from the cache of ``source`` at ``size`` (built if missing or stale).

    Samples follow the base contract (image float32 (1, S, S) in [0, 1] = cached uint8 / 255), with
    ``transform`` (any per-sample transform) applied on top. Masks and boxes come from ``source``.

    Parameters: ``root`` (default ``default_cache_root()``), ``name`` (default the source's class
    name), ``split`` (default ``source.split`` or ``"all"``), ``num_workers`` for the build,
    ``rebuild=True`` forces a rebuild, ``fingerprint_extra`` any JSON-able value to add to the key.
    """

    def __init__(self, source: CXRDataset, size: int | None = None,
                 root: str | os.PathLike | None = None, name: str | None = None,
                 split: str | None = None, transform: Callable | None = None,
                 on_error: str | None = None, num_workers: int = 0, rebuild: bool = False,
                 fingerprint_extra: Any = None) -> None:
        size = size if size is not None else source.image_size
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"CachedDataset size={size!r}: expected a positive int (the cache "
                             "stores fixed-size images; the source has image_size=None)")
        super().__init__(image_size=size, transform=transform,
                         on_error=on_error if on_error is not None else source.on_error)
        self.source = source
        self.has_masks = source.has_masks
        self.metadata = getattr(source, "metadata", None)
        self.path = cache_dir(root if root is not None else default_cache_root(),
                              name or type(source).__name__,
                              split or str(getattr(source, "split", None) or "all"), size)
        fingerprint = source_fingerprint(source, size, fingerprint_extra)
        need_build = rebuild or read_manifest(self.path, fingerprint) is None
        self.built = need_build
        for _attempt in range(3):  # another process may replace the entry between build and open
            if need_build:
                build_cache(source, self.path, size, fingerprint, num_workers=num_workers,
                            replace=rebuild)
            try:
                entry = _open_entry(self.path)
            except (OSError, ValueError, KeyError):
                entry = None
            if entry is not None and entry.valid(fingerprint):
                break
            need_build = self.built = True
        else:
            raise RuntimeError(f"{self.path}: replaced by other processes three times while being "
                               "opened; expected it to settle (are several runs rebuilding it?)")
        self.findings = list(entry.manifest["findings"])
        self.labels = entry.meta["labels"]
        self.patient_ids = entry.meta["patient_ids"].astype(object)
        self.ok = entry.meta["ok"]
        self._identity = entry.identity
        self._images: np.ndarray | None = entry.images

    @property
    def images(self) -> np.ndarray:
        """The uint8 (N, S, S) memory map of the build this dataset was opened on (module
        docstring: a pickled copy re-opens it and refuses a rebuilt entry)."""
        if self._images is None:
            entry = _open_entry(self.path)
            if entry.identity != self._identity:
                raise RuntimeError(
                    f"{self.path} was rebuilt by another process since this CachedDataset was "
                    f"opened (build {self._identity[0]} -> {entry.identity[0]}): its images no "
                    "longer match the labels and patient ids held here. Create a new "
                    "CachedDataset (DataLoader workers started by 'fork' share the original map)")
            self._images = entry.images
        return self._images

    def __getstate__(self) -> dict:  # a memory map does not pickle: the copy re-opens it
        state = dict(self.__dict__)
        state["_images"] = None
        return state

    def load_image(self, index: int) -> np.ndarray:
        if not self.ok[index]:
            raise OSError(f"{self.describe(index)} was unreadable when the cache was built")
        return self.images[index].astype(np.float32) / 255.0

    def load_mask(self, index: int) -> np.ndarray | None:
        return self.source.load_mask(index)

    def boxes(self, index: int) -> list[tuple[str, float, float, float, float]]:
        s0 = self.source.image_size
        if s0 is None:
            raise ValueError(f"boxes of {self.path}: the source has image_size=None, so its boxes "
                             "are in native pixels; give the source an image_size")
        f = self.image_size / s0
        return [(n, x * f, y * f, w * f, h * f) for n, x, y, w, h in self.source.boxes(index)]

    def describe(self, index: int) -> str:
        return f"{self.source.describe(index)} (cached in {self.path})"

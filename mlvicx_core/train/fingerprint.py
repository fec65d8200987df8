"""Which code a run's result comes from: the kit's version and a fingerprint of the source that
defines the trained weights.

A finished run is found again by its configuration hash (:func:`~mlvicx_core.config.config_hash`),
which does not cover the code: after a change to the model, the loss or the augmentation, the same
configuration would find the old weights. So every checkpoint and ``done.json`` record
``kit_version`` and ``code_fingerprint`` (the code that wrote it) and ``code_fingerprints`` (every
code that took steps of the run, oldest first), and a run is reused only by the same code
(``mlvicx_core.train.trainer.train_or_load``; docs/TRAINING.md, "Checkpoints, resume, train_or_load").

:func:`code_fingerprint` is SHA-256 over the source of :data:`RESULT_MODULES` (network, loss, views,
the step, the loop, the optimisers, DDP, the dataset registry and contract) and of the modules of
the dataset the run reads (:data:`DATASET_MODULES` and the ``mlvicx_core.data`` modules they import;
a dataset from outside the kit, ``package.module:callable`` or registered by a user: the module
that defines its builder). Each module counts as its syntax tree without docstrings, written back
as code (``ast.unparse``): comments, docstrings, blank lines and formatting do not change the
fingerprint; any change to code does, also one that leaves results alone (then a run is retrained
once too often, never reused once too often). Not covered: the versions of torch and the other
libraries (``torch_version`` is recorded for reading, not compared), a ``dataset`` / ``augment`` /
``model`` object passed to ``pretrain`` in Python, and files the data is read from.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]  # mlvicx_core/

#: Modules (relative to ``mlvicx_core``) whose code defines every run's trained weights.
RESULT_MODULES = ("model", "bottleneck", "multilevel", "loss", "data.augment", "data.base",
                  "data.registry", "data.subset", "data.splits", "train.step", "train.trainer",
                  "train.optim", "train.distributed", "methods.__init__", "methods.base",
                  "methods.vicreg", "methods.mlvicx", "methods.barlow_twins")

#: The module that reads each registered dataset (its ``mlvicx_core.data`` imports follow).
DATASET_MODULES = {"synthetic": "data.phantom_dataset", "folder": "data.folder", "nih": "data.nih",
                   "nih-google2019": "data.nih", "pneumoniamnist": "data.medmnist",
                   "chestmnist": "data.medmnist", "rsna": "data.rsna", "siim": "data.siim",
                   "vindr": "data.vindr"}

_CACHE: dict[tuple[str, int, int], str] = {}


def source_digest(path: str | Path) -> str:
    """SHA-256 of a Python file's code: its syntax tree without docstrings, unparsed (comments,
    docstrings and formatting do not count)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _CACHE:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                    and body and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                node.body = body[1:] or [ast.Pass()]
        _CACHE[key] = hashlib.sha256(ast.unparse(tree).encode()).hexdigest()
    return _CACHE[key]


def _data_imports(module: str) -> set[str]:
    """``module`` and the ``mlvicx_core.data`` modules it imports, transitively."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = PACKAGE / (name.replace(".", "/") + ".py")
        if name in seen or not path.is_file():
            continue
        seen.add(name)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and name.startswith("data."):
                targets = [node.module] if node.module else [a.name for a in node.names]
                todo += [f"data.{t}" for t in targets]
    return seen


def _outside_module(dataset: str) -> Path | None:
    """The file defining the builder of a dataset the kit does not list (None if not found)."""
    from ..data.registry import DATASETS

    if dataset in DATASETS:
        module = getattr(DATASETS[dataset][0], "__module__", None)
        file = getattr(sys.modules.get(module), "__file__", None)
        return Path(file) if file else None
    module, sep, _ = dataset.partition(":")
    if not sep:
        return None
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin) if spec is not None and spec.origin else None


def fingerprint_modules(dataset: str) -> dict[str, Path]:
    """``{name: file}`` of every module :func:`code_fingerprint` covers for ``data.dataset``."""
    names = set(RESULT_MODULES)
    files = {}
    if dataset in DATASET_MODULES:
        names |= _data_imports(DATASET_MODULES[dataset])
    else:
        outside = _outside_module(dataset)
        if outside is not None:
            files[f"dataset:{dataset}"] = outside
    files.update({n: PACKAGE / (n.replace(".", "/") + ".py") for n in names})
    return dict(sorted(files.items()))


def code_fingerprint(dataset: str = "synthetic") -> str:
    """SHA-256 (hex) of the code that defines the weights of a run reading ``data.dataset``."""
    h = hashlib.sha256()
    for name, path in fingerprint_modules(dataset).items():
        digest = source_digest(path) if path.is_file() else "missing"
        h.update(f"{name}\0{digest}\n".encode())
    return h.hexdigest()


def kit_version() -> str:
    from .. import __version__

    return __version__


def provenance(dataset: str) -> dict[str, str]:
    """What a checkpoint and ``done.json`` record about the code: ``kit_version``,
    ``code_fingerprint``, ``torch_version``."""
    import torch

    return {"kit_version": kit_version(), "code_fingerprint": code_fingerprint(dataset),
            "torch_version": torch.__version__}


__all__ = ["DATASET_MODULES", "RESULT_MODULES", "code_fingerprint", "fingerprint_modules",
           "kit_version", "provenance", "source_digest"]

"""Where datasets live: the user's datasets home and the project's shared test data.

Two different places, two environment variables:

- ``MLVICX_DATA_ROOT``: the user's *datasets home* (full NIH, RSNA, SIIM, VinDr downloads and
  MedMNIST files, laid out as in ``data/README.md``). Default: ``<repo>/data`` in a source checkout,
  else ``./data`` in the working directory.
- ``MLVICX_DATA_DIR``: the small *shared real test data* used by tests and demos. Default:
  ``<repo>/../shared/data``.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _in_checkout() -> bool:
    return (REPO_ROOT / "pyproject.toml").is_file()


def default_data_root() -> Path:
    """The datasets home: ``$MLVICX_DATA_ROOT``, else ``<repo>/data`` (or ``./data`` when the
    package is installed outside a checkout). The folder need not exist yet."""
    env = os.environ.get("MLVICX_DATA_ROOT")
    if env:
        return Path(env).expanduser()
    return REPO_ROOT / "data" if _in_checkout() else Path.cwd() / "data"


def shared_data_dir() -> Path | None:
    """The shared real test data (``$MLVICX_DATA_DIR``, else ``<repo>/../shared/data``), or None
    when that folder does not exist (tests then skip, saying so)."""
    env = os.environ.get("MLVICX_DATA_DIR")
    cand = Path(env).expanduser() if env else REPO_ROOT.parent / "shared" / "data"
    return cand if cand.is_dir() else None


def torchxrayvision_data_file(name: str) -> Path | None:
    """Path of a label file bundled in the installed ``torchxrayvision`` wheel (e.g.
    ``Data_Entry_2017_v2020.csv.gz``), found without importing the package; None if absent."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "data" / name
        if p.is_file():
            return p
    return None

"""Suite-wide pytest set-up.

Every test that starts a Jupyter kernel (nbval's notebook cells, the papermill tests) runs on one
xdist worker (``--dist loadgroup``): kernels launched at the same moment by two workers can race for
the same free TCP ports, after which a client may wait forever for a reply that went to the other
kernel (seen here as an idle kernel and a stalled suite).
"""
from pathlib import Path

import pytest

KERNEL_TEST_FILES = {"test_notebooks.py", "test_experiments.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = Path(str(item.fspath))
        if path.suffix == ".ipynb" or path.name in KERNEL_TEST_FILES:
            item.add_marker(pytest.mark.xdist_group("jupyter-kernels"))

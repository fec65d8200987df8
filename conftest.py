"""Suite-wide wiring: the ``kernel`` marker.

A test that starts a Jupyter kernel (nbval's cells of ``notebooks/*.ipynb``, the papermill tests,
the browser test) carries ``@pytest.mark.kernel``; nbval's notebook items get it here. ``make test``
runs the unmarked tests on two xdist workers first, then the ``kernel`` tests in one serial pytest
process, so that no two kernels ever start at the same moment (two kernels starting together on
TCP ports is what made the suite hang). A test that starts a kernel without the marker fails at
once, naming the marker, instead of racing the others.
"""
from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.suffix == ".ipynb":  # nbval executes these cells in a kernel
            item.add_marker(pytest.mark.kernel)


@pytest.fixture(autouse=True)
def _kernels_only_in_kernel_tests(request, monkeypatch):
    if request.node.get_closest_marker("kernel") is not None:
        return
    try:
        from jupyter_client.provisioning.local_provisioner import LocalProvisioner
    except ImportError:  # no Jupyter installed: nothing can start a kernel
        return

    async def refuse(self, cmd, **kwargs):
        raise RuntimeError(f"{request.node.nodeid} starts a Jupyter kernel: mark it "
                           "@pytest.mark.kernel (make test runs those tests one at a time)")

    monkeypatch.setattr(LocalProvisioner, "launch_kernel", refuse)

"""Executing a notebook with papermill the way the kit does everywhere (sweeps, build, tests).

:func:`execute_notebook` runs papermill with :class:`IPCKernelManager`: the kernel talks over Unix
sockets in a private temporary folder instead of TCP ports. That removes two problems at once:

- no TCP ports are picked, so two kernels started at the same moment (two test workers, a sweep
  inside a notebook) cannot race for the same port and leave one of them waiting forever;
- ipykernel's "Kernel is running over TCP without encryption" warning is not printed; when a
  notebook (05) starts kernels itself, that warning would land in its stored output as stderr.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from jupyter_client import AsyncKernelManager
from traitlets import default


class IPCKernelManager(AsyncKernelManager):
    """An :class:`~jupyter_client.AsyncKernelManager` on the ``ipc`` transport, its sockets in a
    fresh private folder (removed with the kernel)."""

    @default("transport")
    def _transport_default(self) -> str:
        return "ipc"

    @default("ip")
    def _ip_default(self) -> str:
        # a short absolute path: Unix socket paths are limited to about 100 characters
        self._ipc_dir = tempfile.mkdtemp(prefix="mlvicx-kernel-")
        return os.path.join(self._ipc_dir, "k")

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart=restart)
        if not restart and getattr(self, "_ipc_dir", None):
            shutil.rmtree(self._ipc_dir, ignore_errors=True)


KERNEL_MANAGER = f"{IPCKernelManager.__module__}.{IPCKernelManager.__qualname__}"


def _quiet_output_widgets() -> None:
    """Stop nbclient's Output-widget mimic from writing to the kernel's shell channel.

    nbclient stands in for the front end of every ``ipywidgets.Output``: each output captured by
    the widget is stored (and saved with the widget state) and then echoed to the kernel as a
    ``comm_msg`` on the *shell* channel, sent from the task that reads IOPub while another task
    awaits the cell's ``execute_reply`` on that same channel. Under load that reply was lost now
    and then (02's colour selector, 04's image browser: an idle kernel and a client waiting forever;
    also jupyter/nbclient#312). The echo only tells the kernel what it already sent; the saved
    state does not depend on it (nbclient writes ``executor.widget_state`` itself), so a batch run
    drops it."""
    from nbclient.output_widget import OutputWidget

    OutputWidget.sync_state = lambda self: None


def execute_notebook(notebook: str | Path, output: str | Path, parameters: dict[str, Any] | None
                     = None, *, cwd: str | Path | None = None, kernel_name: str = "python3",
                     timeout: float | None = None, **kwargs: Any):
    """``papermill.execute_notebook`` over IPC (:class:`IPCKernelManager`), without papermill's
    own progress bar; ``timeout``: seconds per cell (None: no limit). Returns the executed
    notebook (papermill's return value)."""
    import papermill

    _quiet_output_widgets()
    return papermill.execute_notebook(
        str(notebook), str(output), parameters=parameters or {}, cwd=None if cwd is None
        else str(cwd), kernel_name=kernel_name, progress_bar=False, execution_timeout=timeout,
        kernel_manager_class=KERNEL_MANAGER, **kwargs)

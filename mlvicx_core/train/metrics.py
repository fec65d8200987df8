"""Training records: one JSON object per line (``metrics.jsonl``) and, optionally, TensorBoard.

Every record has ``step`` (optimizer steps completed) and ``epoch``. Step records add ``loss``, every
loss term per branch (``global/invariance`` ... ``multi/covariance``, as returned by
``mlvicx_core.loss.mlvicx_loss``), ``lr``, ``grad_norm`` and ``images_per_s``; diagnostic records add
``diag/<branch>/<name>`` (``mlvicx_core.train.diagnostics``). JSON lines rather than CSV because
diagnostic columns appear only every k steps. :func:`read_metrics` returns a pandas DataFrame.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class MetricsWriter:
    """Appends records to ``<run_dir>/metrics.jsonl`` and TensorBoard (``<run_dir>/tb``).

    ``enabled=False`` (ranks other than 0) makes every call a no-op. ``resume_step``: drop records past
    that step left by an interrupted run, so a resumed run's file has each step once.
    """

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, enabled: bool = True,
                 resume_step: int | None = None) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            keep_to = resume_step if resume_step is not None else -1
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= keep_to]
            self.path.write_text("".join(line + "\n" for line in kept))
        # line-buffered, kept open for the whole run: the file is readable while training
        self._file = open(self.path, "a", buffering=1)  # noqa: SIM115
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=resume_step)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in record.items()}
        self._file.write(json.dumps(clean) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k not in ("step", "epoch") and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_metrics(path: str | Path):
    """``metrics.jsonl`` (or a run folder holding it) as a pandas DataFrame, one row per record."""
    import pandas as pd

    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file at {path}: expected a run folder's metrics.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return pd.DataFrame(rows)

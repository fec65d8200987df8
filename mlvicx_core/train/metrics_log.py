"""Training records: one JSON object per line (``metrics.jsonl``) and, optionally, TensorBoard.

Every record has ``step`` (optimizer steps completed) and ``epoch``. Step records add every name
the method's loss returns (``loss``, ``<head>/loss``, ``<head>/<term>``, e.g. ``global/invariance``
... ``multi/covariance`` for MLVICX: ``mlvicx_core.methods``), ``lr``, ``grad_norm`` and
``images_per_s``; diagnostic records add ``diag/<head>/<name>`` for every head the method trains
(``mlvicx_core.train.diagnostics``). JSON lines rather than CSV because
diagnostic columns appear only every k steps. :func:`read_metrics` returns a pandas DataFrame.
"""
from __future__ import annotations

import json
import math
import os
import warnings
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
            self._truncate(resume_step if resume_step is not None else -1)
        # line-buffered, kept open for the whole run: the file is readable while training
        self._file = open(self.path, "a", buffering=1)  # noqa: SIM115
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=resume_step)

    def _truncate(self, keep_to: int) -> None:
        """Keep the records up to step ``keep_to``; a line a killed process left half-written is
        dropped with a warning. Rewritten via a temporary file and ``os.replace``, so a crash here
        loses nothing."""
        kept = []
        for n, line in enumerate(self.path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                step = json.loads(line)["step"]
            except (ValueError, KeyError, TypeError):
                warnings.warn(f"{self.path}:{n}: not a complete metrics record (left by a crash?); "
                              "dropped", stacklevel=3)
                continue
            if step <= keep_to:
                kept.append(line)
        tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

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

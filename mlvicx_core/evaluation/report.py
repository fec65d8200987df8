"""The results table: one long CSV (a row per encoder x task x fraction x finding x metric) and a
Markdown summary with one table per task and metric (rows: encoder and label fraction; columns:
findings and their mean; cells: value [95 % CI]; "undefined" where a metric has no value).
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

COLUMNS = ["encoder", "task", "fraction", "finding", "metric", "value", "ci_low", "ci_high", "n",
           "note"]


def results_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows -> DataFrame with exactly :data:`COLUMNS` (missing fields empty; unknown -> error)."""
    for row in rows:
        unknown = sorted(set(row) - set(COLUMNS))
        if unknown:
            raise ValueError(f"result row has unknown field(s) {unknown}; expected {COLUMNS}")
    return pd.DataFrame(rows, columns=COLUMNS)


def _cell(value, lo, hi) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "undefined"
    text = f"{value:.3f}"
    if lo is not None and hi is not None and not (pd.isna(lo) or pd.isna(hi)):
        text += f" [{lo:.3f}, {hi:.3f}]"
    return text


def markdown_table(frame: pd.DataFrame) -> str:
    """The Markdown summary of a results frame (see the module docstring)."""
    parts = ["# Evaluation results", ""]
    for (task, metric), group in frame.groupby(["task", "metric"], sort=False, dropna=False):
        findings = list(dict.fromkeys(group["finding"]))
        parts += [f"## {task}: {metric}", "",
                  "| encoder | fraction | " + " | ".join(map(str, findings)) + " |",
                  "|---|---|" + "---|" * len(findings)]
        for (enc, frac), sub in group.groupby(["encoder", "fraction"], sort=False, dropna=False):
            by = {r.finding: _cell(r.value, r.ci_low, r.ci_high) for r in sub.itertuples()}
            frac_text = "" if pd.isna(frac) else f"{frac:g}"
            parts.append(f"| {enc} | {frac_text} | "
                         + " | ".join(by.get(f, "") for f in findings) + " |")
        parts.append("")
    notes = frame.dropna(subset=["note"])
    notes = notes[notes["note"].astype(str) != ""]
    if len(notes):
        parts += ["## Notes", ""]
        parts += [f"- {r.encoder} / {r.task}: {r.note}" for r in notes.itertuples()]
        parts.append("")
    return "\n".join(parts)


def write_results(rows: list[dict], out_dir: str | Path, name: str = "results") -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.csv`` and ``<out_dir>/<name>.md``; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = results_frame(rows)
    csv_path, md_path = out / f"{name}.csv", out / f"{name}.md"
    frame.to_csv(csv_path, index=False)
    md_path.write_text(markdown_table(frame))
    return csv_path, md_path

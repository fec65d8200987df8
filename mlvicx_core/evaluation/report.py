"""The results files of an evaluation: one long CSV (a row per dataset x encoder x task x fraction x
finding x metric, columns :data:`ROW_COLUMNS`) and a Markdown
summary: one table per task and metric (rows: encoder and label fraction, plus the chosen k for
kNN; columns: findings and their mean; cells: value [95 % CI]; "undefined" where a metric has no
value), then each distinct note once.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

#: The one row schema of every evaluation (``mlvicx_core.evaluation.pipeline`` fills it).
ROW_COLUMNS = ["dataset", "encoder", "seed", "task", "k", "fraction", "finding", "metric",
               "value", "ci_low", "ci_high", "n", "note"]


def row(**fields) -> dict:
    """One result row (unknown fields are an error; missing ones are empty)."""
    unknown = sorted(set(fields) - set(ROW_COLUMNS))
    if unknown:
        raise ValueError(f"result row has unknown field(s) {unknown}; expected {ROW_COLUMNS}")
    return {c: fields.get(c, np.nan if c in ("value", "ci_low", "ci_high") else None)
            for c in ROW_COLUMNS}


def results_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows -> DataFrame with exactly the row columns (missing fields empty; unknown -> error)."""
    return pd.DataFrame([row(**r) for r in rows], columns=ROW_COLUMNS)


def _cell(value, lo, hi) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "undefined"
    text = f"{value:.3f}"
    if lo is not None and hi is not None and not (pd.isna(lo) or pd.isna(hi)):
        text += f" [{lo:.3f}, {hi:.3f}]"
    return text


def markdown_table(frame: pd.DataFrame, title: str = "Evaluation results") -> str:
    """The Markdown summary of a results frame (see the module docstring)."""
    parts = [f"# {title}", ""]
    scored = frame[frame["metric"].notna() & (frame["metric"] != "figure")]
    for (task, metric), group in scored.groupby(["task", "metric"], sort=False, dropna=False):
        findings = list(dict.fromkeys(group["finding"].dropna()))
        has_k = group["k"].notna().any()
        parts += [f"## {task}: {metric}", "",
                  "| encoder | fraction |" + (" k |" if has_k else "") + " "
                  + " | ".join(map(str, findings)) + " |",
                  "|---|---|" + ("---|" if has_k else "") + "---|" * len(findings)]
        keys = ["dataset", "encoder", "fraction"]
        for (_, enc, frac), sub in group.groupby(keys, sort=False, dropna=False):
            by = {r.finding: _cell(r.value, r.ci_low, r.ci_high) for r in sub.itertuples()}
            frac_text = "" if pd.isna(frac) else f"{frac:g}"
            ks = sub["k"].dropna()
            k_text = (f" {int(ks.iloc[0])} |" if len(ks) else " |") if has_k else ""
            parts.append(f"| {enc} | {frac_text} |{k_text} "
                         + " | ".join(by.get(f, "") for f in findings) + " |")
        parts.append("")
    notes = frame.dropna(subset=["note"])
    notes = notes[notes["note"].astype(str) != ""]
    if len(notes):
        parts += ["## Notes", ""]
        seen: dict[str, list[str]] = {}
        for r in notes.itertuples():
            where = f"{r.encoder} / {r.task}" + (f" / {r.finding}" if isinstance(r.finding, str)
                                                 and r.metric != "figure" else "")
            places = seen.setdefault(str(r.note), [])
            if where not in places:  # one row per metric: the same place once
                places.append(where)
        for note, where in seen.items():
            shown = ", ".join(where[:4]) + (f" and {len(where) - 4} more" if len(where) > 4 else "")
            parts.append(f"- {note} ({shown})")
        parts.append("")
    return "\n".join(parts)


def write_results(rows: list[dict], out_dir: str | Path, name: str = "results") -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.csv`` and ``<out_dir>/<name>.md`` atomically; returns both paths."""
    import os

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = results_frame(rows)
    csv_path, md_path = out / f"{name}.csv", out / f"{name}.md"
    for path, text in ((csv_path, frame.to_csv(index=False)), (md_path, markdown_table(frame))):
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
    return csv_path, md_path


def read_results(path: str | Path) -> pd.DataFrame:
    """A results CSV (:func:`write_results`) with every row column present (missing ones empty)."""
    frame = pd.read_csv(path)
    return frame.reindex(columns=list(dict.fromkeys([*ROW_COLUMNS, *frame.columns])))

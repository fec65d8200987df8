"""Reading label tables (CSV, optionally .gz/.zip) with checked column names."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd


def read_table(path: str | os.PathLike, required: list[str], **kwargs) -> pd.DataFrame:
    """Read a CSV and check that ``required`` columns are present.

    Column names are stripped of surrounding spaces first (SIIM's header is ``ImageId,
    EncodedPixels`` with a leading space). Raises ``FileNotFoundError`` or ``ValueError`` naming the
    file and the missing columns.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: label table not found")
    try:
        df = pd.read_csv(path, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        raise ValueError(f"{path}: unreadable CSV ({err})") from err
    df.columns = [str(c).strip() for c in df.columns]
    absent = [c for c in required if c not in df.columns]
    if absent:
        raise ValueError(f"{path}: missing column(s) {absent}; expected {required}, "
                         f"found {list(df.columns)}")
    return df


def row_ref(path: str | os.PathLike, row: int) -> str:
    """``file:line`` of data row ``row`` (0-based, after the header) for error messages."""
    return f"{path}:{row + 2}"

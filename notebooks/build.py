"""Rebuild the committed notebooks from their py:percent sources.

    python notebooks/build.py                    # every notebook
    python notebooks/build.py 01_pretraining     # one

Each ``notebooks/NN_name.py`` (jupytext percent format; the source of truth, easy to review) is
converted to ``NN_name.ipynb``, executed top to bottom with papermill at its default parameters (so a
reader on a code host sees the figures), and stripped of volatile metadata (timings, papermill
bookkeeping, widget state) so that re-running it produces a small, reviewable diff.
"""
from __future__ import annotations

import sys
from pathlib import Path

import jupytext
import nbformat
import papermill

HERE = Path(__file__).resolve().parent
KERNEL = {"display_name": "Python 3", "language": "python", "name": "python3"}


def clean(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drop everything that changes from run to run but says nothing about the content."""
    nb.metadata = nbformat.NotebookNode(
        kernelspec=KERNEL,
        language_info={"name": "python"},
        jupytext={"formats": "ipynb,py:percent"},
    )
    for cell in nb.cells:
        tags = cell.metadata.get("tags")
        cell.metadata = nbformat.NotebookNode({"tags": tags} if tags else {})
        if cell.cell_type == "code":
            for out in cell.get("outputs", []):
                out.get("metadata", {}).pop("papermill", None)
                data = out.get("data", {})
                # a widget's model id is random and meaningless without a live kernel
                if "application/vnd.jupyter.widget-view+json" in data:
                    data.pop("application/vnd.jupyter.widget-view+json")
    return nb


def build(name: str) -> Path:
    src = HERE / f"{name}.py"
    dst = HERE / f"{name}.ipynb"
    nb = jupytext.read(src)
    nb.metadata["kernelspec"] = KERNEL
    nbformat.write(nb, dst)
    papermill.execute_notebook(str(dst), str(dst), cwd=str(HERE), kernel_name="python3",
                               progress_bar=False)
    nbformat.write(clean(nbformat.read(dst, as_version=4)), dst)
    return dst


def main(names: list[str]) -> None:
    names = names or sorted(p.stem for p in HERE.glob("[0-9][0-9]_*.py"))
    for name in names:
        print(f"building {name} ...", flush=True)
        print(f"  wrote {build(name)}")


if __name__ == "__main__":
    main(sys.argv[1:])

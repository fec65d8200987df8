"""Rebuild the committed notebooks from their py:percent sources.

    python notebooks/build.py                    # every notebook, at its default parameters
    python notebooks/build.py 01_pretraining     # one
    python notebooks/build.py --out DIR -p data_length=64 ...   # elsewhere, other parameters

Each ``notebooks/NN_name.py`` (jupytext percent format; the source of truth, easy to review) is
converted to ``NN_name.ipynb``, executed top to bottom with papermill at its default parameters (so a
reader on a code host sees the figures) and cleaned (:func:`clean`) so that

- opening and saving it in JupyterLab with jupytext changes neither file: the notebook metadata is
  exactly what jupytext's contents manager writes back (the ``.py`` is rewritten in the form
  jupytext saves, its header without a version stamp; the kernelspec is the one ``ipykernel
  install`` writes; ``language_info`` is the kernel's own); cell ids are stable;
- re-running it produces a small, reviewable diff: no timings, no papermill bookkeeping, widget
  model ids renumbered in order;
- no stale progress bar is stored: a finished tqdm bar becomes one line of text (its final count);
- the widgets (02's colour selector, 04's image browser) keep their saved state, so a reopened
  notebook shows the control and the figure it held at the end of the run.

A notebook whose run printed to stderr is still written, then the build fails naming the cells:
the committed outputs carry no stderr (fix the source, or route the message to stdout).
"""
from __future__ import annotations

import argparse
import hashlib
import html
import json
import re
import sys
import uuid
from pathlib import Path

import jupytext
import nbformat

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # the kernel and this script import this checkout's mlvicx_core
    sys.path.insert(0, str(ROOT))

#: what ``python -m ipykernel install --name python3`` writes, and so what JupyterLab puts back
KERNEL = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
#: the pairing, and no jupytext version stamp (``text_representation``) in the ``.py`` header
JUPYTEXT = {"formats": "ipynb,py:percent", "notebook_metadata_filter": "-jupytext.text_representation"}
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
CELL_TIMEOUT = 1800  # seconds per cell: a lost kernel message fails the build, it does not hang
_REF = re.compile(r"IPY_MODEL_([0-9a-f]{32})")
_TQDM_COUNT = re.compile(r"(\d+)/(\d+)")
#: one frame of a tqdm bar as text: "desc:  40%|####      | 4/10 [00:01<00:02, 2.0it/s]"
_TQDM_FRAME = re.compile(r"\d+%\|[^|\n]*\|\s*(\d+)/(\d+)\s*\[")


def cell_ids(cells) -> list[str]:
    """Stable cell ids: a hash of the cell's type and source (numbered when two cells agree)."""
    seen: dict[str, int] = {}
    ids = []
    for cell in cells:
        h = hashlib.sha1(f"{cell.cell_type}\n{cell.source}".encode()).hexdigest()[:8]
        seen[h] = seen.get(h, 0) + 1
        ids.append(h if seen[h] == 1 else f"{h}-{seen[h]}")
    return ids


def _children(state: dict, model_id: str) -> list[str]:
    return _REF.findall(json.dumps(state.get(model_id, {}).get("state", {})))


def _closure(state: dict, roots: list[str]) -> list[str]:
    """Model ids reachable from ``roots`` (through ``IPY_MODEL_`` references), in visiting order."""
    order: list[str] = []
    stack = list(reversed(roots))
    while stack:
        mid = stack.pop()
        if mid in order or mid not in state:
            continue
        order.append(mid)
        stack.extend(reversed(_children(state, mid)))
    return order


def _plain(text: str) -> str:
    return html.unescape(text).replace("\u2007", " ").replace("\u200b", "")


def tqdm_text(state: dict, model_id: str) -> str | None:
    """The final line of a tqdm.notebook bar (HBox of HTML, FloatProgress, HTML), without timings:
    ``"pretrain mlvicx (teaching): 100% 24/24"``; None when ``model_id`` is not such a bar."""
    box = state.get(model_id, {})
    kids = [state.get(ref.removeprefix("IPY_MODEL_"), {})
            for ref in box.get("state", {}).get("children", [])]
    names = [k.get("model_name") for k in kids]
    if box.get("model_name") != "HBoxModel" or names != ["HTMLModel", "FloatProgressModel",
                                                         "HTMLModel"]:
        return None
    left = _plain(kids[0]["state"].get("value", "")).strip()
    bar = kids[1]["state"]
    count = _TQDM_COUNT.search(_plain(kids[2]["state"].get("value", "")))
    n = count.group(0) if count else f"{int(bar.get('value', 0))}/{int(bar.get('max', 0))}"
    stopped = " (stopped)" if bar.get("bar_style") == "danger" else ""
    return f"{left} {n}{stopped}".strip()


def tqdm_frame_text(text: str) -> str | None:
    """A tqdm frame stored as text (a bar whose widget state was not recorded), finalised to its
    total: the cell finished, so the loop did; None when ``text`` is not a tqdm frame."""
    m = _TQDM_FRAME.search(text)
    if m is None:
        return None
    desc = text[:m.start()].strip().rstrip(":").strip()
    total = m.group(2)
    return f"{desc}: 100% {total}/{total}" if desc else f"100% {total}/{total}"


def _merge_streams(outputs: list) -> list:
    merged: list = []
    for out in outputs:
        prev = merged[-1] if merged else None
        if (out.get("output_type") == "stream" and prev is not None
                and prev.get("output_type") == "stream" and prev.get("name") == out.get("name")):
            prev["text"] = prev["text"] + out["text"]
        else:
            merged.append(out)
    return merged


def clean(nb: nbformat.NotebookNode, name: str = "notebook") -> nbformat.NotebookNode:
    """Drop what changes from run to run, finalise progress bars, keep the widgets' saved state."""
    language_info = nb.metadata.get("language_info") or {"name": "python"}
    state = (nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}) or {}).get("state", {})
    roots: list[str] = []
    for cell in nb.cells:
        tags = cell.metadata.get("tags")
        cell.metadata = nbformat.NotebookNode({"tags": tags} if tags else {})
        if cell.cell_type != "code":
            continue
        outputs = []
        for out in cell.get("outputs", []):
            out.get("metadata", {}).pop("papermill", None)
            data = out.get("data", {})
            view = data.get(WIDGET_VIEW)
            if view is not None:
                text = tqdm_text(state, view.get("model_id", ""))
                if text is not None:  # a progress bar: its final count as plain text
                    outputs.append(nbformat.v4.new_output("stream", name="stdout",
                                                          text=text + "\n"))
                    continue
                if view.get("model_id") in state:
                    roots.append(view["model_id"])
                else:  # a widget whose state was not recorded cannot be shown: keep the text
                    data.pop(WIDGET_VIEW)
                    text = tqdm_frame_text(data.get("text/plain", ""))
                    if text is not None:
                        outputs.append(nbformat.v4.new_output("stream", name="stdout",
                                                              text=text + "\n"))
                        continue
            outputs.append(out)
        cell.outputs = _merge_streams(outputs)
    for cell, cid in zip(nb.cells, cell_ids(nb.cells)):
        cell["id"] = cid
    nb.metadata = nbformat.NotebookNode(
        jupytext=dict(JUPYTEXT), kernelspec=dict(KERNEL), language_info=language_info)
    keep = _closure(state, roots)
    if keep:
        # renumber the random model ids in order, so that a rebuild only changes real content
        new = {mid: uuid.uuid5(uuid.NAMESPACE_URL, f"mlvicx/{name}/{i}").hex
               for i, mid in enumerate(keep)}
        saved = {"state": {mid: state[mid] for mid in keep}, "version_major": 2,
                 "version_minor": 0}
        text = json.dumps({"cells": nb.cells, "widgets": saved})
        text = re.sub("|".join(new), lambda m: new[m.group(0)], text)
        renamed = json.loads(text)
        nb.cells = [nbformat.from_dict(c) for c in renamed["cells"]]
        nb.metadata["widgets"] = {WIDGET_STATE: renamed["widgets"]}
    return nb


def stderr_cells(nb: nbformat.NotebookNode) -> list[int]:
    """Indices of code cells with a stderr stream among their outputs."""
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
            and any(o.get("output_type") == "stream" and o.get("name") == "stderr"
                    for o in c.get("outputs", []))]


def source_notebook(name: str) -> nbformat.NotebookNode:
    """``notebooks/<name>.py`` as a notebook with the committed metadata (not executed)."""
    nb = jupytext.read(HERE / f"{name}.py")
    nb.metadata["kernelspec"] = dict(KERNEL)
    nb.metadata["jupytext"] = dict(JUPYTEXT)
    return nb


def canonical_source(name: str) -> str:
    """``notebooks/<name>.py`` as jupytext writes it back on a save (the committed form)."""
    return jupytext.writes(source_notebook(name), "py:percent")


def normalise_source(name: str) -> bool:
    """Rewrite ``notebooks/<name>.py`` in its canonical form (the header jupytext writes);
    True when the file changed."""
    src = HERE / f"{name}.py"
    text = canonical_source(name)
    if src.read_text(encoding="utf-8") == text:
        return False
    src.write_text(text, encoding="utf-8")
    return True


def build(name: str, out_dir: Path = HERE, parameters: dict | None = None) -> Path:
    from mlvicx_core.experiments.notebook_run import execute_notebook

    if normalise_source(name):
        print(f"  rewrote notebooks/{name}.py in the form jupytext saves", flush=True)
    dst = Path(out_dir) / f"{name}.ipynb"
    nbformat.write(source_notebook(name), dst)
    execute_notebook(dst, dst, parameters, cwd=HERE, store_widget_state=True,
                     timeout=CELL_TIMEOUT)
    nb = clean(nbformat.read(dst, as_version=4), name)
    nbformat.write(nb, dst)
    bad = stderr_cells(nb)
    if bad:
        raise SystemExit(f"{dst}: stderr in the outputs of code cells {bad}; the committed "
                         "notebooks carry none (print to stdout, or silence the warning)")
    return dst


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="notebooks to build (default: all)")
    ap.add_argument("--out", type=Path, default=HERE, help="where to write (default: notebooks/)")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="NAME=YAML",
                    help="a parameter for every notebook, e.g. -p data_length=64")
    args = ap.parse_args(argv)
    import yaml

    params = {}
    for item in args.param:
        key, _, value = item.partition("=")
        params[key] = yaml.safe_load(value)
    names = args.names or sorted(p.stem for p in HERE.glob("[0-9][0-9]_*.py"))
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        print(f"building {name} ...", flush=True)
        print(f"  wrote {build(name, args.out, params)}", flush=True)


if __name__ == "__main__":
    main()

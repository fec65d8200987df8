"""The notebook files themselves, without starting a kernel: clean saves, parameters, outputs.

- a JupyterLab save (jupytext's contents manager reading the pair and writing both files back)
  changes neither file, for the committed pairs and for what ``notebooks/build.py`` writes;
- papermill parses every ``parameters`` cell without a warning and finds every parameter;
- the committed outputs hold no stderr, no frozen progress bar and no widget without its state;
- ``build.clean`` finalises tqdm bars and keeps (renumbered) widget state, on hand-made notebooks.

The committed-output checks read the committed ``.ipynb`` files: after a change to a ``.py`` source
or to the code a notebook calls, rebuild (``make notebooks``) and they pass again.
"""
from __future__ import annotations

import ast
import json
import logging
import shutil
import sys
import warnings
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.py"))
sys.path.insert(0, str(NOTEBOOKS))
import build  # notebooks/build.py

sys.path.remove(str(NOTEBOOKS))


def jupyterlab_save(folder: Path, name: str) -> None:
    """Open ``<name>.ipynb`` and save it, as JupyterLab does through jupytext's contents manager
    (the server extension jupytext installs): read the pair, write both files back."""
    from jupyter_server.services.contents.largefilemanager import LargeFileManager
    from jupytext.sync_contentsmanager import build_sync_jupytext_contents_manager_class

    cm = build_sync_jupytext_contents_manager_class(LargeFileManager)(root_dir=str(folder))
    model = cm.get(f"{name}.ipynb")
    cm.save(model, f"{name}.ipynb")


def assert_save_changes_nothing(folder: Path, name: str) -> None:
    files = [folder / f"{name}.ipynb", folder / f"{name}.py"]
    before = [f.read_bytes() for f in files]
    jupyterlab_save(folder, name)
    for f, old in zip(files, before):
        assert f.read_bytes() == old, f"saving {name}.ipynb in JupyterLab rewrites {f.name}"


@pytest.mark.parametrize("name", NAMES)
def test_source_is_in_the_form_jupytext_saves(name):
    assert (NOTEBOOKS / f"{name}.py").read_text(encoding="utf-8") == build.canonical_source(name), \
        f"{name}.py differs from what jupytext writes on a save: run python notebooks/build.py"


@pytest.mark.parametrize("name", NAMES)
def test_built_pair_survives_a_jupyterlab_save(name, tmp_path):
    """What build.py writes (here without executing: the metadata and ids are the point)."""
    shutil.copy2(NOTEBOOKS / f"{name}.py", tmp_path)
    nbformat.write(build.clean(build.source_notebook(name), name), tmp_path / f"{name}.ipynb")
    assert_save_changes_nothing(tmp_path, name)


@pytest.mark.parametrize("name", NAMES)
def test_committed_pair_survives_a_jupyterlab_save(name, tmp_path):
    for suffix in (".ipynb", ".py"):
        shutil.copy2(NOTEBOOKS / f"{name}{suffix}", tmp_path)
    assert_save_changes_nothing(tmp_path, name)


def parameter_names(nb) -> list[str]:
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    return [t.id for node in ast.parse(cell.source).body for t in node.targets]


@pytest.mark.parametrize("name", NAMES)
def test_papermill_parses_every_parameter_without_a_warning(name, tmp_path, caplog):
    import papermill

    nb = build.source_notebook(name)
    path = tmp_path / f"{name}.ipynb"
    nbformat.write(nb, path)
    caplog.set_level(logging.DEBUG, logger="papermill")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = papermill.inspect_notebook(str(path))
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not logged and not [str(w.message) for w in caught], (logged, caught)
    assert list(found) == parameter_names(nb)
    for pname, info in found.items():
        assert "=" not in info["help"], f"{pname}: papermill cannot parse '=' in a comment"


def outputs(nb):
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            yield i, out


@pytest.mark.parametrize("name", NAMES)
def test_committed_outputs_are_clean(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    assert nb.metadata["kernelspec"] == build.KERNEL and nb.metadata["jupytext"] == build.JUPYTEXT
    assert not build.stderr_cells(nb), f"{name}: stderr in cells {build.stderr_cells(nb)}"
    state = nb.metadata.get("widgets", {}).get(build.WIDGET_STATE, {}).get("state", {})
    for i, out in outputs(nb):
        text = out.get("text", "") + out.get("data", {}).get("text/plain", "")
        assert not build._TQDM_FRAME.search(text), f"{name} cell {i}: a frozen progress bar: {text!r}"
        view = out.get("data", {}).get(build.WIDGET_VIEW)
        if view is not None:
            assert view["model_id"] in state, f"{name} cell {i}: a widget without saved state"
    assert [c.get("id") for c in nb.cells] == build.cell_ids(nb.cells)


# --- build.clean on hand-made notebooks (what papermill + nbclient store) -------------------------

def _model(name: str, **state) -> dict:
    return {"model_name": name, "model_module": "@jupyter-widgets/controls",
            "model_module_version": "2.0.0", "state": state}


def _ref(mid: str) -> str:
    return f"IPY_MODEL_{mid}"


def _view(mid: str, text: str) -> dict:
    return nbformat.v4.new_output("display_data", data={
        "text/plain": text, build.WIDGET_VIEW: {"version_major": 2, "version_minor": 0,
                                                "model_id": mid}})


def _executed_notebook() -> nbformat.NotebookNode:
    ids = {k: str(i) * 32 for i, k in enumerate("abcdefgh", 1)}  # model ids are 32 hex digits
    state = {
        # a finished tqdm bar: HBox(HTML desc, FloatProgress, HTML counts)
        ids["a"]: _model("HBoxModel", children=[_ref(ids["b"]), _ref(ids["c"]), _ref(ids["d"])]),
        ids["b"]: _model("HTMLModel", value="pretrain\u2007mlvicx\u2007(teaching):\u2007100%"),
        ids["c"]: _model("FloatProgressModel", value=24.0, max=24.0, bar_style="success"),
        ids["d"]: _model("HTMLModel", value="\u200724/24\u2007[00:31&lt;00:00,\u20070.77step/s]"),
        # a dropdown + output in a VBox, with a layout model
        ids["e"]: _model("VBoxModel", children=[_ref(ids["f"]), _ref(ids["g"])],
                         layout=_ref(ids["h"])),
        ids["f"]: _model("DropdownModel", index=1),
        ids["g"]: _model("OutputModel", outputs=[{"output_type": "stream", "name": "stdout",
                                                  "text": "figure\n"}]),
        ids["h"]: _model("LayoutModel"),
    }
    nb = nbformat.v4.new_notebook()
    train = nbformat.v4.new_code_cell("train()")
    train.outputs = [nbformat.v4.new_output("stream", name="stdout", text="starting\n"),
                     _view(ids["a"], "pretrain mlvicx (teaching):   0%|          | 0/24 [00:00<?, "
                                     "?step/s]"),
                     nbformat.v4.new_output("stream", name="stdout", text="done\n")]
    train.metadata = {"papermill": {"duration": 3.2}, "tags": ["x"]}
    widget = nbformat.v4.new_code_cell("selector()")
    widget.outputs = [_view(ids["e"], "VBox(...)")]
    nb.cells = [nbformat.v4.new_markdown_cell("# title"), train, widget]
    nb.metadata = {"papermill": {"parameters": {}}, "language_info": {"name": "python",
                                                                        "version": "3.11.7"},
                   "widgets": {build.WIDGET_STATE: {"state": state, "version_major": 2,
                                                     "version_minor": 0}}}
    return nb


def test_clean_finalises_progress_and_keeps_widget_state():
    nb = build.clean(_executed_notebook(), "toy")
    train, widget = nb.cells[1], nb.cells[2]
    assert train.metadata == {"tags": ["x"]}
    # the bar is one line of text with its final count, merged with the stdout around it
    assert [o["output_type"] for o in train.outputs] == ["stream"]
    assert train.outputs[0]["text"] == "starting\npretrain mlvicx (teaching): 100% 24/24\ndone\n"
    state = nb.metadata["widgets"][build.WIDGET_STATE]["state"]
    # the selector and what it references stay (renumbered); the progress bar's models go
    assert sorted(m["model_name"] for m in state.values()) == [
        "DropdownModel", "LayoutModel", "OutputModel", "VBoxModel"]
    root = widget.outputs[0]["data"][build.WIDGET_VIEW]["model_id"]
    assert state[root]["model_name"] == "VBoxModel"
    assert {r.removeprefix("IPY_MODEL_") for r in state[root]["state"]["children"]} <= set(state)
    assert "1" * 32 not in json.dumps(nb) and "5" * 32 not in json.dumps(nb)
    assert nb.metadata["kernelspec"] == build.KERNEL
    assert nb.metadata["language_info"]["version"] == "3.11.7" and "papermill" not in nb.metadata
    # a rebuild gives the same ids
    assert build.clean(_executed_notebook(), "toy") == nb
    assert not build.stderr_cells(nb)
    nb.cells[1].outputs.append(nbformat.v4.new_output("stream", name="stderr", text="warn\n"))
    assert build.stderr_cells(nb) == [1]


def test_clean_keeps_text_of_a_widget_without_state():
    nb = _executed_notebook()
    nb.metadata.pop("widgets")
    nb = build.clean(nb, "toy")
    out = nb.cells[2].outputs[0]
    assert build.WIDGET_VIEW not in out["data"] and out["data"]["text/plain"] == "VBox(...)"
    # a tqdm bar without state: the frame's text is finalised to its total
    assert "pretrain mlvicx (teaching): 100% 24/24" in nb.cells[1].outputs[0]["text"]
    assert "widgets" not in nb.metadata

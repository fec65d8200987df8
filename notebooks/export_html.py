"""Export the committed notebooks as HTML pages that render their formulas without a network.

    python notebooks/export_html.py build/html                  # every notebook (`make html`)
    python notebooks/export_html.py build/html 01_pretraining   # one

``jupyter nbconvert --to html`` loads MathJax from a CDN, so on an offline machine (a lecture hall,
this kit's CI) the pages show raw LaTeX. Here the pages load MathJax 2 (the version nbconvert's
template configures) from a copy next to them, ``<out>/mathjax/``, taken from Debian's
``libjs-mathjax`` (``/usr/share/javascript/mathjax``; ``$MLVICX_MATHJAX`` names another folder
holding ``MathJax.js``). The output folder is self-contained: copy it anywhere, open a page.

The widgets' saved state is left out of the pages (rendering it would load the widget manager from
a CDN as well); the static figures next to each widget show the same content. The pages load no
script from the network (mermaid.js, which nbconvert's template names, is fetched only for a
mermaid diagram, and these notebooks have none).
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
MATHJAX_CONFIG = "TeX-AMS_CHTML-full,Safe"
# what MathJax 2 loads at run time for that configuration (not its tests or unpacked sources)
_MATHJAX_PARTS = ("MathJax.js", "config", "extensions", "jax", "localization", "fonts")


def find_mathjax() -> Path | None:
    """The folder holding MathJax 2's ``MathJax.js``: ``$MLVICX_MATHJAX`` or Debian's copy."""
    for folder in (os.environ.get("MLVICX_MATHJAX"), "/usr/share/javascript/mathjax"):
        if folder and (Path(folder) / "MathJax.js").is_file():
            return Path(folder)
    return None


def copy_mathjax(out: Path, source: Path | None = None) -> Path:
    source = source or find_mathjax()
    if source is None:
        raise FileNotFoundError("MathJax 2 not found: apt-get install libjs-mathjax (Debian), or "
                                "set MLVICX_MATHJAX to a folder holding MathJax.js")
    dst = out / "mathjax"
    if not (dst / "MathJax.js").is_file():
        dst.mkdir(parents=True, exist_ok=True)
        for part in _MATHJAX_PARTS:
            src = source / part
            if src.is_dir():
                shutil.copytree(src, dst / part, symlinks=False, dirs_exist_ok=True)
            elif src.is_file():
                shutil.copy(src, dst / part)
    return dst


def export(names: list[str], out: Path, notebooks: Path = HERE) -> list[Path]:
    """Write ``<out>/<name>.html`` for each notebook (default: all), with MathJax in ``<out>``."""
    from nbconvert import HTMLExporter

    out.mkdir(parents=True, exist_ok=True)
    copy_mathjax(out)
    # require.js only serves the widget manager, which the pages do not embed: an empty script
    exporter = HTMLExporter(template_name="lab",
                            mathjax_url=f"mathjax/MathJax.js?config={MATHJAX_CONFIG}",
                            require_js_url="data:text/javascript,")
    names = names or sorted(p.stem for p in notebooks.glob("[0-9][0-9]_*.ipynb"))
    written = []
    for name in names:
        nb = nbformat.read(notebooks / f"{name}.ipynb", as_version=4)
        nb.metadata.pop("widgets", None)
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": name}})
        page = out / f"{name}.html"
        page.write_text(body, encoding="utf-8")
        written.append(page)
    return written


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    for page in export(sys.argv[2:], Path(sys.argv[1])):
        print("wrote", page)

"""ipywidgets explorers for the notebooks: an image browser (views + Grad-CAM per tap), a UMAP
colour selector.

Both take precomputed arrays (no network runs when a slider moves) and return an ``ipywidgets.VBox``
that builds without a live frontend: under papermill or nbval the widget is created and displayed
as its text representation, nothing waits for user input. The notebooks also draw the same content
as a static figure so that a committed notebook shows something on a code host.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def _display(obj) -> None:
    from IPython.display import display as show

    show(obj)


def _widgets():
    try:
        import ipywidgets
    except ImportError as err:  # pragma: no cover - ipywidgets is in the notebooks extra
        raise ImportError("the notebook explorers need ipywidgets (pip install ipywidgets)") from err
    return ipywidgets


def browser_figure(i: int, images: np.ndarray, view_a: np.ndarray, view_b: np.ndarray,
                   cams: dict[str, np.ndarray], regions: np.ndarray | None = None,
                   title: str | None = None):
    """One row: image ``i`` (with its lesion outlined), its two views, its Grad-CAM at every tap
    (one colour bar), under ``title`` when given.

    ``images``, ``view_a``, ``view_b``: (N, H, W) in [0, 1]; ``cams[tap]``: (N, H, W) in [0, 1].
    """
    import matplotlib.pyplot as plt

    from .figures import FONT, cam_colourbar, overlay

    if not 0 <= i < len(images):
        raise IndexError(f"image {i}: expected 0 <= i < {len(images)}")
    panels = [("image", images[i], True), ("view 1", view_a[i], False),
              ("view 2", view_b[i], False)]
    panels += [(f"Grad-CAM {t}", overlay(images[i], m[i]), True) for t, m in cams.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.3 * len(panels) + 0.8, 2.8),
                             squeeze=False, constrained_layout=True)
    for ax, (name, pic, outline) in zip(axes[0], panels):
        ax.imshow(np.clip(pic, 0, 1), cmap="gray" if pic.ndim == 2 else None, vmin=0, vmax=1,
                  interpolation="nearest")
        if outline and regions is not None and regions[i].any():
            ax.contour(regions[i], levels=[0.5], colors="w", linewidths=0.8)
        ax.set_title(name, fontsize=FONT)
        ax.set_axis_off()
    if cams:
        cam_colourbar(fig, axes)
    if title:
        fig.suptitle(title, fontsize=FONT + 1)
    return fig


def browser_caption(i: int, n: int, finding: str | None = None) -> str:
    """``"image 3 of 8 test images positive for effusion"`` (``i`` counts from 0)."""
    what = f" test images positive for {finding}" if finding else ""
    return f"image {i + 1} of {n}{what}"


def image_browser(images: np.ndarray, view_a: np.ndarray, view_b: np.ndarray,
                  cams: dict[str, np.ndarray], regions: np.ndarray | None = None,
                  finding: str | None = None):
    """A slider over the images; each position shows :func:`browser_figure` of that image under
    a caption that says which finding and how many images (``box.children``: slider, caption,
    figure)."""
    import matplotlib.pyplot as plt

    w = _widgets()
    label = f"{finding} image" if finding else "image"
    slider = w.IntSlider(value=0, min=0, max=len(images) - 1, description=label,
                         style={"description_width": "initial"})
    caption = w.Label()
    out = w.Output()

    def redraw(i: int) -> None:
        caption.value = browser_caption(i, len(images), finding)
        out.clear_output(wait=True)
        with out:
            fig = browser_figure(i, images, view_a, view_b, cams, regions,
                                 title=browser_caption(i, len(images), finding))
            # display this figure only: plt.show() would also flush other open figures into the
            # widget's output area
            _display(fig)
            plt.close(fig)

    slider.observe(lambda change: redraw(change["new"]), names="value")
    redraw(0)
    return w.VBox([slider, caption, out])


def umap_selector(panels: dict[tuple[str, str], np.ndarray | None], table: pd.DataFrame,
                  colour_by: str | None = None):
    """A dropdown over ``table``'s columns (findings, metadata) re-colouring the whole UMAP grid
    (:func:`~.figures.plot_umap_grid`)."""
    import matplotlib.pyplot as plt

    from .figures import plot_umap_grid

    w = _widgets()
    columns = list(table.columns)
    colour_by = colour_by or columns[0]
    if colour_by not in columns:
        raise ValueError(f"colour_by={colour_by!r}: expected one of {columns}")
    dropdown = w.Dropdown(options=columns, value=colour_by, description="colour by")
    out = w.Output()

    def redraw(column: str) -> None:
        out.clear_output(wait=True)
        with out:
            fig = plot_umap_grid(panels, table[column], column)
            _display(fig)
            plt.close(fig)

    dropdown.observe(lambda change: redraw(change["new"]), names="value")
    redraw(colour_by)
    return w.VBox([dropdown, out])

"""Figures and notebook widgets (matplotlib, ipywidgets): ``training`` (curves of a pretraining run),
``figures`` (encoders side by side: UMAP grids, label-fraction curves, Grad-CAM grids, sweeps),
``widgets`` (the notebooks' interactive explorers). Nothing here computes results: it draws what
``train`` and ``evaluation`` produce."""

# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: -jupytext.text_representation
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · What the embeddings look like: UMAP of MLVICX and VICReg
#
# UMAP squeezes each image's embedding into a point on the plane so that images with similar
# embeddings land close together. Colouring the points by a finding asks: *without ever seeing a
# label, did the encoder put images with that finding near each other?*
#
# Three embeddings per encoder, computed on the same held-out synthetic radiographs:
#
# * **trunk**: the pooled ResNet features, the part kept after pretraining (what a linear probe or
#   fine-tuning uses);
# * **global**: the global projector's output, the space the VICReg loss shapes directly;
# * **multi-level**: the multi-level branch's output (MLVICX only), fused from all five depths.
#
# **Budget.** The encoders are the teaching run (MLVICX, shared with `make demo` and notebook 01
# through `train_or_load`) and VICReg at the same recipe (trained here once if no notebook did,
# about 3 minutes on two threads). UMAP always draws *some* clusters, so judge a colouring only
# against what the same plot shows for the other encoder and kind, and do not read meaning into
# the cluster shapes themselves.

# %% tags=["parameters"]
dataset = "synthetic"
data_root = None
preset = "teaching"
image_size = 64                # radiograph side in pixels; the teaching views are 32 px crops of it
data_length = None             # pretraining radiographs (None: the preset's, 1,024)
epochs = None                  # None: the preset's (teaching: 87 epochs of 16 steps)
batch_size = None              # None: the preset's (64)
max_steps = None               # stop each pretraining after this many steps (None: all epochs)
seed = 0
overrides = {}                 # config keys for both pretraining runs, e.g. {"aug.blur_p": [0, 0]}
eval_length = 400              # held-out images embedded and mapped
colour_by = "effusion"         # a finding (or, for NIH, a metadata column such as "sex")
out_dir = "../runs"

# %%
from pathlib import Path

import pandas as pd
import torch

from mlvicx_core.evaluation.umap_view import colour_table, umap_panels
from mlvicx_core.experiments import held_out, pretrain_config
from mlvicx_core.train import train_or_load
from mlvicx_core.viz.figures import plot_umap_grid
from mlvicx_core.viz.widgets import umap_selector

# one math thread: the order of a float sum depends on the thread count, so this is what makes
# a run give the same weights, figures and numbers on every machine (the committed ones included)
torch.set_num_threads(1)

common = {"dataset": dataset, "data_root": data_root, "preset": preset, "image_size": image_size,
          "data_length": data_length, "epochs": epochs, "batch_size": batch_size, "seed": seed,
          "max_steps": max_steps, "out_dir": out_dir}
configs = {"MLVICX": pretrain_config("mlvicx", overrides=overrides, **common),
           "VICReg": pretrain_config("vicreg", overrides=overrides, **common)}
cache_dir = Path(out_dir) / "features"

# %% [markdown]
# Pretrain (or load) both encoders and embed the held-out images:

# %%
models = {name: train_or_load(cfg).model for name, cfg in configs.items()}
images = held_out(dataset, data_root, image_size, eval_length, seed)
table = colour_table(images.labels, images.findings, getattr(images, "metadata", None))
panels = umap_panels(models, images, seed=seed, cache_dir=cache_dir)
print(f"{len(images)} images, findings: {', '.join(images.findings)}")

# %% [markdown]
# ## Side by side
#
# Rows: encoders; columns: embedding kind. Colour: the chosen finding (absent or present).

# %%
fig = plot_umap_grid(panels, table[colour_by], colour_by)

# %% [markdown]
# How much of that colouring the map keeps, in one number per panel: the share of each image's 10
# nearest neighbours *in the 2-D map* with the same value of `colour_by`, against the share two
# images drawn at random would have (chance). Higher than chance means images with the finding sit
# together.

# %% tags=["nbval-check-output"]
from sklearn.neighbors import NearestNeighbors

values = table[colour_by].to_numpy()
p = pd.Series(values).value_counts(normalize=True)
chance = float((p ** 2).sum())
for (encoder, kind), coords in panels.items():
    if coords is None:
        continue
    idx = NearestNeighbors(n_neighbors=11).fit(coords).kneighbors(coords)[1][:, 1:]
    agree = float((values[idx] == values[:, None]).mean())
    print(f"{encoder:7s} {kind:6s} 10-NN agreement on {colour_by}: {agree:.3f} (chance {chance:.3f})")

# %% [markdown]
# ## Explore
#
# The selector re-colours the same maps by any finding (or, for NIH, any metadata column: sex,
# age, view position). The notebook stores the widget as it was after the run: JupyterLab shows
# that control and its figure once the notebook is trusted (command palette: *Trust Notebook*);
# re-colouring needs a live kernel (run the notebook).
# After you run it, JupyterLab keeps the control on save only with *Save Jupyter widget state in
# notebooks* on (Settings Editor, Jupyter Widgets); otherwise the reopened cell reads "model not
# found" until it is run again.

# %%
umap_selector(panels, table, colour_by=colour_by)

# %% [markdown]
# **What to look for.** A finding the encoder captures shows up as a region of the map where that
# colour dominates. Cardiomegaly (a large heart changes the whole silhouette) is the easiest for a
# global embedding; small nodules are where the multi-level branch, which keeps shallow, high-
# resolution features, is supposed to help. The projector outputs (global, multi-level) are
# trained to be invariant to the augmentations and are usually *less* informative than the trunk
# features; this is why only the trunk is kept after pretraining. Quantitative versions of these
# questions (linear probe, kNN) are in notebook 03.

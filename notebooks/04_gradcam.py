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
# # 04 · Grad-CAM per tap and per finding, checked against the true lesion
#
# A heatmap says which pixels *the score* depends on. It is a claim, and on the synthetic
# radiographs it can be checked: every lesion comes with its true mask. Here:
#
# 1. a linear probe is fitted on each frozen encoder (MLVICX, VICReg) to give a per-finding score;
# 2. Grad-CAM explains that score at each of the five taps (`stem` ... `layer4`): gradients of the
#    finding's logit with respect to the tap's feature maps weight those maps, the weighted sum is
#    rectified and upsampled to the image;
# 3. the **pointing game** asks whether the heatmap's maximum lies inside the lesion, against the
#    hit rate of an uninformative (uniform) map, i.e. the share of the image the lesion covers.
#
# Deep taps (`layer4`, 2x2 cells at 64 px) can only point coarsely; shallow taps are sharp but
# noisy. Where in depth the localisation is best is what the multi-level branch is meant to change.
#
# **Budget.** The encoders are the teaching run (MLVICX) and VICReg at the same recipe, shared with
# notebooks 01-03. With a probe fitted on a few hundred images and 32 px views, heatmaps are coarse
# and hit rates near chance are expected for small findings; counts (n) are small, so differences
# of a few images are noise. Cardiomegaly's "lesion" is the heart, a large fixed region: its chance
# level is high.

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
overrides = {}                 # config keys for both pretraining runs
eval_length = 400
show_findings = ["nodule", "effusion", "pneumothorax"]  # findings drawn as heatmap grids
n_show = 2                     # images per finding and encoder in the grids
max_images = 12                # positive test images scored per finding, tap and encoder
tolerance = 3                  # pointing-game tolerance in pixels (a hit within 3 px of the lesion)
out_dir = "../runs"

# %%
from pathlib import Path

import numpy as np
import torch
from IPython.display import display

from mlvicx_core.evaluation.tap_localisation import (
    cams_per_tap,
    heatmaps_by_finding,
    pointing_by_tap,
    positive_examples,
    probe_classifier,
)
from mlvicx_core.experiments import eval_splits, pretrain_config
from mlvicx_core.train import train_or_load
from mlvicx_core.train.trainer import default_augment
from mlvicx_core.viz.figures import plot_cam_grid, plot_pointing
from mlvicx_core.viz.widgets import browser_caption, browser_figure, image_browser

# one math thread: the order of a float sum depends on the thread count, so this is what makes
# a run give the same weights, figures and numbers on every machine (the committed ones included)
torch.set_num_threads(1)

common = {"dataset": dataset, "data_root": data_root, "preset": preset, "image_size": image_size,
          "data_length": data_length, "epochs": epochs, "batch_size": batch_size, "seed": seed,
          "max_steps": max_steps, "out_dir": out_dir}
configs = {"MLVICX": pretrain_config("mlvicx", overrides=overrides, **common),
           "VICReg": pretrain_config("vicreg", overrides=overrides, **common)}
cache_dir = Path(out_dir) / "features"

# %%
splits = eval_splits(dataset, data_root, image_size, eval_length, seed)
test = splits["test"]
everything = np.arange(len(test))
classifiers = {name: probe_classifier(train_or_load(cfg).model, splits, cache_dir)
               for name, cfg in configs.items()}
findings = [f for f in show_findings if f in test.findings]
print(f"test images: {len(test)}; findings shown: {findings}")

# %% [markdown]
# ## Heatmaps per tap, per finding
#
# Columns: the image, then the Grad-CAM of the finding's probe score at each tap. White contour:
# the true lesion; white cross: the heatmap's maximum (the pointing-game guess).

# %%
heatmaps = heatmaps_by_finding(classifiers, test, everything, findings, n_show)
for finding, maps in heatmaps.items():
    if maps is None:
        print(f"{finding}: no positive test image with a lesion region")
        continue
    for name, cams in maps["cams"].items():
        fig = plot_cam_grid(maps["images"][:, 0].numpy(), cams, maps["regions"], f"{name}: {finding}")

# %% [markdown]
# ## Pointing game, per tap
#
# Hit rate over up to `max_images` positive test images per finding (a hit: the maximum lies within
# `tolerance` pixels of the lesion); dashed line: the hit rate of an uninformative map (the share of
# the image covered by the lesion grown by `tolerance`).

# %%
scores = pointing_by_tap(classifiers, test, everything, max_images=max_images,
                         tolerance=tolerance)

# %% [markdown]
# One row per finding: the hit rate of each encoder at each tap (from the stem to layer4), the
# chance hit rate of an uninformative map on the same images, and n, the images scored.

# %% tags=["nbval-check-output"]
import pandas as pd

taps = list(dict.fromkeys(scores["tap"]))  # network order: stem, layer1, ..., layer4
wide = scores.set_index(["finding", "encoder", "tap"])["pointing_game"].unstack(["encoder", "tap"])
wide = wide.reindex(columns=pd.MultiIndex.from_product([list(classifiers), taps]))
per_finding = scores.groupby("finding", sort=False)
wide[("chance", "")] = per_finding["chance_pointing"].mean()
wide[("n", "")] = per_finding["n"].max()
display(wide.loc[list(dict.fromkeys(scores["finding"]))].round(2))
constant = scores[scores["n_constant"] > 0]
for r in constant.itertuples():
    print(f"{r.encoder} {r.finding} {r.tap}: {r.n_constant} of {r.n_constant + r.n} maps constant "
          "(no maximum to point with: left out" + ("; none left, hence NaN)" if r.n == 0 else ")"))

# %%
fig = plot_pointing(scores)

# %% [markdown]
# ## Browse
#
# A slider over positive test images: the image (lesion outlined), the two augmented views the
# encoder was trained to match, and the MLVICX Grad-CAM at every tap. The static figures below show
# the first two positions. The stored widget shows the control as it was after the run once the
# notebook is trusted (command palette: *Trust Notebook*); moving the slider needs a live kernel.
# After you run it, JupyterLab keeps the control on save only with *Save Jupyter widget state in
# notebooks* on (Settings Editor, Jupyter Widgets).

# %%
k = test.findings.index(findings[0])
pics, regions, _ = positive_examples(test, everything, k, 8)
view_a, view_b = default_augment(configs["MLVICX"])(pics,
                                                    generator=torch.Generator().manual_seed(seed))
cams = cams_per_tap(classifiers["MLVICX"], pics, k)
arrays = (pics[:, 0].numpy(), view_a[:, 0].numpy(), view_b[:, 0].numpy())
for i in range(min(2, len(pics))):
    fig = browser_figure(i, *arrays, cams, regions, title=browser_caption(i, len(pics), findings[0]))

# %%
image_browser(*arrays, cams, regions, finding=findings[0])

# %% [markdown]
# **Reading it.** A heatmap that tracks the lesion at some tap and not at others tells you where in
# the network the finding is represented. A heatmap that lights up the image border, the
# diaphragm or the lung edges whatever the finding is explaining the probe's shortcut, not the
# lesion; the pointing game against chance catches that. Treat per-finding differences between
# encoders as real only when they persist at a larger budget and across seeds.

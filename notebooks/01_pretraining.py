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
# # 01 · Pretraining MLVICX: views, model, loss terms, collapse
#
# MLVICX learns chest X-ray features **without labels**: it shows the network two randomly
# augmented *views* of the same radiograph and asks for embeddings that agree (invariance) while
# staying spread out (variance) and decorrelated (covariance). It extends VICReg with a second,
# *multi-level* branch that applies the same three terms to features fused from all five depths of
# the ResNet (METHOD.md).
#
# **Budget.** At the default parameters this notebook pretrains the `teaching` network (ResNet-18
# with 1024-d heads, trained on 32 px views of 64 px radiographs) on 384 synthetic radiographs for 4
# epochs of 12 steps, twice (the healthy run and the collapse run), one to two minutes each on one
# CPU thread. That is enough to *see* every mechanism (terms moving, the online probe, collapse when
# the variance term is switched off) but not to learn features that beat random init: `make demo`
# (192 steps of batch 64, about 5 minutes) and docs/RESULTS.md measure that. Re-run at scale with
# papermill (`-p epochs 16`, or `-p preset paper -p epochs 300 -p dataset nih -p data_root ...`).
#
# Runs are cached by their configuration (`train_or_load`): notebooks 02-05 reuse the run trained
# here, and re-running a cell costs nothing.

# %% tags=["parameters"]
dataset = "synthetic"          # "synthetic" (no files needed) or "nih" (a folder of NIH PNGs)
data_root = None               # for the "nih" dataset: the folder holding the PNGs
preset = "teaching"            # "teaching" (CPU minutes) or "paper" (the paper's recipe)
image_size = 64                # radiograph side in pixels (teaching views: 32 px crops of it; the paper: 224)
data_length = 384              # synthetic radiographs in the pretraining set
epochs = 4                     # 4 x 12 steps of batch 32 (the demo: 192 of batch 64)
batch_size = 32
max_steps = None               # stop each pretraining after this many steps (None: all epochs)
seed = 0
overrides = {}                 # any config key, e.g. {"loss.lam": 0.5, "aug.crop_scale": [0.5, 1.0]}
out_dir = "../runs/notebooks"  # run folders (git-ignored)

# %%
import torch
from IPython.display import display

from mlvicx_core.data.registry import dataset_from_config
from mlvicx_core.experiments import diagnostics_table, pretrain_config
from mlvicx_core.experiments.collapse_toy import collapse_demo
from mlvicx_core.model import MLVICX
from mlvicx_core.train import train_or_load
from mlvicx_core.train.trainer import default_augment
from mlvicx_core.viz.training import plot_collapse, plot_collapse_demo, plot_loss_terms, show_views

# one math thread: the order of a float sum depends on the thread count, so this is what makes
# a run give the same weights, figures and numbers on every machine (the committed ones included)
torch.set_num_threads(1)

common = {"dataset": dataset, "data_root": data_root, "preset": preset, "image_size": image_size,
          "data_length": data_length, "epochs": epochs, "batch_size": batch_size, "seed": seed,
          "max_steps": max_steps, "out_dir": out_dir}
config = pretrain_config("mlvicx", overrides=overrides, **common)
# the collapse run: no variance term, and a projector ending in a plain Linear layer (section 4)
config_collapse = pretrain_config("mlvicx", overrides={**overrides, "loss.std_coeff": 0.0,
                                                       "model.projector_last_bn": False}, **common)
print(f"{config.train.epochs} epochs x {config.data.length // config.train.batch_size} steps "
      f"of batch {config.train.batch_size} at {config.data.view_size} px")

# %% [markdown]
# ## 1. The two views
#
# Each training image is augmented twice, independently: a random resized crop (40-100 % of the
# area, resized to 32 px), a horizontal flip and, for 30 % of the views, brightness/contrast jitter.
# Whatever the network keeps constant across the two views is what it will learn; what the
# augmentations change (exact position, contrast) it learns to ignore. This is the only
# "supervision". The paper's ImageNet-style views (crops down to 8 % of the area, strong blur,
# solarisation; `aug.*` keys, `preset="paper"`) are too strong for radiographs this small: a blur of
# 2 px erases a nodule at 64 px (docs/TRAINING.md, "The teaching recipe").

# %%
pretrain_images = dataset_from_config(config.data)
images = torch.stack([pretrain_images[i]["image"] for i in range(6)])
view_a, view_b = default_augment(config)(images, generator=torch.Generator().manual_seed(seed))
fig = show_views(images, view_a, view_b)

# %% [markdown]
# ## 2. The model
#
# One ResNet-18 trunk with five *taps* (`stem`, `layer1` ... `layer4`). With MLVICX each tap passes
# through a **context bottleneck** (a channel + spatial attention gate). Two heads read the trunk:
#
# * the **global** projector: the pooled `layer4` features through an MLP (this is VICReg);
# * the **multi-level** branch: every tap resized to one grid, a 1x1 conv each, summed, pooled to
#   4x4 and projected by its own MLP. It forces shallow layers (edges, texture, small nodules) to
#   carry information too, not only the last layer.
#
# After pretraining only the trunk is kept; the projectors exist for the loss.

# %% tags=["nbval-check-output"]
model = MLVICX(config.model)
parts = {"trunk": model.backbone, "context bottlenecks": model.gates,
         "global projector": model.projector, "multi-level branch": [model.fusion, model.ml_projector]}
for name, modules in parts.items():
    modules = modules if isinstance(modules, list) else [modules]
    print(f"{name:20s} {sum(p.numel() for m in modules for p in m.parameters()):>11,d} parameters")
out = model.eval()(images)
print("global embedding", tuple(out.global_.shape), " multi-level embedding", tuple(out.multi.shape))

# %% [markdown]
# ## 3. The loss, term by term
#
# For a batch of $n$ images, let $Z, Z' \in \mathbb{R}^{n \times d}$ be the embeddings of the two
# views. VICReg is
#
# $$\ell(Z, Z') = \lambda_s\, s(Z, Z') + \lambda_v\,\tfrac{1}{2}[v(Z) + v(Z')] + \lambda_c\,[c(Z) + c(Z')],
# \qquad (\lambda_s, \lambda_v, \lambda_c) = (25, 25, 1).$$
#
# * **Invariance** $s(Z, Z') = \frac{1}{n}\sum_i \lVert z_i - z'_i \rVert_2^2$: the two views of one
#   image should map to the same point. Alone, it has a trivial minimum: map *every* image to the
#   same vector (collapse).
# * **Variance** $v(Z) = \frac{1}{d}\sum_j \max\bigl(0,\ 1 - \sqrt{\mathrm{Var}(z_{\cdot j}) +
#   \epsilon}\bigr)$: a hinge that keeps the standard deviation of every dimension over the batch at
#   least 1. This is what forbids collapse: a constant embedding has std 0 and pays the full hinge.
# * **Covariance** $c(Z) = \frac{1}{d}\sum_{i \ne j} C(Z)_{ij}^2$ with $C$ the batch covariance:
#   decorrelates the dimensions, so they do not all encode the same thing (dimensional collapse).
#
# MLVICX adds the same loss on the multi-level embeddings $M, M'$:
# $\mathcal{L} = \ell(Z, Z') + \lambda\,\ell(M, M')$, with $\lambda$ = `lam` (1 in the paper).
#
# Training (or loading the cached run):

# %%
run = train_or_load(config)
print("run folder:", run.run_dir.name, "| steps:", run.step)

# %% [markdown]
# Each term, multiplied by its weight (so the curves show its share of the total loss). Global
# branch solid, multi-level dashed. In a healthy run the variance hinge drops quickly (the
# dimensions spread out), the invariance term first *rises* (spread-out embeddings are further
# apart) and then is traded off against the others, and the covariance term shrinks as dimensions
# decorrelate. With two dozen steps expect the first part of that story only.

# %%
weights = {"invariance": config.loss.sim_coeff, "variance": config.loss.std_coeff,
           "covariance": config.loss.cov_coeff}
fig = plot_loss_terms(run.run_dir, weights, lam=config.loss.lam)

# %% [markdown]
# **Is it learning anything a label can read?** The loss cannot say. The online probe can: every 12
# steps the frozen trunk embeds 256 held-out radiographs (patients never pretrained on) and two
# closed-form read-outs (ridge regression and a 20-nearest-neighbour vote, fitted on half the
# patients, scored on the other half) give a mean AUROC over the findings. Step 0 is the same network
# at random init: the dashed line. A randomly initialised ResNet is a strong baseline on these
# images; at this budget expect the read-out to dip below it first (the network is reorganising its
# features around the views), and to need a longer run to climb back above it (the demo runs 192
# steps of batch 64 and draws the same panel).

# %%
import matplotlib.pyplot as plt

from mlvicx_core.train.metrics_log import read_metrics
from mlvicx_core.viz.training import plot_online_probe

fig, ax = plt.subplots(figsize=(6.5, 3.6), constrained_layout=True)
plot_online_probe(read_metrics(run.run_dir), ax)

# %% [markdown]
# ## 4. Collapse, and how to see it
#
# The loss value alone does not tell you whether an encoder collapsed. The training loop logs four
# diagnostics of the first view's embeddings every few steps:
#
# * `std_min`, `std_mean`: smallest and mean per-dimension standard deviation. Near 0 = collapsed.
# * effective rank $\exp(-\sum_k p_k \log p_k)$ with $p_k$ the normalised eigenvalues of the
#   covariance: how many directions the batch really uses (at most $n-1$ for a batch of $n$).
# * mean $|$off-diagonal correlation$|$: 0 when dimensions are decorrelated, 1 when they are copies.
#
# **The demonstration:** the same run with the variance weight $\lambda_v$ set to 0
# (`loss.std_coeff=0`). Nothing now forbids the trivial solution, and the invariance term, the only
# one with a big weight, pulls everything together.
#
# One switch more is needed to *see* it with the real model, and it is a lesson in itself. The
# kit's projectors (like the authors' code) end in BatchNorm: every output dimension is re-scaled to
# a batch standard deviation of about 1 at every step, so the embedding *cannot* shrink, the variance
# hinge $\max(0, 1 - \mathrm{std})$ never switches on, and a run without it is step for step the same
# as the healthy one (try it: `overrides={"loss.std_coeff": 0.0}` alone). Official VICReg's projector
# ends in a plain Linear layer; `model.projector_last_bn=False` builds that, and then the scale is
# free to collapse.

# %%
run_collapse = train_or_load(config_collapse)
fig = plot_collapse({"healthy (std_coeff=25)": run.run_dir,
                     "no variance term, Linear end (std_coeff=0)": run_collapse.run_dir})

# %% [markdown]
# The same diagnostics on held-out synthetic images (not a training batch), after training. The
# network is in eval mode here (BatchNorm uses its running statistics instead of the batch's), so
# the absolute scale differs from the training-time curves: compare the rows with each other.

# %%
held_out = torch.stack([pretrain_images[len(pretrain_images) - 1 - i]["image"] for i in range(64)])
display(diagnostics_table({"healthy": run.model, "no variance term": run_collapse.model},
                          held_out).round(4))

# %% [markdown]
# **Reading it.** Without the variance term the run collapses within a few dozen steps: the
# invariance term falls to about 0 (every pair of views maps to the same point, which looks like
# success), `std_min` falls by two orders of magnitude towards 0 and the effective rank to a handful
# of directions out of 1024, while the healthy run keeps a standard deviation of about 1 and an
# invariance near 2 (its views are not yet matched: at this budget it has learned to spread and
# decorrelate, not to be invariant). The covariance term does not prevent the collapse: a shrinking
# embedding also has a shrinking covariance. The held-out table says the same with the network in
# eval mode.

# %% [markdown]
# ### Collapse in miniature
#
# To *see* the collapse within seconds, `mlvicx_core.experiments.collapse_toy` trains a toy encoder (a small
# MLP on 256 random vectors, whose two views are the vector plus independent noise) with the kit's
# own `vicreg_loss`, once with the variance term and once without. The toy's last layer is a plain
# Linear layer, so its output scale is free to shrink quickly. Without the variance term the
# invariance loss drops to ~0 and looks like success, while the per-dimension std falls towards 0:
# every input is mapped onto (almost) the same point. With it, the std stays near 1.

# %%
toy = collapse_demo(seed=seed)
fig = plot_collapse_demo(toy)
display(toy.groupby("std_coeff", sort=False).tail(1)[
    ["std_coeff", "step", "invariance", "variance", "std_min", "std_mean"]].round(6))

# %% [markdown]
# **What this budget can and cannot show.** Four dozen steps demonstrate the mechanics (the terms,
# the diagnostics, collapse). They do not produce features better than random init: the online
# probe panel of the training figure of `make demo` shows the read-out against the random-init level
# over 192 steps, and docs/RESULTS.md compares the methods at that budget over three seeds.
# Notebooks 02-05 make their comparisons at this notebook's budget, with confidence intervals, and
# say when the differences are within noise. For real numbers, re-run at scale:
#
# ```
# papermill notebooks/01_pretraining.ipynb runs/01_paper.ipynb \
#     -p dataset nih -p data_root /data/nih -p preset paper -p image_size 224 -p epochs 300 -p batch_size 64
# ```

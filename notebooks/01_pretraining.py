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
# at 64 px with narrow heads) on 384 synthetic radiographs for 2 epochs of 12 steps, well under a minute
# on a laptop CPU. That is enough to *see* every mechanism (terms moving, collapse when the variance
# term is switched off) but not to learn features worth comparing to the paper; re-run it at scale
# with papermill (`-p preset paper -p epochs 300 -p dataset nih -p data_root ...`).
#
# Runs are cached by their configuration (`train_or_load`): notebooks 02-05 reuse the run trained
# here, and re-running a cell costs nothing.

# %% tags=["parameters"]
dataset = "synthetic"          # "synthetic" (no files needed) or "nih" (a folder of NIH PNGs)
data_root = None               # for the "nih" dataset: the folder holding the PNGs
preset = "teaching"            # "teaching" (CPU minutes) or "paper" (the paper's recipe)
image_size = 64                # model input side in pixels (the paper: 224)
data_length = 384              # synthetic radiographs in the pretraining set
epochs = 2
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
from mlvicx_core.experiments.collapse_toy import collapse_demo, plot_collapse_demo
from mlvicx_core.model import MLVICX
from mlvicx_core.train import train_or_load
from mlvicx_core.train.trainer import default_augment
from mlvicx_core.viz.training import plot_collapse, plot_loss_terms, show_views

# one math thread: the order of a float sum depends on the thread count, so this is what makes
# a run give the same weights, figures and numbers on every machine (the committed ones included)
torch.set_num_threads(1)

common = {"dataset": dataset, "data_root": data_root, "preset": preset, "image_size": image_size,
          "data_length": data_length, "epochs": epochs, "batch_size": batch_size, "seed": seed,
          "max_steps": max_steps, "out_dir": out_dir}
config = pretrain_config("mlvicx", overrides=overrides, **common)
config_collapse = pretrain_config("mlvicx", overrides={**overrides, "loss.std_coeff": 0.0},
                                  **common)
print(f"{config.train.epochs} epochs x {config.data.length // config.train.batch_size} steps "
      f"of batch {config.train.batch_size} at {config.data.image_size} px")

# %% [markdown]
# ## 1. The two views
#
# Each training image is augmented twice, independently: random resized crop, horizontal flip,
# brightness/contrast jitter, blur and (for the second view, rarely) solarisation. Whatever the
# network keeps constant across the two views is what it will learn; what the augmentations change
# (exact position, contrast, sharpness) it learns to ignore. This is the only "supervision".

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

# %%
run_collapse = train_or_load(config_collapse)
fig = plot_collapse({"healthy (std_coeff=25)": run.run_dir,
                     "no variance term (std_coeff=0)": run_collapse.run_dir})

# %% [markdown]
# The same diagnostics on held-out synthetic images (not a training batch), after training. The
# network is in eval mode here (BatchNorm uses its running statistics instead of the batch's), so
# the absolute scale differs from the training-time curves: compare the rows with each other.

# %%
held_out = torch.stack([pretrain_images[len(pretrain_images) - 1 - i]["image"] for i in range(64)])
display(diagnostics_table({"healthy": run.model, "no variance term": run_collapse.model},
                          held_out).round(4))

# %% [markdown]
# **Reading it, honestly.** At this budget the two runs are identical, and that is itself the
# lesson about *how* the variance term works (the variance panel of the loss figure above is flat
# at 0: the hinge never switched on, so switching it off changes no gradient). It is a hinge, $\max(0, 1 - \mathrm{std})$: at
# initialisation every embedding dimension already has a standard deviation of about 1 (the
# projector ends in a freshly initialised linear layer after BatchNorm), so the hinge is inactive and
# contributes (almost) no gradient, and over two dozen small steps the std stays near 1. The variance
# term is a *guard* that starts acting only when the embeddings begin to shrink. Without it, nothing
# stops the invariance term (weight 25) from slowly pulling every image onto the same point: over a
# long run `std_min` and `std_mean` fall towards 0, the effective rank towards 1, and the invariance
# loss towards 0, which looks like success while the features become useless. The covariance term
# does not prevent this: a shrinking embedding also has a shrinking covariance.
#
# To look for the collapse, re-run this notebook with a longer schedule, e.g.
# `papermill notebooks/01_pretraining.ipynb runs/01_long.ipynb -p epochs 40` (640 steps at about
# 1 s each on a laptop CPU; not measured here), and compare `std_min` in the two curves above.

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
# **What this budget can and cannot show.** Two dozen steps demonstrate the mechanics (the terms,
# the diagnostics, the inactive hinge). They do not produce features good enough for the MLVICX vs
# VICReg comparisons of the paper: notebooks 02-05 make those comparisons at this budget, with
# confidence intervals, and say when the differences are within noise. For real numbers, re-run at
# scale:
#
# ```
# papermill notebooks/01_pretraining.ipynb runs/01_paper.ipynb \
#     -p dataset nih -p data_root /data/nih -p preset paper -p image_size 224 -p epochs 300 -p batch_size 64
# ```

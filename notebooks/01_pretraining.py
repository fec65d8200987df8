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
# **Budget.** At the default parameters this notebook trains (or reuses) the **teaching run**: the
# `teaching` preset exactly, the run `make demo` trains (ResNet-18 at half width with 1024-d heads,
# 32 px views of 64 px radiographs, 1,392 steps of batch 64 on 1,024 synthetic radiographs, about
# 8 CPU-minutes: 5-6 minutes on the two threads the preset sets). Whichever of the demo and
# notebooks 01-04 runs first trains it in `runs/teaching-<hash>/`; the others reuse it
# (`train_or_load`: runs are found by their configuration and the code that trained them). The
# collapse run below is a second, short run (`collapse_steps`). Re-run at scale with papermill
# (`-p preset paper -p dataset nih -p data_root ...`), or shorter for a quick look (`-p epochs 8`:
# 128 steps, which do not beat random init).

# %% tags=["parameters"]
dataset = "synthetic"          # "synthetic" (no files needed) or "nih" (a folder of NIH PNGs)
data_root = None               # for the "nih" dataset: the folder holding the PNGs
preset = "teaching"            # "teaching" (CPU minutes) or "paper" (the paper's recipe)
image_size = 64                # radiograph side in pixels (teaching views: 32 px crops of it; the paper: 224)
data_length = None             # pretraining radiographs (None: the preset's, 1,024)
epochs = None                  # None: the preset's (teaching: 87 epochs of 16 steps)
batch_size = None              # None: the preset's (64)
max_steps = None               # stop the pretraining after this many steps (None: all epochs)
collapse_steps = 174           # steps of the run without the variance term (section 4)
seed = 0
overrides = {}                 # any config key, e.g. {"loss.lam": 0.5, "aug.crop_scale": [0.5, 1.0]}
out_dir = "../runs"            # run folders (git-ignored), shared with make demo

# %%
import torch
from IPython.display import display

from mlvicx_core.data.registry import dataset_from_config
from mlvicx_core.experiments import diagnostics_table, held_out, pretrain_config
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
# the collapse run: the same recipe without the variance term, for its first collapse_steps steps
config_collapse = pretrain_config("mlvicx", overrides={**overrides, "loss.std_coeff": 0.0},
                                  **{**common, "max_steps": collapse_steps})
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
# One ResNet-18 trunk (here at half width, `model.width=32`: 32-64-128-256 channels) with five *taps* (`stem`, `layer1` ... `layer4`). With MLVICX each tap passes
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
# branch solid, multi-level dashed. What to look for: the invariance term falls as the two views
# are matched. The variance hinge is the largest weighted term in this recipe: the projectors end
# in a plain Linear layer, whose outputs have a spread well below 1, and the hinge keeps pushing
# every dimension's spread up (section 4 shows what happens without it). The covariance term grows
# with the spread and is traded off against both. The numbers under the figure are read from this
# run's metrics.

# %%
weights = {"invariance": config.loss.sim_coeff, "variance": config.loss.std_coeff,
           "covariance": config.loss.cov_coeff}
fig = plot_loss_terms(run.run_dir, weights, lam=config.loss.lam)

# %% tags=["nbval-check-output"]
from mlvicx_core.train.metrics_log import read_metrics

metrics = read_metrics(run.run_dir)
for term, w in weights.items():
    d = metrics[["step", f"global/{term}"]].dropna()
    print(f"global {term:10s} x {w:g}: step {int(d['step'].iloc[0]):4d} "
          f"{w * d[f'global/{term}'].iloc[0]:7.3f}  ->  step {int(d['step'].iloc[-1]):4d} "
          f"{w * d[f'global/{term}'].iloc[-1]:7.3f}")

# %% [markdown]
# **Is it learning anything a label can read?** The loss cannot say. The online probe can: every
# `train.eval_every` steps (174 here) the frozen trunk embeds 1,600 radiographs of the training
# split, whose labels the pretraining never saw, fits two read-outs on them (ridge regression per
# finding, its strength chosen by exact leave-one-out AUROC, and a 20-nearest-neighbour vote) and
# scores 1,024 radiographs of the validation patients: mean AUROC over the findings with a 95 %
# bootstrap band. Step 0 is the same network at random init: the dashed line. A randomly
# initialised ResNet is a strong baseline on these images, so the question is whether the curve
# ends above that line by more than its band. The check against the held-out probe is
# `make demo`'s output and notebook 03.

# %%
import matplotlib.pyplot as plt

from mlvicx_core.viz.training import plot_online_probe

fig, ax = plt.subplots(figsize=(6.5, 3.6), constrained_layout=True)
plot_online_probe(metrics, ax)

# %% tags=["nbval-check-output"]
for readout in ("linear", "knn"):
    d = metrics.dropna(subset=[f"probe/{readout}/mean"])
    first, last = d.iloc[0], d.iloc[-1]
    verdict = ("above random init beyond its band" if last[f"probe/{readout}/mean_lo"] >
               first[f"probe/{readout}/mean"] else "not clearly above random init")
    print(f"online probe, {readout:6s}: random init (step 0) {first[f'probe/{readout}/mean']:.3f}; "
          f"step {int(last['step'])} {last[f'probe/{readout}/mean']:.3f} "
          f"[{last[f'probe/{readout}/mean_lo']:.3f}, {last[f'probe/{readout}/mean_hi']:.3f}]: "
          f"{verdict}")

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
# Why this works with the teaching network, and would not with the authors' projector: the
# teaching projectors end in a plain Linear layer, as official VICReg's do. The paper's preset ends
# them in BatchNorm (`model.projector_last_bn`, as the authors' code): every output dimension is
# then re-scaled to a batch standard deviation of about 1 at every step, the embedding *cannot*
# shrink, the variance hinge never switches on, and a run without it is step for step the same as
# the healthy one. (The recipe search found the Linear end better for learning too:
# benchmarks/results/recipe_search.md.)

# %%
run_collapse = train_or_load(config_collapse)
fig = plot_collapse({"healthy (std_coeff=25)": run.run_dir,
                     "no variance term, Linear end (std_coeff=0)": run_collapse.run_dir})

# %% [markdown]
# The same diagnostics on 64 held-out synthetic images (test patients, not a training batch), after
# training. The
# network is in eval mode here (BatchNorm uses its running statistics instead of the batch's), so
# the absolute scale differs from the training-time curves: compare the rows with each other.

# %%
test_images = held_out(dataset, data_root, image_size, 64 * 5, seed)  # its test split: 64 images
test_batch = torch.stack([test_images[i]["image"] for i in range(64)])
display(diagnostics_table({"healthy": run.model, "no variance term": run_collapse.model},
                          test_batch).round(4))

# %% [markdown]
# **Reading it**, from the two runs' metrics (the first `collapse_steps` steps of each):

# %% tags=["nbval-check-output"]
for label, r in {"healthy": run, "no variance term": run_collapse}.items():
    d = read_metrics(r.run_dir)
    d = d[d["step"] <= collapse_steps]
    inv = d["global/invariance"].dropna()
    std = d["diag/global/std_min"].dropna()
    rank = d["diag/global/eff_rank"].dropna()
    print(f"{label:17s} invariance {inv.iloc[0]:.3f} -> {inv.iloc[-1]:.3f}; std_min "
          f"{std.iloc[0]:.4f} -> {std.iloc[-1]:.4f}; effective rank {rank.iloc[0]:.1f} -> "
          f"{rank.iloc[-1]:.1f} (step {int(d['step'].max())})")

# %% [markdown]
# A collapsing run shows the invariance term falling towards 0 (every pair of views maps to the
# same point, which looks like success) while `std_min` and the effective rank fall with it; the
# healthy run keeps its spread. The covariance term does not prevent collapse: a shrinking
# embedding also has a shrinking covariance.

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
# **What this notebook does and does not show.** The terms, the diagnostics, collapse and the online
# probe of the teaching run. Whether the trunk beats random init on labels is answered on held-out
# patients with confidence intervals by `make demo` (the paired difference) and notebook 03
# (random init, VICReg and MLVICX at several label fractions). For real numbers, re-run at scale:
#
# ```
# papermill notebooks/01_pretraining.ipynb runs/01_paper.ipynb \
#     -p dataset nih -p data_root /data/nih -p preset paper -p image_size 224 -p epochs 300 -p batch_size 64
# ```

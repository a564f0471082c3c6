# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 4 · Fine-tuning: how much to unfreeze, how fast, and what gets forgotten
#
# Feature extraction keeps every pretrained weight. Fine-tuning lets some of them move, so the features can
# adapt to your data — at the risk of destroying what made them worth reusing. The spectrum:
#
# | strategy | what trains | headstart |
# |---|---|---|
# | feature extraction | new head only | `linear` |
# | fine-tune the top | last k stage groups + head | `partial` (k = 2) |
# | fine-tune everything | all layers, **discriminative** LRs (head ≫ top stage ≫ … ≫ stem) | `full` |
# | progressive unfreezing | head first, then one more stage group per epoch | `gradual` |
# | linear probe, then fine-tune | head on frozen features first, then everything | `lp-ft` |
#
# Two misconceptions meet here: *"fine-tune everything, the last layer is not enough"* and *"fine-tuning just
# means one low learning rate everywhere"*. Both get an experiment.

# %%
import lessonkit as kit

S = kit.setup()
MODEL, WHY = kit.choose_backbone()
print("model:", WHY)
cifar = kit.splits(kit.CIFAR)
MONITOR = str(kit.IMAGENET) if kit.IMAGENET.is_dir() else "none"  # forgetting: ImageNet top-1 every epoch

# %% [markdown]
# ## Misconception: "the more of the network you fine-tune, the better"

# %%
depth = {
    "last layer only (linear)": kit.run("linear", cifar, model=MODEL, strategy="linear"),
    "last 2 stage groups (partial)": kit.run("partial", cifar, model=MODEL, strategy="partial"),
    "everything (full)": kit.run("full", cifar, model=MODEL, strategy="full", monitor_folder=MONITOR),
}
for name, r in depth.items():
    print(kit.summary(name, r))
print(kit.versus("partial", "linear"))
print(kit.versus("full", "linear"))
full_scale = kit.committed_comparison("cifar10-cat-dog-horse-500")["strategies"]
print(f"at the lesson's full scale (500/class, 224 px, 8 epochs, 3 seeds): linear {full_scale['linear']['test']:.3f}, "
      f"partial {full_scale['partial']['test']:.3f}, lp-ft {full_scale['lp-ft']['test']:.3f} (test)")

# %% [markdown]
# Training every layer adds millions of trainable parameters over the head's few thousand — and on a few
# hundred images each extra parameter is another way to fit noise, or, with a budget of a few epochs and
# small learning rates for the backbone, a lot of network that has barely moved yet. So read three things:
# the train column (did the extra layers fit the training images better, at this budget?), the test column,
# and the paired differences under it, which say whether these test images can tell the runs apart at all.
# At this notebook's small scale they often cannot. At the lesson's full scale (the committed comparison,
# 3 seeds, printed last) fine-tuning the top beat the head alone by about 5 points, with `partial` and LP-FT
# tied at the top.
# "More is better" is neither true nor false: it is a measured question per dataset and budget (the
# decision framework in notebook 6).
#
# ## Misconception: "fine-tuning = one low learning rate everywhere"
#
# Three runs of `full` that differ only in their learning rates:
#
# * **one low LR** (1e-5 for every layer, head included): safe for the backbone, but the new, random head
#   barely learns;
# * **discriminative** (headstart's default: head 1e-3, top stage 2e-4, ×0.6 per group toward the stem);
# * **one high LR** (1e-2 for every layer): the new head learns fast, and the pretrained features are hit
#   just as hard.

# %%
lr_runs = {
    "one low LR (1e-5)": kit.run("full-low", cifar, model=MODEL, strategy="full", lr=1e-5, head_lr=1e-5,
                                 lr_decay=1.0, monitor_folder=MONITOR),
    "discriminative": depth["everything (full)"],
    "one high LR (1e-2)": kit.run("full-high", cifar, model=MODEL, strategy="full", lr=1e-2, head_lr=1e-2,
                                  lr_decay=1.0, monitor_folder=MONITOR),
}
for name, r in lr_runs.items():
    print(kit.summary(name, r))

# %%
from headstart.strategies import STRATEGIES, group_learning_rates

with kit.quiet():
    from headstart.backbones import load_backbone

    stage_names = load_backbone(MODEL, pretrained=False).stage_names
rates = group_learning_rates(STRATEGIES["full"], stage_names)
print("discriminative LRs of `full`:", {k: f"{v:.1e}" for k, v in rates.items()})

# %% [markdown]
# One LR cannot serve both ends of the network: the head starts from random numbers and needs a large one,
# the pretrained stem needs almost none. A single low LR leaves the head undertrained; a single high LR
# lets the first batches, whose gradients come from a random head, scramble the pretrained filters.
# Discriminative learning rates give each part the rate it needs. (`lp-ft` attacks the same problem in time
# instead of depth: it trains the head first, so no random head ever sends gradients into the backbone.)
#
# ## Catastrophic forgetting, watched
#
# While a run fine-tunes a pretrained backbone, headstart measures per stage group how far the weights moved
# from the pretrained ones (‖w − w₀‖ / ‖w₀‖), how similar the features still are (linear CKA on a fixed batch:
# 1 = the same representation), and — with the original 1000-class head put back — how much ImageNet
# accuracy the backbone has left. The history holds them per epoch:

# %%
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

labels = {"discriminative": "full", "one high LR (1e-2)": "full-high", "one low LR (1e-5)": "full-low"}
groups = [stage_names[0], stage_names[len(stage_names) // 2], stage_names[-1]]
fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
for name, label in labels.items():
    h = kit.history(label)
    for ax, key in zip(axes, (f"cka_{groups[0]}", f"drift_{groups[0]}", "imagenet_top1")):
        measured = [(r["epoch"], r[key]) for r in h if isinstance(r.get(key), float) and r[key] == r[key]]  # skipped: nan
        if measured:
            ax.plot(*zip(*measured), "o-", label=name)
axes[0].set_title(f"CKA of {groups[0]} with its pretrained features")
axes[1].set_title(f"weight drift of {groups[0]}")
axes[2].set_title("ImageNet top-1 left (original head)")
for ax in axes:
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
axes[0].legend(fontsize=8)
plt.tight_layout()
plt.show()
for name, label in labels.items():
    last = kit.history(label)[-1]
    shown = "  ".join(f"{g}: drift {last[f'drift_{g}']:.2%} CKA {last[f'cka_{g}']:.3f}" for g in groups)
    top1 = f"  ImageNet top-1 {last['imagenet_top1']:.2f}" if "imagenet_top1" in last else ""
    print(f"{name:22s}{shown}{top1}")

# %% [markdown]
# With one high LR the early stage's weights move orders of magnitude more than with discriminative LRs, its
# features drift away from the pretrained ones (CKA falls), and the old task is forgotten (ImageNet top-1 falls).
# That is catastrophic forgetting, visible per epoch — headstart prints a warning with the fix when an early
# group's CKA drops while its weights move. Watching these numbers is how you tell "adapting" from "destroying".
# (ImageNet top-1 is measured on a 100-image subset at this notebook's small image size, so its absolute value
# is low; its fall is what matters.)
#
# ## Progressive unfreezing
#
# `gradual` trains the head alone first, then unfreezes one more stage group per epoch from the top down. The
# learning rate of every group, per epoch, from the run's history:

# %%
gradual = kit.run("gradual", cifar, model=MODEL, strategy="gradual", epochs=max(S.epochs, 3))
print(kit.summary("gradual", gradual))
h = kit.history("gradual")
for row in h:
    print(f"epoch {row['epoch']}: trains {row['trainable']}")

# %% [markdown]
# Each epoch one more group joins, each with a smaller LR than the one above it: the top adapts first, the
# generic early layers last and least. With the epoch budget of this notebook it never reaches the stem — which,
# for small data, is usually the point.
#
# ## Check your understanding
#
# <details><summary>1. A colleague fine-tunes all of ResNet-50 with lr = 0.01 on 200 images of manufacturing
# defects and gets poor results. What went wrong, and what would you try?</summary>
#
# 0.01 on every layer destroys the pretrained features within the first epochs (the high-LR run above). With 200
# images: feature extraction first (a frozen backbone and a new head), then, if it is not enough, the top stage
# with a small LR and the head with a larger one (discriminative LRs), or LP-FT. Defects are far from ImageNet,
# but edges and textures still transfer (notebook 5).
# </details>
#
# <details><summary>2. Why does a randomly initialised head make a high backbone learning rate worse?</summary>
#
# The first gradients reaching the backbone are computed through a head that predicts nonsense: large, noisy
# updates that pull the features toward whatever helps a random classifier. Training the head first (LP-FT,
# or progressive unfreezing) removes that.
# </details>
#
# <details><summary>3. What would you watch during fine-tuning to notice forgetting early?</summary>
#
# Per layer group: weight drift from the pretrained weights and feature similarity (CKA) on a fixed batch, and
# the old task's accuracy if you have its data; early groups should barely move.
# </details>

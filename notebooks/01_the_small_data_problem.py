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
# # 1 · The small-data problem: scratch vs pretrained, same network, same images
#
# You have a few hundred labelled photos and a laptop. The architectures of the last lessons were trained on
# 1.2 million ImageNet images for days on many GPUs. Is any of that within reach with a few hundred images?
#
# This notebook runs the controlled experiment the whole lesson rests on: **one network, one set of
# images, one training loop** — the only difference is where the weights start. From random numbers
# (*scratch*), or from weights already trained on ImageNet, of which we train only a new last layer
# (*feature extraction*). Then we hold the lesson's own claims against what we measure.
#
# The lesson in six notebooks (plus exercises):
#
# 1. **the small-data problem** (this one) · 2. inside a pretrained network · 3. feature extraction, BatchNorm and
# augmentation · 4. fine-tuning and forgetting · 5. far-away data and more data · 6. deciding and shipping ·
# 7. exercises (solutions in `07_solutions`)
#
# Every run below goes through headstart's library API (`headstart.api.train`, what `headstart train` calls),
# so each number can be reproduced from the command line. `lessonkit.py` beside the notebooks holds the
# settings and a few helpers that keep cells short.

# %%
import lessonkit as kit

S = kit.setup()
MODEL, WHY = kit.choose_backbone()
print("model:", WHY)

# %% [markdown]
# `choose_backbone` tries the lesson's ResNet-18 first and falls back when its ImageNet weights are not on
# this machine. Its whole logic is a dozen lines:

# %%
import inspect

print(inspect.getsource(kit.choose_backbone))

# %% [markdown]
# ## The data: cats, dogs and horses from CIFAR-10
#
# Three classes, a small training subsample per class (the lesson's scenario uses 500), a separate set of
# images to pick the best epoch (*val*), and held-out *test* images that nothing is selected on: every figure
# called "test" below was scored once, after training.

# %%
cifar = kit.splits(kit.CIFAR)
print(cifar.roles)
print(f"{len(cifar.train)} train, {len(cifar.val)} val, {len(cifar.test)} test images; classes {cifar.classes}")

# %% [markdown]
# ## The experiment
#
# Same backbone, same epochs, same optimiser. `scratch` starts from random weights and trains every layer;
# `linear` starts from ImageNet weights, freezes all of them, and trains only a new classifier on top.

# %%
runs = {
    "scratch": kit.run("scratch", cifar, model=MODEL, strategy="scratch"),
    "feature extraction": kit.run("linear", cifar, model=MODEL, strategy="linear"),
}
for name, r in runs.items():
    print(kit.summary(name, r))
print(kit.versus("linear", "scratch"))

# %%
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
for ax, (name, label) in zip(axes, [("scratch", "scratch"), ("feature extraction", "linear")]):
    h = kit.history(label)
    epochs = [row["epoch"] for row in h]
    ax.plot(epochs, [row["train_accuracy"] for row in h], "o-", label="train")
    ax.plot(epochs, [row["val_accuracy"] for row in h], "s-", label="val")
    ax.axhline(1 / 3, color="grey", ls=":", label="chance")
    ax.set_title(name)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
axes[0].set_ylabel("accuracy")
axes[0].legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# Same network, same images, same number of epochs. The pretrained start is far ahead from the first epoch:
# its features were learned from a million images, and a new last layer only has to learn how to combine them
# for *our* three classes. From random weights, the network must learn edges, textures and shapes from a few
# hundred tiny images — and the training budget that is plenty for a linear head is not enough for that.
#
# ## The lesson's claim against the measurement
#
# The lesson plan says: scratch on ~500 images reaches **~99 % train but ~35 % val** accuracy (memorised,
# not learned), and feature extraction reaches **85 %+**. headstart measured, on exactly that scenario
# (CIFAR cat/dog/horse, 500 per class, Lite0 at 224 px, 8 epochs, 3 seeds; `docs/results/cifar10-cat-dog-horse-500`,
# made by the `headstart compare` command in the README). Its test figures are on the official 1,000 test images
# per class, which nothing was selected on; the best epoch of each run was chosen on 300 val images per class.

# %%
committed = kit.committed_comparison("cifar10-cat-dog-horse-500")
c = committed["strategies"]
print(f"{'':22s}{'lesson says':>24s}   headstart measured (3 seeds; test with its 95% interval)")
print(f"{'scratch':22s}{'~99% train / ~35% val':>24s}   {c['scratch']['train']:.1%} train / "
      f"{c['scratch']['test']:.1%} test ({c['scratch']['low']:.1%}-{c['scratch']['high']:.1%})")
for name, label, says in [("feature extraction", "linear", "85%+"), ("fine-tuning (lp-ft)", "lp-ft", "-")]:
    print(f"{name:22s}{says:>24s}   {c[label]['train']:.1%} train / {c[label]['test']:.1%} test "
          f"({c[label]['low']:.1%}-{c[label]['high']:.1%})")
print("verdict:", committed["sentence"])

# %% [markdown]
# Both disagree, and for reasons worth knowing:
#
# * **Scratch did not overfit: it underfit.** After 8 epochs it fits under 60 % of its own training images, and
#   test is about the same. Overfitting (train ≫ val) needs enough optimisation steps to memorise; 8 epochs
#   of 47 batches with augmentation are not enough for a 3.4M-parameter network from random weights. The
#   lesson's 99 % / 35 % describes a run trained far longer.
# * **Feature extraction gave about 81 %, not 85 %+.** CIFAR's images are 32 × 32 pixels, upscaled: blurrier and
#   further from ImageNet photos than the flowers or ants the claim has in mind. Fine-tuning the upper
#   layers closes the gap (about 86 % with LP-FT, notebook 4).
#
# Give scratch the time, and it does what the lesson says. Below, the same scratch recipe runs for many more
# epochs without augmentation (so memorising is possible) at a lower resolution (so it is affordable):

# %%
long = kit.run("scratch-long", cifar, model=MODEL, strategy="scratch", epochs=S.long_epochs,
               image_size=S.long_size, augment="none", patience=None)
print(kit.summary("scratch, long, no augment", long))
h = kit.history("scratch-long")
plt.figure(figsize=(6, 3.4))
plt.plot([r["epoch"] for r in h], [r["train_accuracy"] for r in h], label="train")
plt.plot([r["epoch"] for r in h], [r["val_accuracy"] for r in h], label="val")
plt.axhline(1 / 3, color="grey", ls=":", label="chance")
plt.xlabel("epoch"); plt.ylabel("accuracy"); plt.legend(); plt.title("scratch, given time to memorise")
plt.show()
print(f"gap at the end: train {h[-1]['train_accuracy']:.2f} vs val {h[-1]['val_accuracy']:.2f}")

# %% [markdown]
# With enough epochs and nothing to stop it memorising, the randomly initialised network fits its training
# images far better than it predicts new ones: the train curve keeps climbing while val stalls. That is the
# lesson's overfitting picture. How wide the gap gets depends on the budget (epochs, image size, the
# number of images); the pretrained start avoids the whole problem in a fraction of the time.
#
# ## Misconception: "for a new task you have to retrain the whole network"
#
# The table above already answers it: training *one layer* on top of frozen pretrained features beat
# training *every* layer from scratch, on the same data, in less time. Notebook 4 asks the follow-up —
# is it worth training more than the last layer once you start from pretrained weights?
#
# ## Check your understanding
#
# <details><summary>1. Scratch and feature extraction used the same network and the same images. What is the
# only difference, and why does it matter so much with a few hundred images?</summary>
#
# The starting weights. Pretrained weights already encode general visual features (edges, textures, parts)
# learned from 1.2M images; a few hundred images are too few to learn them from random numbers, but plenty to
# learn how to combine them into three classes.
# </details>
#
# <details><summary>2. The committed scratch runs had 58 % train and 59 % test accuracy. Is it overfitting?
# What would you change to see the lesson's 99 % / 35 %?</summary>
#
# No: train is not above test, so it is underfitting — it has not even fit its own training images. Train
# for many more epochs and remove augmentation (and anything that stops early); the long run above shows
# the gap opening.
# </details>

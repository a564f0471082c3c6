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
# # 5 · Domain shift, and "more data always beats transfer"
#
# Two beliefs that would make transfer learning a niche trick: that it only works when your images look like
# ImageNet's, and that it is a crutch you outgrow once you have enough data. Both get an experiment on real data.

# %%
import lessonkit as kit

S = kit.setup()
MODEL, WHY = kit.choose_backbone()
print("model:", WHY)

# %% [markdown]
# ## Misconception: "transfer learning only works on similar datasets"
#
# Blood-cell microscopy (`blood-cells-pbc`): 8 kinds of stained white and red blood cells on a pink
# background, photographed through a microscope. No ImageNet class looks like this.

# %%
import matplotlib.pyplot as plt
from PIL import Image

blood = kit.splits(kit.FAR, per_class=S.far_per_class, val_per_class=min(S.val_per_class, 30),
                   test_per_class=min(S.test_per_class, 30))
print(blood.roles)
print(f"{len(blood.train)} train / {len(blood.val)} val / {len(blood.test)} test images, classes: {blood.classes}")
fig, axes = plt.subplots(1, len(blood.classes), figsize=(14, 2))
for ax, c in zip(axes, range(len(blood.classes))):
    ref = blood.train.refs[blood.train.labels.index(c)]
    ax.imshow(Image.open(ref))
    ax.set_title(blood.classes[c], fontsize=9)
    ax.axis("off")
plt.show()

# %% [markdown]
# First, how far is it from ImageNet, measured? The probe compares our images' per-channel statistics with the
# ImageNet statistics stored in each BatchNorm layer (1 = looks the same to that layer), and for contrast
# does the same on the CIFAR photos:

# %%
from headstart.api import probe

with kit.quiet():
    far = probe(blood, model=MODEL, image_size=S.image_size)
    near = probe(kit.splits(kit.CIFAR), model=MODEL, image_size=S.image_size)
for name, rep in (("cifar cat/dog/horse", near), ("blood cells", far)):
    print(f"{name:20s} similarity low-level {rep.similarity('low'):.2f}  high-level {rep.similarity('high'):.2f}  "
          f"probe accuracy of the last stage {rep.last.val_accuracy:.2f} (chance {1 / len(rep.classes):.2f})")

# %% [markdown]
# Now the controlled experiment again, on the far-away data: scratch vs feature extraction vs fine-tuning the top.

# %%
far_runs = {
    "scratch": kit.run("blood-scratch", blood, model=MODEL, strategy="scratch"),
    "feature extraction (linear)": kit.run("blood-linear", blood, model=MODEL, strategy="linear"),
    "fine-tune top (partial)": kit.run("blood-partial", blood, model=MODEL, strategy="partial"),
}
for name, r in far_runs.items():
    print(kit.summary(name, r))
print(f"chance: {1 / len(blood.classes):.3f}")
print(kit.versus("blood-linear", "blood-scratch"))
print(kit.versus("blood-partial", "blood-linear"))

# %% [markdown]
# Frozen ImageNet features separate eight kinds of blood cell far above chance and far above what the same network
# learns from random weights on the same images (the first paired difference) — with no cell in its pretraining
# data. What transfers is not "dog-ness" but edges, blobs, textures and colour contrasts, which cells have too.
# Distance from ImageNet may still change *how* to transfer: the upper layers are the most ImageNet-specific, so
# far data is where fine-tuning them is expected to pay most, and the BatchNorm similarity already says that
# even the early layers see unfamiliar statistics here. Whether fine-tuning the top paid on these images, at this
# budget, is the second paired difference — a measurement, not a rule. `recommend` (notebook 6) reads exactly
# these measurements.
#
# ## Misconception: "with enough data, training from scratch always wins"
#
# A training-size sweep: scratch and feature extraction with the same epoch budget at growing numbers of training
# images per class (the same val and test images for every point).

# %%
sweep = {}
for n in S.sweep:
    data = kit.splits(kit.CIFAR, per_class=n)
    sweep[n] = {s: kit.run(f"{s}-{n}" if n != S.per_class else s, data, model=MODEL, strategy=s)
                for s in ("scratch", "linear")}
    print(f"{n:5d}/class  scratch {sweep[n]['scratch']['test_accuracy']:.3f}  "
          f"linear {sweep[n]['linear']['test_accuracy']:.3f}  "
          f"(scratch trained {sweep[n]['scratch']['train_seconds']:.0f} s, linear {sweep[n]['linear']['train_seconds']:.0f} s)")
plt.figure(figsize=(6, 3.4))
for s, label in (("scratch", "scratch"), ("linear", "pretrained, feature extraction")):
    plt.plot(list(sweep), [sweep[n][s]["test_accuracy"] for n in sweep], "o-", label=label)
plt.xscale("log"); plt.xticks(list(sweep), [str(n) for n in sweep]); plt.minorticks_off()
plt.xlabel("training images per class"); plt.ylabel("test accuracy")
plt.axhline(1 / 3, color="grey", ls=":", label="chance"); plt.legend(); plt.title("more data: does scratch catch up?")
plt.show()

# %% [markdown]
# Scratch improves as the data grows, and so does transfer; in this range the curves do not meet. Where they eventually meet depends on the budget: ImageNet itself is 1.2 million images trained for
# many epochs, and even with tens of thousands of images of your own, a pretrained start typically converges
# in a fraction of the epochs and ends at least as well. Transfer is a head start, not a workaround you grow
# out of: with more data the best choice moves from *feature extraction* toward *fine-tuning everything* —
# still from pretrained weights (notebook 6's table). Scratch becomes a serious contender only with a lot of
# data far from ImageNet.
#
# ## Check your understanding
#
# <details><summary>1. An ImageNet model has never seen a blood cell. Why do its features help?</summary>
#
# Its early and middle layers detect edges, blobs, textures and colour contrasts, which are universal to
# images; only the last layers are ImageNet-specific. A new head (or fine-tuned top layers) combines the
# generic features into cell types.
# </details>
#
# <details><summary>2. You have 50,000 labelled images of your own. Scratch or pretrained?</summary>
#
# Still start from pretrained weights and fine-tune everything (with discriminative LRs): it converges much
# faster and usually ends at least as well. Compare with scratch only if the data is far from ImageNet and
# compute is not a concern.
# </details>

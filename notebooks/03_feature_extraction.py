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
# # 3 · Feature extraction, the BatchNorm trap, and augmentation measured
#
# Feature extraction: freeze the whole pretrained backbone, put a new linear layer on top, train only that.
# It is fast (the backbone needs no gradients — headstart even computes its features once and caches them),
# hard to get wrong, and the baseline everything else must beat. The loss is `nn.CrossEntropyLoss`: a softmax
# over the classes followed by the negative log-likelihood of the right one — the standard loss for
# classification, used by every run in this lesson.
#
# Two things can still quietly go wrong or right: **BatchNorm in a "frozen" backbone**, and **augmentation**.
# Both are measured below.

# %%
import lessonkit as kit

S = kit.setup()
MODEL, WHY = kit.choose_backbone()
print("model:", WHY)
cifar = kit.splits(kit.CIFAR)

# %% [markdown]
# ## The BatchNorm subtlety, in numbers
#
# `requires_grad = False` stops *gradients*. It does not stop a BatchNorm layer in `train()` mode from
# (1) normalising each batch with that batch's own mean and variance instead of the stored ImageNet ones, and
# (2) overwriting its stored running mean and variance with a moving average of our batches. Only
# `.eval()` switches both off. Plain PyTorch, no headstart loop: the backbone is frozen with `requires_grad`,
# a new head is trained for one epoch, and we look at the running statistics before and after.

# %%
import copy

import torch
import torch.nn.functional as F
from torch import nn

from headstart.backbones import load_backbone

torch.manual_seed(0)
with kit.quiet():
    pretrained = load_backbone(MODEL)
x_train, y_train = kit.pixels_and_labels(cifar.train, pretrained)
x_test, y_test = kit.pixels_and_labels(cifar.test, pretrained)


def batchnorms(net: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def frozen_with_new_head(num_classes: int) -> nn.Module:
    net = copy.deepcopy(pretrained)
    for p in net.parameters():
        p.requires_grad = False              # "frozen"
    net.reset_head(num_classes)              # a new nn.Linear: trainable
    return net


def train_head(net: nn.Module, backbone_eval: bool, epochs: int = 1, batch: int = 32) -> None:
    optimizer = torch.optim.AdamW(net.head.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        net.train()                          # what every training loop does first
        if backbone_eval:
            net.stages.eval()                # the fix: the frozen part stays in eval mode
        for idx in torch.randperm(len(y_train), generator=g).split(batch):
            loss = F.cross_entropy(net(x_train[idx]), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


@torch.no_grad()
def accuracy(net: nn.Module) -> float:
    net.eval()
    return (net(x_test).argmax(1) == y_test).float().mean().item()


careless = frozen_with_new_head(len(cifar.classes))
before = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in batchnorms(careless)]
train_head(careless, backbone_eval=False)
after = [(bn.running_mean, bn.running_var) for bn in batchnorms(careless)]
moved = [((m1 - m0).norm() / m0.norm()).item() for (m0, _), (m1, _) in zip(before, after)]
var_moved = [((v1 - v0).norm() / v0.norm()).item() for (_, v0), (_, v1) in zip(before, after)]
print(f"trainable parameters: {sum(p.numel() for p in careless.parameters() if p.requires_grad):,} (the head only)")
print(f"BatchNorm layers whose running mean changed: {sum(m > 0 for m in moved)} of {len(moved)}")
print(f"relative change of the running mean: median {sorted(moved)[len(moved) // 2]:.1%}, max {max(moved):.1%}")
print(f"relative change of the running var:  median {sorted(var_moved)[len(var_moved) // 2]:.1%}, max {max(var_moved):.1%}")
first = batchnorms(careless)[0]
print("first BatchNorm, running mean of 4 channels before:", before[0][0][:4].numpy().round(3),
      "after:", first.running_mean[:4].numpy().round(3))

# %% [markdown]
# Not one gradient reached the backbone, yet every BatchNorm layer now holds statistics of our few hundred
# images instead of ImageNet's. Does it matter? Train the same head both ways, for the same epochs, and
# score both on the test images (in `eval()` mode, as a deployed model runs):

# %%
results = {}
for name, keep_eval in (("frozen by requires_grad only (train mode)", False), ("frozen + backbone.eval()", True)):
    net = frozen_with_new_head(len(cifar.classes))
    train_head(net, backbone_eval=keep_eval, epochs=max(1, S.epochs))
    results[name] = accuracy(net)
    print(f"{name:45s} test accuracy {results[name]:.3f}")

# %% [markdown]
# In train mode the head learned on features normalised with *batch* statistics, and at test time it receives
# features normalised with running statistics that have drifted toward our data: two mismatches the eval-mode
# version never has. How many points it costs depends on the batch size, the data and the model — it can be a
# few, or (with small batches far from ImageNet) many. headstart keeps every frozen group in eval mode,
# and by default keeps the pretrained statistics even in groups it fine-tunes (`--train-bn` re-estimates
# them); on CIFAR cat/dog/horse re-estimating them cost 4 points (README, docs/analysis.md).
#
# ## Feature extraction with headstart
#
# The `linear` strategy is exactly this recipe — frozen backbone in eval mode, a new head — with the frozen
# features computed once per image and cached.

# %%
linear = kit.run("linear", cifar, model=MODEL, strategy="linear")
print(kit.summary("feature extraction (linear)", linear))

# %% [markdown]
# ## Augmentation: measured, not assumed
#
# For small data, the usual advice is random augmentation: `RandomResizedCrop` (random position and scale),
# `RandomHorizontalFlip` (a mirrored cat is a cat), `ColorJitter` (lighting). Each epoch sees a slightly
# different version of every image, so memorising exact pixels stops working. headstart's `light` preset is
# those three:

# %%
from headstart.transforms import train_transform

print(train_transform(pretrained.preprocessing.with_image_size(S.image_size), "light"))

# %% [markdown]
# Does it help here? The same runs with and without it, for feature extraction and for fine-tuning the last
# two stage groups (`partial`). headstart caches a few augmented views of the frozen part so augmentation stays
# cheap.

# %%
aug = {
    ("linear", "none"): linear,
    ("linear", "light"): kit.run("linear-augment", cifar, model=MODEL, strategy="linear", augment="light"),
    ("partial", "none"): kit.run("partial-noaugment", cifar, model=MODEL, strategy="partial", augment="none"),
    ("partial", "light"): kit.run("partial", cifar, model=MODEL, strategy="partial"),
}
print(f"{'strategy':10s}{'augment':>9s}{'train':>8s}{'test':>8s}{'gap':>8s}")
for (strategy, augment), r in aug.items():
    print(f"{strategy:10s}{augment:>9s}{r['final_train_accuracy']:>8.3f}{r['test_accuracy']:>8.3f}"
          f"{r['final_train_accuracy'] - r['test_accuracy']:>+8.3f}")

# %% [markdown]
# Read the *gap* column (train − test) first: augmentation makes training images harder to fit, so the train
# accuracy drops and the gap narrows — that is its job. Whether test accuracy rises depends on how much the
# model could overfit in the first place: a linear head on frozen features has little capacity to memorise,
# while a model that trains backbone layers has a lot. The differences here come from one seed on a few
# hundred test images; headstart's `compare` runs several seeds and gives intervals before calling a winner.
#
# ## Check your understanding
#
# <details><summary>1. You froze the backbone with <code>requires_grad=False</code> and your training loop
# calls <code>model.train()</code>. Which two things still change in the backbone?</summary>
#
# BatchNorm normalises with batch statistics instead of its stored ones, and it overwrites its running mean and
# variance with a moving average of your batches. (Dropout in the backbone would also be active.) Call
# `.eval()` on the frozen part after `model.train()`.
# </details>
#
# <details><summary>2. Why does feature extraction need so little compute?</summary>
#
# No gradient flows through the backbone, so each image's features can be computed once (a single forward
# pass) and reused every epoch; only a linear layer trains.
# </details>
#
# <details><summary>3. Augmentation lowered training accuracy. Is that bad?</summary>
#
# No: the model sees harder, varied versions of the images, so it cannot memorise them; what counts is accuracy
# on images it never saw (and the train − test gap).
# </details>

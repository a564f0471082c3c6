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
# # 7 · Exercises
#
# Four exercises, each a function to complete and a cell that checks it. `07_exercises` has the gaps to fill;
# `07_solutions` has one way to fill them (the exercises are generated from it, and CI executes it).

# %%
import lessonkit as kit

S = kit.setup()
MODEL, WHY = kit.choose_backbone()
print("model:", WHY)

import timm
import torch
from torch import nn

# %% [markdown]
# ## Exercise 1 · Freeze, replace, unfreeze (plain PyTorch)
#
# Complete `prepare`: freeze every parameter of a timm ResNet-18, give it a new `fc` for `num_classes`, and
# unfreeze its last stage (`layer4`). Then compare the trainable parameter count with what headstart's
# `inspect_model` says for `partial` with one stage group.

# %%
def prepare(num_classes: int) -> nn.Module:
    net = timm.create_model("resnet18", pretrained=False)
    # YOUR CODE HERE
    raise NotImplementedError
    return net


from headstart.api import inspect_model

net = prepare(3)
mine = sum(p.numel() for p in net.parameters() if p.requires_grad)
with kit.quiet():
    theirs = inspect_model("resnet18", strategy="partial", train_last=1, num_classes=3,
                           weights="random")["trainable_params"]
print(f"yours: {mine:,} trainable · headstart: {theirs:,}")
assert mine == theirs, "freeze everything, replace fc, then unfreeze layer4"

# %% [markdown]
# ## Exercise 2 · Discriminative learning rates
#
# Complete `discriminative_lrs`: the head gets `head_lr`, the last stage group gets `lr`, and every group
# closer to the stem gets `decay` times the LR of the group above it. Check it against headstart's
# `group_learning_rates` for the `full` strategy.

# %%
from headstart.strategies import STRATEGIES, group_learning_rates


def discriminative_lrs(stage_names: list[str], head_lr: float, lr: float, decay: float) -> dict[str, float]:
    # YOUR CODE HERE
    raise NotImplementedError


full = STRATEGIES["full"]
with kit.quiet():
    from headstart.backbones import load_backbone

    stages = load_backbone(MODEL, pretrained=False).stage_names
yours = discriminative_lrs(stages, full.head_lr, full.lr, full.lr_decay)
expected = group_learning_rates(full, stages)
print({k: f"{v:.1e}" for k, v in yours.items()})
assert yours.keys() == expected.keys() and all(abs(yours[k] - expected[k]) < 1e-12 for k in expected)

# %% [markdown]
# ## Exercise 3 · Keep a frozen backbone's BatchNorm statistics
#
# Complete `train_mode_with_frozen_backbone`: the model goes into training mode (the head trains), but every
# module of the frozen backbone (`model.stages`) stays in eval mode. The check runs a batch through it and
# asserts that no running statistic moved.

# %%
def train_mode_with_frozen_backbone(model: nn.Module) -> None:
    # YOUR CODE HERE
    raise NotImplementedError


with kit.quiet():
    model = load_backbone(MODEL)
model.requires_grad_(False)
model.reset_head(3)
before = [m.running_mean.clone() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
train_mode_with_frozen_backbone(model)
assert model.head.training, "the head must be in training mode"
model(torch.randn(8, 3, S.image_size, S.image_size))
after = [m.running_mean for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
moved = sum(not torch.equal(a, b) for a, b in zip(before, after))
print(f"BatchNorm layers whose running mean moved: {moved} of {len(before)}")
assert moved == 0

# %% [markdown]
# ## Exercise 4 · How deep to fine-tune? Measure it
#
# Use `kit.run` to fine-tune the last 1 and the last 3 stage groups (`strategy="partial", train_last=k`) on the
# CIFAR subset, and return their test accuracies. Which depth wins here — and is the difference larger than the
# interval of each run?

# %%
def depth_experiment(data) -> dict[int, float]:
    # YOUR CODE HERE
    raise NotImplementedError


cifar = kit.splits(kit.CIFAR)
accuracies = depth_experiment(cifar)
print({f"last {k}": round(a, 3) for k, a in accuracies.items()})
assert set(accuracies) == {1, 3} and all(0 <= a <= 1 for a in accuracies.values())

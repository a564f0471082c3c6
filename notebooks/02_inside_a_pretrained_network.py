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
# # 2 · Inside a pretrained network
#
# **Misconception: "a pretrained model is a black box you can only use as it is."** It is an `nn.Module` like
# the ones you built: you can print it, reach any layer by name, look at its weights, watch what each layer
# computes, and swap its last layer for your own. This notebook does all of that, and ends with the few
# lines of plain PyTorch that transfer learning comes down to, next to the headstart call that does the same.

# %%
import lessonkit as kit

S = kit.setup()
MODEL, WHY = kit.choose_backbone()
print("model:", WHY)

# %%
import torch
from torch import nn

from headstart.backbones import count_params, load_backbone

with kit.quiet():
    model = load_backbone(MODEL)
print("weights:", "ImageNet" if model.pretrained else "random", "·", type(model).__name__, "is an nn.Module:",
      isinstance(model, nn.Module))
for name in model.group_names:
    print(f"  {name:8s} {count_params(model.group(name)):>10,d} parameters")
print("the classifier:", model.head.fc)

# %% [markdown]
# headstart keeps the network's own layers and only names them in order: a **stem** (the first convolution),
# **stage groups** (`stage1` … deeper is later), and a **head** (global average pooling, dropout, one linear
# layer). The classifier maps the pooled features to **1000 ImageNet classes**; for a new task with 3 classes,
# that one layer is what must change.
#
# ## What the first layer learned: edges and colour blobs
#
# Each filter of the first convolution is a tiny RGB image: the pattern it responds to most. Below, the
# pretrained filters next to the same layer at random initialisation.

# %%
import matplotlib.pyplot as plt


def first_conv(net: nn.Module) -> nn.Conv2d:
    return next(m for m in net.modules() if isinstance(m, nn.Conv2d))


def show_filters(weight: torch.Tensor, ax_row, n: int = 16) -> None:
    for ax, w in zip(ax_row, weight[:n]):
        w = w.permute(1, 2, 0)
        ax.imshow(((w - w.min()) / (w.max() - w.min() + 1e-8)).numpy())
        ax.axis("off")


with kit.quiet():
    random_model = load_backbone(MODEL, pretrained=False)
conv = first_conv(model)
print(f"first layer: {conv}")
fig, axes = plt.subplots(2, 16, figsize=(12, 1.8))
show_filters(conv.weight.detach(), axes[0])
show_filters(first_conv(random_model).weight.detach(), axes[1])
axes[0][0].set_title("pretrained", loc="left", fontsize=9)
axes[1][0].set_title("random", loc="left", fontsize=9)
plt.show()

# %% [markdown]
# The pretrained filters are smooth, oriented edge and colour-contrast detectors; the random ones are noise.
# Nothing about them is specific to dogs or cars: a vertical edge is a vertical edge in a photo of a horse,
# a blood cell or a fabric — which is why these layers transfer so well (notebook 5 tests it on blood cells).
#
# ## What each stage computes: from edges to parts
#
# One image through the network, and a few channels of the output of four stage groups. Early maps are
# sharp and image-like (edges, colour regions); later ones are coarse and abstract (where a part is, not
# what the pixels are).

# %%
data = kit.splits(kit.CIFAR)
one = data.test.subset([0])
x, y = kit.pixels_and_labels(one, model, size=max(S.image_size, 96))
model.eval()
with torch.no_grad():
    outputs = model.forward_stages(x)
picked = [0, len(outputs) // 3, 2 * len(outputs) // 3, len(outputs) - 1]
fig, axes = plt.subplots(len(picked), 7, figsize=(11, 1.7 * len(picked)))
for row, k in zip(axes, picked):
    act = outputs[k][0]
    mean, std = torch.tensor(model.preprocessing.mean), torch.tensor(model.preprocessing.std)
    row[0].imshow((x[0].permute(1, 2, 0) * std + mean).clamp(0, 1).numpy())  # undo the normalisation to show it
    row[0].set_title(model.stage_names[k], fontsize=9)
    for ax, c in zip(row[1:], act.std(dim=(1, 2)).argsort(descending=True)[:6].tolist()):
        ax.imshow(act[c].numpy(), cmap="viridis")
    for ax in row:
        ax.axis("off")
plt.suptitle(f"one test image ({data.classes[y[0]]}): the 6 most active channels of each stage", fontsize=10)
plt.tight_layout()
plt.show()
for k, out in enumerate(outputs):
    print(f"{model.stage_names[k]:7s} output {tuple(out.shape[1:])}  (channels x height x width)")

# %% [markdown]
# Spatial size shrinks and channels grow, as in the CNNs you built. The last stage's maps are pooled into one
# vector per image: that vector is what a new classifier learns from.
#
# ## How general is each stage? A linear probe per stage
#
# Looking is not measuring. `headstart.api.probe` freezes the network, pools the output of every stage group,
# and fits a logistic regression on it (cross-validated on the training images, scored on val). Where the
# accuracy stops rising is where the features stop being useful *for this data*.

# %%
from headstart.api import probe

with kit.quiet():
    report = probe(data, model=model, image_size=S.image_size)
for st in report.stages:
    print(f"{st.stage:7s} {st.features:5d} features  probe val accuracy {st.val_accuracy:.3f}   "
          f"BatchNorm similarity to ImageNet {st.similarity if st.similarity is not None else float('nan'):.2f}")
plt.figure(figsize=(6, 3))
plt.plot([st.stage for st in report.stages], [st.val_accuracy for st in report.stages], "o-")
plt.axhline(1 / len(data.classes), color="grey", ls=":", label="chance")
plt.ylabel("linear probe accuracy"); plt.legend(); plt.title("what a linear classifier can read from each stage")
plt.show()

# %% [markdown]
# The black box opened: early stages carry little a linear classifier can use for *cat vs dog vs horse*
# (edges are everywhere), later stages much more. That rising curve is the edges → textures → parts → objects
# hierarchy, measured. The similarity column compares our images' per-channel statistics with the ImageNet
# statistics each BatchNorm layer stored: 1 means "looks like ImageNet to this layer".
#
# ## The whole trick in plain PyTorch, and in headstart
#
# Load a pretrained network, freeze it (`requires_grad = False`), replace the head, unfreeze what should
# adapt, and give the optimiser one parameter group per part with its own learning rate. With timm (the
# library headstart loads models from), for the lesson's ResNet-18:

# %%
import timm

net = timm.create_model("resnet18", pretrained=False, num_classes=1000)  # at work: pretrained=True
for p in net.parameters():                       # 1. freeze everything
    p.requires_grad = False
net.fc = nn.Linear(net.fc.in_features, 3)        # 2. a new head for 3 classes: trainable by default
for p in net.layer4.parameters():                # 3. let the top stage adapt too
    p.requires_grad = True
optimizer = torch.optim.AdamW([                  # 4. discriminative learning rates: the new head learns fastest
    {"params": net.fc.parameters(), "lr": 2e-3},
    {"params": net.layer4.parameters(), "lr": 5e-4},
])
plain_trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
print(f"plain PyTorch: {plain_trainable:,} trainable of {sum(p.numel() for p in net.parameters()):,}; "
      f"LRs {[g['lr'] for g in optimizer.param_groups]}")

# %% [markdown]
# headstart says the same with a strategy name: `partial` with its last stage group trains `layer4` and the
# head. `inspect_model` shows what would train, at which learning rate, without training anything (the plan
# needs only the architecture, so `weights="random"` works on a machine without ResNet-18's weights):

# %%
from headstart.api import inspect_model

with kit.quiet():
    plan = inspect_model("resnet18", strategy="partial", train_last=1, num_classes=3, weights="random")
for g in plan["groups"]:
    print(f"  {g['group']:7s} {g['params']:>10,d}  {'trains at lr ' + format(g['lr'], 'g') if g['trainable'] else 'frozen'}")
headstart_lrs = sorted(g["lr"] for g in plan["groups"] if g["trainable"])
plain_lrs = sorted(g["lr"] for g in optimizer.param_groups)
print(f"headstart: {plan['trainable_params']:,} trainable; plain PyTorch: {plain_trainable:,}; "
      f"same parameters: {plan['trainable_params'] == plain_trainable}; same LRs: {headstart_lrs == plain_lrs}")

# %% [markdown]
# Same parameters, same learning rates. Inside headstart, freezing is the same one line (below), and the
# parameter groups are built per named stage group, with the LR falling by `lr_decay` per group toward the stem:

# %%
import inspect

from headstart.strategies import STRATEGIES, apply_trainable, group_learning_rates

print(inspect.getsource(apply_trainable))
print({k: f"{v:.2g}" for k, v in group_learning_rates(STRATEGIES["full"], model.stage_names).items()})

# %% [markdown]
# ## Check your understanding
#
# <details><summary>1. You load ResNet-18 with ImageNet weights and print <code>model.fc</code>. What do you
# see, and what must change for a 5-class task?</summary>
#
# `Linear(in_features=512, out_features=1000)`: 512 pooled features (global average pooling of the last
# stage's 512 channels), 1000 ImageNet classes. Replace it: `model.fc = nn.Linear(512, 5)`. (EfficientNet-Lite0's
# head, above, has 1280 inputs.)
# </details>
#
# <details><summary>2. After <code>for p in model.parameters(): p.requires_grad = False</code> you replace
# <code>model.fc</code>. Does the new head train?</summary>
#
# Yes: a freshly created `nn.Linear` has `requires_grad=True`. Freezing applied to the parameters that existed
# when the loop ran.
# </details>
#
# <details><summary>3. The probe accuracy rises from the stem to the last stage. What does that say about which
# layers to fine-tune first?</summary>
#
# Early layers are generic (useful for any image, little class information); later ones are specific. Adapt the
# later ones first (and give them the larger learning rates); leave the early ones frozen or nearly so.
# </details>

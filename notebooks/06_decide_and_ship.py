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
# # 6 · Deciding, and shipping the model
#
# The lesson's decision framework has two questions: how much data do you have, and how far is it from the
# pretraining data? Its rule-of-thumb answers:
#
# | your data | the lesson's rule of thumb | why |
# |---|---|---|
# | small, similar to ImageNet | feature extraction | the features already fit; too little data to move them safely |
# | small, different | feature extraction, maybe fine-tune the top stage | early features still help; too little data for deep fine-tuning |
# | large, similar | fine-tune everything, low LRs | enough data to refine every layer |
# | large, different | fine-tune everything (scratch may compete) | early features may need to adapt too |
#
# Rules of thumb are where you start. Below, the same table with **measured winners** next to it, then
# `recommend` deciding one cell from measurements of the data, and finally the model leaving the notebook.

# %%
import json
from pathlib import Path

import lessonkit as kit

S = kit.setup()
MODEL, WHY = kit.choose_backbone()
print("model:", WHY)

# %% [markdown]
# ## The table, measured
#
# headstart ships the track record of a benchmark (`bench/recommend.py`, results in `docs/recommend.md`): many
# real datasets at several training sizes, every strategy × 3 seeds, each scored on test images nothing was
# selected on. Each task falls in one cell of the table (small = under 50 training images per class; different =
# the probe's high-level BatchNorm similarity to ImageNet under 0.85). Per cell: how often each strategy was the
# best, which strategy lost the least test accuracy to the best on average (its *regret*, 0 when the test images
# cannot tell it from the best), and the regret of the rule of thumb's own advice.

# %%
from headstart.api import track_record

RECORD = track_record()
TEXTBOOK = RECORD["textbook"]  # the rule of thumb's advice per cell, as the benchmark checked it
print(f"benchmark: {RECORD['tasks']} tasks from {len(RECORD['datasets'])} datasets "
      f"({', '.join(RECORD['datasets'])}); {RECORD['settings']}")
for cell, c in RECORD["decision_table"].items():
    regrets, least = c["mean_regret"], c["least_regret"]  # every strategy at the least regret, cheapest first
    best = ", ".join(f"{s} ×{n}" for s, n in c["best"].items())
    advice = TEXTBOOK[cell]
    print(f"\n{cell} ({len(c['tasks'])} tasks)\n  best: {best}\n  least mean regret ({regrets[least[0]]:.1f} points): "
          f"{', '.join(least)}\n  the rule of thumb's {advice}: {regrets[advice]:.1f} points")

# %% [markdown]
# And the policies, by mean regret over every task. `recommend` is scored as a new user would meet it: for each
# dataset, the rule it applies was fitted on the *other* datasets only (leave-one-dataset-out).

# %%
for name, row in sorted(RECORD["policies"].items(), key=lambda kv: kv[1]["mean_regret"]):
    time = f" · training time {row['relative_seconds']:.2f}× always-gradual's" if row["relative_seconds"] else ""
    print(f"  {name:60s} mean regret {row['mean_regret']:5.2f} · worst {row['worst_regret']:5.1f}{time}")

# %% [markdown]
# Read the printout cell by cell. Where the data were different from ImageNet, the rule of thumb held: feature
# extraction lost nothing on small different data (though at 10 images per class the test images could rarely tell
# any two strategies apart), and fine-tuning everything was never beaten on large different data. Where the data
# looked like ImageNet, it did not hold: on small similar data, training the top stage group too (`partial:1`) or
# unfreezing gradually lost nothing where feature extraction lost points, and on large similar data gradual
# unfreezing lost nothing where fine-tuning everything at once lost points. One policy was never beaten at the
# benchmark's setting (96 px, 6 epochs): always `gradual`. `recommend` does not beat it on accuracy; it picks a
# cheaper strategy where the benchmark saw one tie, and its reasons say what that has cost out of sample.
#
# ## `recommend`: one cell, decided from measurements
#
# `recommend` does what you would do by hand: count images per class, run the linear probe per stage and the
# BatchNorm similarity (notebooks 2 and 5), and turn them into a strategy with learning rates and reasons.
# For the blood cells:

# %%
from headstart.api import recommend

with kit.quiet():
    rec = recommend(kit.DATA / kit.FAR, model=MODEL, per_class=S.far_per_class, image_size=S.image_size)
print("pick:", rec.strategy, "· runner-up:", rec.runner_up)
for reason in rec.reasons:
    print(" -", reason)
print("learning rates:", rec.hyperparameters["group_lrs"])
print("command:", rec.command.replace(str(kit.DATA), "DATA"))

# %% [markdown]
# ## Shipping the model
#
# A serving machine should not need headstart, timm, or even PyTorch. `export` writes one ONNX file whose
# graph holds the model's own normalisation, the fine-tuned network and a softmax, plus a sidecar JSON with the
# class names and the resize/crop to apply. It loads the file back and checks it against the PyTorch model
# before keeping it. Here: the CIFAR feature-extraction run from notebook 1.

# %%
from headstart.api import export, predict

cifar = kit.splits(kit.CIFAR)
best = kit.run("linear", cifar, model=MODEL, strategy="linear")
run_dir = kit.RUNS / "linear"
some_test_images = cifar.test.refs[:: max(1, len(cifar.test) // 32)][:32]
with kit.quiet():
    shipped = export(run_dir, kit.RUNS / "cifar-linear.onnx", images=some_test_images)
print("checked against PyTorch:", {k: v for k, v in shipped["check"].items() if k != "images_from"})

# %% [markdown]
# The serving side, with ONNX Runtime, Pillow and numpy only. Beside the model, `export` wrote the image path
# itself — headstart's own function from file to pixels, as a small Python file whose checksum the sidecar
# records — so the serving code cannot drift from what the model was trained and tested with.
# `headstart.export.preprocess_as_sidecar_says` shows the few lines that use it; the answers agree with
# headstart's own `predict`:

# %%
import numpy as np
import onnxruntime as ort

from headstart.export import preprocess_as_sidecar_says

sidecar = json.loads(Path(shipped["sidecar"]).read_text())
session = ort.InferenceSession(shipped["path"], providers=["CPUExecutionProvider"])
files = some_test_images[:6]
batch = preprocess_as_sidecar_says(files, shipped["sidecar"])
probabilities = session.run(["probabilities"], {"images": batch})[0]
with kit.quiet():
    reference = predict(run_dir, files)
for f, p, r in zip(files, probabilities, reference):
    print(f"{Path(f).parent.name}/{Path(f).name}: onnx says {sidecar['classes'][p.argmax()]} ({p.max():.2f}), "
          f"predict says {r['label']} ({r['probability']:.2f})")

# %% [markdown]
# Production checklist, briefly: the preprocessing at serving time must be the one used for evaluation (the
# sidecar carries it); keep the test figure and its interval with the model (`run.json`); watch the inputs for
# drift away from the training data (the BatchNorm similarity of notebook 5 works on unlabelled images). To scale
# training, `headstart train DATA --devices 4` runs data-parallel on several GPUs with the same recipe (the batch
# size stays the global batch).
#
# ## Check your understanding
#
# <details><summary>1. The table scores the rule of thumb by its regret, not by how often its advice won. Why?</summary>
#
# With a few hundred test images, several strategies are often within noise of the best; which of them comes out
# on top is then luck. Regret counts a pick inside the tied set as no loss, and otherwise measures what it lost in
# test-accuracy points, so a rule is judged on what its advice would have cost you.
# </details>
#
# <details><summary>2. The export check reports a maximum logit difference. Why check at all?</summary>
#
# Conversion to another runtime can silently change the computation (an unsupported op, a different padding).
# Comparing the exported file's outputs with the PyTorch model's on real images catches it before shipping.
# </details>

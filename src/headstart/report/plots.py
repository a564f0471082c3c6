"""Figures people would rather look at than read: learning curves, confusion matrices, what fine-tuning
changed (the forgetting monitor), what transfers (the probe) and which labels look wrong (check --labels)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **kwargs):
    """A figure that only ever goes to a file: a bare `Figure` (no pyplot), so headstart neither needs a display
    nor changes the backend of the program that imports it (a notebook's inline plots keep working)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def save(fig, path, title: str = ""):
    """Title, layout, write (a path or a file-like buffer): every plot ends here."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_curves(history: list[dict], path: Path, title: str = "") -> Path:
    """Loss and accuracy per epoch, train vs val: the gap between them is overfitting, made visible."""
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label in ((ax_loss, "loss", "loss"), (ax_acc, "accuracy", "accuracy")):
        ax.plot(epochs, [r[f"train_{key}"] for r in history], "o-", label="train", color="#1f77b4")
        ax.plot(epochs, [r[f"val_{key}"] for r in history], "s-", label="val", color="#d62728")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no tick at 1.5
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    best = max(history, key=lambda r: r["val_accuracy"])
    ax_acc.axvline(best["epoch"], color="grey", ls=":", lw=1)
    ax_acc.annotate(f"best val {best['val_accuracy']:.3f}", (best["epoch"], best["val_accuracy"]),
                    textcoords="offset points", xytext=(4, -14), fontsize=9)
    _mark_unfreezing(ax_acc, history)
    return save(fig, path, title)


def _mark_unfreezing(ax, history: list[dict]) -> None:
    """A dashed line where the set of trainable groups changed (gradual unfreezing, LP-FT)."""
    for prev, row in zip(history, history[1:]):
        if row.get("trainable") != prev.get("trainable"):
            ax.axvline(row["epoch"] - 0.5, color="#2ca02c", ls="--", lw=0.8, alpha=0.7)


def plot_confusion(matrix: list[list[int]], classes: list[str], path: Path, title: str = "") -> Path:
    """Counts, with each row shaded by its share of that true class, so small classes are not washed out."""
    cm = np.asarray(matrix)
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    n = len(classes)
    size = max(3.5, 0.45 * n + 2)
    fig, ax = subplots(figsize=(size + 0.8, size))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8 if n > 10 else 10,
                        color="white" if share[i, j] > 0.6 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of true class")
    if title:
        ax.set_title(title)
    return save(fig, path)


def plot_forgetting(history: list[dict], path: str | Path, title: str = "", imagenet_top1_pretrained: float | None = None) -> Path:
    """Per epoch: weight drift and CKA of every stage group, and the old task's top-1 if it was measured."""
    groups = [k[len("cka_"):] for k in history[0] if k.startswith("cka_")]
    history = [r for r in history if not math.isnan(float(r[f"cka_{groups[0]}"]))]  # the epochs it measured (NaN: skipped)
    epochs = [r["epoch"] for r in history]
    has_old = "imagenet_top1" in history[0]
    fig, axes = subplots(1, 3 if has_old else 2, figsize=(14 if has_old else 10, 3.8))
    colours = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, len(groups)))
    for g, c in zip(groups, colours):
        axes[0].plot(epochs, [float(r[f"drift_{g}"]) for r in history], "o-", color=c, label=g, ms=3)
        axes[1].plot(epochs, [float(r[f"cka_{g}"]) for r in history], "o-", color=c, label=g, ms=3)
    axes[0].set_ylabel("weight drift ||w - w0|| / ||w0||")
    axes[1].set_ylabel("CKA with pretrained features")
    axes[1].set_ylim(0, 1.05)
    axes[1].legend(fontsize=7, ncol=2)
    if has_old:
        axes[2].plot(epochs, [float(r["imagenet_top1"]) for r in history], "o-", color="#d62728", label="fine-tuned backbone")
        if imagenet_top1_pretrained is not None:
            axes[2].axhline(imagenet_top1_pretrained, color="grey", ls=":", label="pretrained")
        axes[2].set_ylabel("ImageNet top-1 (original head)")
        axes[2].set_ylim(0, 1)
        axes[2].legend(fontsize=8)
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    return save(fig, path, title)


def plot_probe(report, path: str | Path) -> Path:
    """Linear-probe accuracy and domain similarity against depth: where do the features stop being general?"""
    depth = [s.depth for s in report.stages]
    fig, (ax_acc, ax_sim) = subplots(1, 2, figsize=(10, 3.8))
    ax_acc.plot(depth, [s.cv_accuracy for s in report.stages], "o-", label="train (k-fold CV)", color="#1f77b4")
    ax_acc.plot(depth, [s.val_accuracy for s in report.stages], "s-", label="val", color="#d62728")
    ax_acc.axhline(1 / len(report.classes), color="grey", ls=":", lw=1, label="chance")
    ax_acc.set_ylabel("linear-probe accuracy")
    ax_sim.plot(depth, [s.similarity if s.similarity is not None else float("nan") for s in report.stages], "o-", color="#2ca02c")
    ax_sim.set_ylim(0, 1.05)
    ax_sim.set_ylabel("similarity to pretraining data\n(BatchNorm statistics, exp(-KL))")
    for ax in (ax_acc, ax_sim):
        ax.set_xticks(depth, [s.stage for s in report.stages], rotation=45, ha="right")
        ax.grid(alpha=0.3)
    ax_acc.legend()
    return save(fig, path, f"{report.model} on {Path(report.data).name} · {report.n_train} train images at "
                           f"{report.image_size}px")


def plot_label_issues(found: dict, path: str | Path, read: Callable, most: int = 24, columns: int = 6) -> Path:
    """The suspected label errors as a grid of images, most suspicious first, each titled with its given label,
    the label the model suspects and the model's confidence in it: a person decides in seconds per image what
    a table of file names leaves open. `read(ref)` opens an image (the data's own reader)."""
    issues = found["issues"][:most]
    if not issues:
        fig, ax = subplots(figsize=(5, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, f"no label issues among {found['n_images']} training images", ha="center", va="center")
        return save(fig, path)
    columns = min(columns, len(issues))
    rows = -(-len(issues) // columns)
    fig, axes = subplots(rows, columns, figsize=(2.2 * columns, 2.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, issue in zip(axes.flat, issues):
        img = read(issue["path"])
        img.thumbnail((256, 256))
        ax.imshow(np.asarray(img))
        ax.set_title(f"given {issue['given']}\nlooks {issue['suspected']} ({issue['confidence']:.2f})", fontsize=8)
        where = Path(issue["path"])
        ax.text(0.5, -0.04, f"{where.parent.name}/{where.name}"[-32:], transform=ax.transAxes, ha="center", va="top",
                fontsize=6)
    shown = f"the {len(issues)} most suspicious of {len(found['issues'])}" if len(found["issues"]) > len(issues) else \
        f"{len(issues)}"
    fig.suptitle(f"{shown} likely label errors among {found['n_images']} training images\n({found['model']} "
                 f"features, {found['folds']}-fold out-of-fold probabilities, cleanlab)", fontsize=9)
    return save(fig, path)

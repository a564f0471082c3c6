"""Figures people would rather look at than read: learning curves and confusion matrices."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, works in CI and over ssh
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def plot_curves(history: list[dict], path: Path, title: str = "") -> Path:
    """Loss and accuracy per epoch, train vs val: the gap between them is overfitting, made visible."""
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
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
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    fig, ax = plt.subplots(figsize=(size + 0.8, size))
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

"""Metrics and predictions as plain records (dicts and lists), for run.json, the CLI and the reports."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, precision_recall_fscore_support

from headstart.backbones import StagedModel
from headstart.cache import decode_images
from headstart.console import warn_skipped
from headstart.data import ImageSet, imagenet_images
from headstart.errors import HeadstartError
from headstart.features import inference_batch_size
from headstart.images import UnreadableImage, is_image_file, load_pixels
from headstart.engine import pick_device
from headstart.precision import autocast, resolve_precision
from headstart.train import PixelDataset, predict_batches
from headstart.transforms import eval_transform, normalize_batch


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
    """Accuracy, balanced accuracy (mean recall over the classes present: honest on imbalanced data), per-class
    precision/recall and the confusion matrix (rows: true class, columns: predicted), by scikit-learn. A class
    never predicted has precision 0, one absent from `labels` recall 0 and support 0."""
    predicted = logits.argmax(1).numpy()
    y = labels.numpy()
    every_class = list(range(len(classes)))
    cm = confusion_matrix(y, predicted, labels=every_class)
    precision, recall, _, support = precision_recall_fscore_support(y, predicted, labels=every_class,
                                                                    zero_division=0.0)
    with warnings.catch_warnings():  # a class predicted but absent from `labels` is left out of the mean, as meant
        warnings.filterwarnings("ignore", "y_pred contains classes not in y_true")
        balanced = balanced_accuracy_score(y, predicted)
    return {
        "accuracy": float((predicted == y).mean()),
        "balanced_accuracy": float(balanced),
        "n": int(len(y)),
        "per_class": {c: {"precision": float(precision[i]), "recall": float(recall[i]), "support": int(support[i])}
                      for i, c in enumerate(classes)},
        "confusion_matrix": cm.tolist(),
        "classes": list(classes),
    }


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return float((top == labels[:, None]).any(1).float().mean())


def evaluate_model(model: StagedModel, images: ImageSet, batch_size: int | None = None, cache_dir=None, use_cache=True,
                   device: str = "auto", precision: str = "auto") -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Logits and labels of `images` (unreadable files skipped, with a warning); also the kept indices.
    `precision`: fp32 | bf16 | auto (precision.py), for this machine's `device`."""
    pre = model.preprocessing
    decoded = decode_images(images, pre, cache_dir, use_cache, label="decode eval")
    warn_skipped(decoded.skipped)
    labels = torch.tensor([images.labels[i] for i in decoded.kept])
    dev = pick_device(device)
    precision = resolve_precision(precision, dev)
    model.to(dev)
    loader = torch.utils.data.DataLoader(PixelDataset(decoded.pixels, labels, eval_transform(pre)),
                                         batch_size=batch_size or inference_batch_size(pre.image_size, dev))
    logits, labels = predict_batches(model, loader, 0, pre, dev, precision)
    return logits, labels, decoded.kept


def evaluate_imagenet(model: StagedModel, folder: str | Path, **kwargs) -> dict:
    """Top-1/top-5 of a model's own ImageNet head: the check that pretrained weights are loaded right."""
    if model.num_classes != 1000:
        raise HeadstartError(f"{model.name} has a {model.num_classes}-class head, not ImageNet's 1000")
    logits, labels, _ = evaluate_model(model, imagenet_images(Path(folder)), **kwargs)
    return {"top1": topk_accuracy(logits, labels, 1), "top5": topk_accuracy(logits, labels, 5), "n": int(len(labels))}


def images_to_predict(paths: list[str | Path]) -> list[Path]:
    """Expand folders into their image files (recursively), keeping the given order."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and is_image_file(f))
        elif p.is_file():
            out.append(p)
        else:
            raise HeadstartError(f"not found: {p}")
    if not out:
        raise HeadstartError("no images to predict")
    return out


@torch.no_grad()
def predict_files(model: StagedModel, classes: list[str], paths: list[str | Path], top_k: int = 1,
                  batch_size: int = 32, precision: str = "auto") -> list[dict]:
    """Top-k labels with probabilities for each file; unreadable files get an `error` instead. `precision`:
    fp32 | bf16 | auto (precision.py), for the device the model is on; probabilities are computed in fp32."""
    pre = model.preprocessing
    device = next(model.parameters()).device
    precision = resolve_precision(precision, device)
    model.eval()
    results, batch, batch_paths = [], [], []

    def flush() -> None:
        x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)  # already the model's input size (load_pixels)
        with autocast(precision, device):
            logits = model(normalize_batch(x.to(device), pre))
        probs = logits.float().softmax(1).cpu()
        top = probs.topk(min(top_k, len(classes)), dim=1)
        for path, p, idx in zip(batch_paths, top.values, top.indices):
            results.append({"path": str(path), "label": classes[idx[0]], "probability": float(p[0]),
                            "top_k": [{"label": classes[j], "probability": float(q)} for q, j in zip(p, idx)]})
        batch.clear()
        batch_paths.clear()

    files = images_to_predict(paths)
    for path in files:
        try:
            batch.append(load_pixels(path, **pre.recipe()))  # the input every path uses (images.py)
            batch_paths.append(path)
        except UnreadableImage as e:
            results.append({"path": str(path), "error": str(e)})
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    order = {str(p): i for i, p in enumerate(files)}
    return sorted(results, key=lambda r: order[r["path"]])

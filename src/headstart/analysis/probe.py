"""What transfers: how well the frozen pretrained features fit the data, stage group by stage group.

One forward pass per image (all stage groups at once, `forward_stages`) gives two measurements:

1. Linear-probe accuracy after each stage group. Features are global-average-pooled, standardised, and a
   logistic regression (scikit-learn, L-BFGS) is fitted; its L2 strength is chosen by stratified k-fold
   cross-validation on train (scikit-learn's folds), and the refit is scored on val. Plotted against depth this is
   Yosinski et al.'s picture: accuracy rises while the features get more specific to the task, and where it
   stops rising (or falls) the pretrained features stop being the right ones for this data.

2. Domain similarity without any source images. Every BatchNorm layer keeps running statistics of its
   input over the pretraining data (ImageNet): a mean and a variance per channel. The same statistics of
   *this* data, compared with them as the KL divergence between the two per-channel Gaussians, say how far
   the data is from ImageNet as that layer sees it. Per stage group: a shift in the stem is a shift in
   low-level statistics (colour, contrast, greyscale, blur); a shift only in the last stages is a shift in
   content. similarity = exp(-median KL) is 1 for identical statistics and falls toward 0.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from torch import nn

from headstart.backbones import StagedModel, load_backbone
from headstart.cache import decode_images, digest
from headstart.console import info, warn_skipped
from headstart.data import ImageSet, load_data, subsample_per_class
from headstart.features import pooled_stage_outputs
from headstart.files import atomic_path
from headstart.paths import cache_root
from headstart.precision import resolve_precision
from headstart.transforms import Preprocessing, suggest_image_size

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # logistic-regression weight decay, chosen per stage by CV


@dataclass
class StageProbe:
    stage: str
    depth: int  # 1 = stem
    features: int
    cv_accuracy: float  # k-fold on train, at the chosen l2
    val_accuracy: float  # refit on all of train, scored on val
    l2: float
    similarity: float | None  # exp(-median KL) over the group's BatchNorm layers; None if it has none
    kl: float | None


@dataclass
class ProbeReport:
    model: str
    weights: str
    data: str
    classes: list[str]
    n_train: int
    n_val: int
    image_size: int
    stages: list[StageProbe]
    seconds: float

    @property
    def best(self) -> StageProbe:
        return max(self.stages, key=lambda s: (s.cv_accuracy, s.depth))

    @property
    def last(self) -> StageProbe:
        return self.stages[-1]

    def similarity(self, part: str) -> float | None:
        """Mean similarity of the first ("low") or last ("high") third of the stage groups."""
        values = [s.similarity for s in self.stages if s.similarity is not None]
        if not values:
            return None
        third = max(1, len(values) // 3)
        chosen = values[:third] if part == "low" else values[-third:]
        return float(np.mean(chosen))

    def to_dict(self) -> dict:
        return {**asdict(self), "best_stage": self.best.stage, "low_level_similarity": self.similarity("low"),
                "high_level_similarity": self.similarity("high")}


# ---------------------------------------------------------------------------------------- one forward pass
class BatchNormStatistics:
    """Per-channel mean and variance of the input of every BatchNorm layer, over all images seen.
    Forward pre-hooks, removed by `close()` (or the `with` block)."""

    def __init__(self, model: StagedModel):
        self.layers: list[tuple[str, nn.modules.batchnorm._BatchNorm]] = []
        self.sums: dict[int, list] = {}
        self.hooks = []
        for stage in model.stage_names:
            for module in model.group(stage).modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_var is not None:
                    i = len(self.layers)
                    self.layers.append((stage, module))
                    self.hooks.append(module.register_forward_pre_hook(self._hook(i)))

    def _hook(self, i: int):
        def hook(module, args):
            x = args[0].detach().double()
            dims = [0, *range(2, x.ndim)]
            s, s2, n = x.sum(dims), (x * x).sum(dims), x.numel() // x.shape[1]
            if i in self.sums:
                acc = self.sums[i]
                self.sums[i] = [acc[0] + s, acc[1] + s2, acc[2] + n]
            else:
                self.sums[i] = [s, s2, n]

        return hook

    def kl_per_layer(self) -> list[tuple[str, float]]:
        """(stage, median over channels of KL(data || pretraining)) for every BatchNorm layer."""
        out = []
        for i, (stage, bn) in enumerate(self.layers):
            if i not in self.sums:
                continue
            s, s2, n = self.sums[i]
            mean = s / n
            var = (s2 / n - mean * mean).clamp_min(0) + bn.eps
            run_mean, run_var = bn.running_mean.double().to(mean.device), bn.running_var.double().to(mean.device) + bn.eps
            kl = 0.5 * (var / run_var + (mean - run_mean) ** 2 / run_var - 1 - torch.log(var / run_var))
            out.append((stage, float(kl.median())))
        return out

    def close(self) -> None:
        for h in self.hooks:
            h.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def stage_features(model: StagedModel, pixels: np.ndarray, pre: Preprocessing, label: str = "features",
                   precision: str = "fp32") -> list[torch.Tensor]:
    """Globally pooled output of every stage group (a list of N x C tensors): what a linear head on that stage
    would see. `precision` is resolved (fp32 | bf16)."""
    return pooled_stage_outputs(model, pixels, pre, model.head.features, label=label, precision=precision)


def domain_similarity(model: StagedModel, images: ImageSet, *, image_size: int | None = None, per_class: int = 100,
                      seed: int = 0, cache_dir=None) -> tuple[float | None, float | None]:
    """(low-level, high-level) BatchNorm similarity of `images` to the pretraining data, as `probe` measures it
    but without the linear probes: one forward pass over at most `per_class` images of each class (a seeded
    sample). (None, None) for a model without BatchNorm statistics or without pretrained weights."""
    if not model.pretrained:
        return None, None
    pre = model.preprocessing.with_image_size(image_size or working_size(model.preprocessing, images))
    sample = subsample_per_class(images, per_class, seed)
    with BatchNormStatistics(model) as bn:
        if not bn.layers:
            return None, None
        decoded = decode_images(sample, pre, cache_dir, label="decode train")
        stage_features(model, decoded.pixels, pre, label="domain similarity")
        kls = bn.kl_per_layer()
    by_stage: dict[str, list[float]] = {}
    for stage, kl in kls:
        by_stage.setdefault(stage, []).append(kl)
    values = [math.exp(-float(np.median(by_stage[s]))) for s in model.stage_names if s in by_stage]
    third = max(1, len(values) // 3)  # as ProbeReport.similarity: the first and the last third of the groups
    return float(np.mean(values[:third])), float(np.mean(values[-third:]))


# ----------------------------------------------------------------------------------------- linear probes
def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float) -> Pipeline:
    """Standardised features -> logistic regression minimising mean cross-entropy + l2/2 * ||W||^2 (bias free).

    `l2` is a weight decay per sample, so one grid serves any number of images; scikit-learn's C weighs the
    summed loss, hence C = 1 / (n * l2). With two classes scikit-learn fits one weight vector v for the logit
    difference where a softmax has two rows (v = w1 - w0, and at the optimum w0 = -w1), so the same penalty
    there is l2/4 * ||v||^2: C doubles. tests/test_probe.py checks the gradient of that objective is zero."""
    classes = np.unique(y)
    c = (2.0 if len(classes) == 2 else 1.0) / (len(y) * l2)
    # one class (a fold of a tiny set): what a regression would learn, that class always (sklearn refuses to fit it)
    classifier = LogisticRegression(C=c, max_iter=1000, tol=1e-6) if len(classes) > 1 else DummyClassifier()
    return make_pipeline(StandardScaler(), classifier).fit(x, y)


def stratified_folds(y: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """A fold index per sample: each class spread evenly over the k folds, in a seeded random order
    (scikit-learn's StratifiedKFold)."""
    fold = torch.zeros(len(y), dtype=torch.long)
    if k > 1:
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        for f, (_, held_out) in enumerate(splitter.split(np.zeros(len(y)), y.numpy())):
            fold[held_out] = f
    return fold


def linear_probe(x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
                 num_classes: int, folds: int = 5, grid=L2_GRID, seed: int = 0) -> dict:
    """CV accuracy on train for each L2 strength (every image predicted once, by the fold that held it out), the
    best one refitted on all of train and scored on val."""
    x, y = x_train.double().numpy(), y_train.numpy()
    fold = stratified_folds(y_train, min(folds, int(torch.bincount(y_train).min())) or 1,
                            seed).numpy()
    k = int(fold.max()) + 1
    scores = {}
    with one_blas_thread():
        for l2 in grid:
            if k == 1:
                scores[l2] = 0.0
                continue
            predicted = np.empty_like(y)
            for f in range(k):
                predicted[fold == f] = fit_logistic(x[fold != f], y[fold != f], l2).predict(x[fold == f])
            scores[l2] = float((predicted == y).mean())
        best_l2 = max(grid, key=lambda l2: (scores[l2], l2))  # ties: the stronger regulariser
        val_acc = float((fit_logistic(x, y, best_l2).predict(x_val.double().numpy()) == y_val.numpy()).mean())
    return {"cv_accuracy": scores[best_l2], "val_accuracy": val_acc, "l2": best_l2}


def one_blas_thread():
    """BLAS on one thread for the duration. A probe is hundreds of small fits (a few hundred images, at most a
    few thousand features) whose every L-BFGS step makes a few tiny BLAS calls: with a thread pool each call
    pays a wake-up and a join that cost more than its arithmetic, and on a busy machine far more (the probe of
    `tests/test_notebooks` took 14.6 s with 2 OpenBLAS threads and 2.9 s with one, the same accuracies)."""
    return threadpool_limits(limits=1, user_api="blas")


# ------------------------------------------------------------------------------------------------- probe
def working_size(pre: Preprocessing, images: ImageSet) -> int:
    """The model's input size, or the smaller one `train` suggests when the source images are tiny."""
    side = images.median_short_side()
    size = suggest_image_size(pre, side) if side else None
    return size or pre.image_size


def probe(data, *, model: str | StagedModel = "efficientnet_lite0", image_size: int | None = None,
          per_class: int | None = None, classes: list[str] | None = None, val_fraction: float = 0.2, seed: int = 0,
          folds: int = 5, max_val_per_class: int | None = 300, cache_dir=None, use_cache: bool = True,
          weights: str | None = None, precision: str = "auto") -> ProbeReport:
    """Linear-probe accuracy and BatchNorm domain similarity after every stage group of `model` on `data`.

    Val is capped at `max_val_per_class` images per class (a seeded sample): 300 per class measure accuracy
    to about +-2 points, and the forward pass is most of the time a probe takes. The features of every stage
    are cached on disk (keyed by model, weights, preprocessing and image content), so `recommend` after
    `probe` costs only the regressions. `precision` (fp32 | bf16 | auto, precision.py) is the forward pass's; it is
    part of the cache key."""
    t0 = time.perf_counter()
    splits = data if not isinstance(data, (str, Path)) else load_data(
        data, val_fraction=val_fraction, seed=seed, classes=classes, per_class=per_class)
    net = model if isinstance(model, StagedModel) else load_backbone(model, weights=weights)
    size = image_size or working_size(net.preprocessing, splits.train)
    pre = net.preprocessing.with_image_size(size)
    val = splits.val if max_val_per_class is None else subsample_per_class(splits.val, max_val_per_class, seed)
    precision = resolve_precision(precision, next(net.parameters()).device)
    key = digest("probe-v1", net.name, net.weights, pre.to_dict(), precision,
                 [[images.fingerprint(i) for i in range(len(images))] for images in (splits.train, val)])
    path = cache_root(cache_dir) / "features" / f"{key}.pt"
    if use_cache and net.pretrained and path.is_file():
        split_feats, split_labels, kls = torch.load(path, weights_only=True).values()
    else:
        split_feats, split_labels = {}, {}
        with BatchNormStatistics(net) as bn:
            for name, images in (("train", splits.train), ("val", val)):
                decoded = decode_images(images, pre, cache_dir, use_cache, label=f"decode {name}")
                warn_skipped(decoded.skipped, f"unreadable {name} files")
                split_labels[name] = torch.tensor([images.labels[i] for i in decoded.kept])
                split_feats[name] = stage_features(net, decoded.pixels, pre, label=f"probe {name}",
                                                   precision=precision)
                if name == "train":
                    kls = bn.kl_per_layer()  # the data's statistics are taken on train images only
        if use_cache and net.pretrained:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:  # a killed probe never leaves half an entry for the next one to read
                torch.save({"features": split_feats, "labels": split_labels, "kl": kls}, tmp)
    by_stage: dict[str, list[float]] = {}
    for stage, kl in kls:
        by_stage.setdefault(stage, []).append(kl)
    stages = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the regressions are small ops: threads only add overhead (30x measured on a busy CPU)
    try:
        results = [linear_probe(split_feats["train"][d], split_labels["train"], split_feats["val"][d], split_labels["val"],
                                len(splits.classes), folds=folds, seed=seed) for d in range(len(net.stage_names))]
    finally:
        torch.set_num_threads(threads)
    for depth, stage in enumerate(net.stage_names):
        result = results[depth]
        kl = float(np.median(by_stage[stage])) if stage in by_stage else None
        stages.append(StageProbe(stage, depth + 1, split_feats["train"][depth].shape[1], result["cv_accuracy"],
                                 result["val_accuracy"], result["l2"], math.exp(-kl) if kl is not None else None, kl))
    report = ProbeReport(net.name, net.weights, splits.source, splits.classes, len(split_labels["train"]),
                         len(split_labels["val"]), size, stages, time.perf_counter() - t0)
    info(f"probe: {report.n_train} train / {report.n_val} val images at {size}px, {len(stages)} stage groups, "
         f"{report.seconds:.1f}s")
    return report

"""Label issues: training images whose given label the data itself argues against.

Confident learning (Northcutt, Jiang & Chuang 2021; the `cleanlab` library) needs only one thing per image:
predicted class probabilities from a model that never saw that image's label. Here they come cheaply:

1. Features. The pooled output of the frozen pretrained backbone — exactly what the `linear` strategy trains
   its head on, read from (or written to) the same feature-cache entry, so `check --labels` before or after
   `train --strategy linear` decodes and forwards each image once between them.
2. Out-of-fold probabilities. A standardised multinomial logistic regression (scikit-learn), k stratified folds
   (`cross_val_predict(..., method="predict_proba")`): each image is scored by a model fitted on the other
   folds. A model that had seen the image would mostly repeat its label back, right or wrong. The L2 strength
   is the one with the best out-of-fold log-loss (see `out_of_fold_probabilities`).
3. cleanlab's `filter.find_label_issues`: per class, the average probability that images *given* that class
   get for it is a threshold; an image is counted as confidently class j when its probability of j reaches
   j's threshold, and the images counted in another class than their given one (pruned by the estimated noise
   rates) are the issues, ranked by self-confidence (the probability of the given label, lowest first).

What it finds is a list to look at, not a verdict: an ambiguous picture, a second object in the frame, or a
class the backbone's features do not separate all look like label errors to a linear model.
bench/label_issues.py measures how many deliberately flipped labels it finds on hymenoptera.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from headstart.analysis.check import SEVERITY_ORDER, CheckReport, Problem
from headstart.backbones import StagedModel, load_backbone
from headstart.cache import decode_images
from headstart.console import info, warn_skipped
from headstart.data import ImageSet
from headstart.engine import pick_device
from headstart.errors import HeadstartError
from headstart.features import prefix_activations

DEFAULT_FOLDS = 5
C_GRID = (0.001, 0.01, 0.1, 1.0)  # inverse L2 strengths tried (standardised features); chosen by out-of-fold log-loss


@dataclass
class LabelIssue:
    path: str  # the image's ref: a file path (or name:split:index for built-in arrays)
    given: str  # the label the data gives it
    suspected: str  # the class, other than the given one, that the out-of-fold model finds most probable
    confidence: float  # the model's probability of `suspected`
    given_probability: float  # its probability of `given`: the self-confidence the issues are ranked by


@dataclass
class LabelIssueReport:
    model: str
    weights: str
    image_size: int
    folds: int
    seed: int
    classes: list[str]
    n_images: int  # training images scored (unreadable ones are skipped)
    oof_accuracy: float  # out-of-fold accuracy against the given labels: how well the features separate the classes
    c: float  # the logistic regression's inverse L2 strength, chosen by out-of-fold log-loss
    log_loss: dict[str, float]  # out-of-fold log-loss of every candidate C (keys: C as text)
    issues: list[LabelIssue] = field(default_factory=list)  # most suspicious first
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------------- features
def pooled_features(model: StagedModel, images: ImageSet, *, cache_dir=None, use_cache: bool = True,
                    device: str = "auto") -> tuple[np.ndarray, list[int]]:
    """The frozen backbone's pooled features of every readable image (N x D) and which images they are: the
    decoded store and the feature-cache entry that `train --strategy linear` reads and writes (same keys)."""
    decoded = decode_images(images, model.preprocessing, cache_dir, use_cache, label="decode train")
    warn_skipped(decoded.skipped, "unreadable train files")
    model.eval()  # the prefix must be in eval mode (BatchNorm uses its pretrained statistics)
    target = pick_device(device)
    model.to(target)
    features = prefix_activations(model, decoded.pixels, len(model.stages), model.preprocessing, target,
                                  source_key=decoded.key, cache_dir=cache_dir, use_cache=use_cache)
    if features is None:
        raise HeadstartError(f"the pooled features of {len(decoded.kept)} images exceed the feature cache's "
                             "limit: look for label issues in a subset (classes= or per_class= of api.check_data)")
    return features.numpy(), decoded.kept


# --------------------------------------------------------------------------------- out-of-fold probabilities
def check_folds(labels: Sequence[int], classes: list[str], folds: int) -> None:
    """Stratified folds need every class in every fold: refuse, with the fix, when a class is too small."""
    if folds < 2:
        raise HeadstartError(f"--folds must be 2 or more, got {folds}")
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))
    smallest = int(np.argmin(counts))
    if counts[smallest] < folds:
        raise HeadstartError(f"finding label issues with {folds} folds needs at least {folds} training images of "
                             f"every class; {classes[smallest]} has {counts[smallest]}: use fewer --folds (2 or "
                             "more), add images, or leave that class out (--classes)")


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, folds: int = DEFAULT_FOLDS, seed: int = 0,
                              grid: tuple[float, ...] = C_GRID) -> tuple[np.ndarray, float, dict[float, float]]:
    """N x K class probabilities, each row from a logistic regression fitted without that image; with the
    regularisation chosen and the out-of-fold log-loss of every candidate.

    The L2 strength is the one whose out-of-fold probabilities have the lowest log-loss against the given
    labels: confident learning compares probabilities with per-class averages, so it needs them calibrated, and
    an almost unregularised fit on more features than images (1,280 vs a few hundred) is overconfident. The
    choice uses the given labels only (never which ones are wrong); it costs one cross-validation per candidate."""
    # imported here: scikit-learn (with SciPy) adds seconds to the start of every command, and only this needs it
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from headstart.analysis.probe import one_blas_thread

    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    candidates, losses = {}, {}
    with one_blas_thread():  # small fits: a BLAS thread pool costs more than it computes (probe.one_blas_thread)
        for c in grid:
            classifier = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
            candidates[c] = cross_val_predict(classifier, features, labels, cv=split, method="predict_proba")
            losses[c] = float(log_loss(labels, candidates[c], labels=np.arange(candidates[c].shape[1])))
    best = min(grid, key=lambda c: (losses[c], c))  # ties: the stronger regulariser (smaller C)
    return candidates[best], best, losses


def ranked_issues(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Indices of the likely mislabelled images, most suspicious (lowest probability of the given label) first."""
    from cleanlab.filter import find_label_issues as cleanlab_issues

    # n_jobs=1: cleanlab's default starts a process per core, which costs more than this small job takes
    return cleanlab_issues(labels, probabilities, return_indices_ranked_by="self_confidence", n_jobs=1)


def suspected_labels(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Each image's most probable class other than its given one: what it would be if the label is wrong (with
    many classes cleanlab can flag an image whose top class is still the given one, barely)."""
    others = probabilities.copy()
    others[np.arange(len(labels)), labels] = -1.0
    return others.argmax(1)


# ------------------------------------------------------------------------------------------------- finder
def find_label_issues(images: ImageSet, model: str | StagedModel = "efficientnet_lite0", *,
                      folds: int = DEFAULT_FOLDS, seed: int = 0, image_size: int | None = None,
                      weights: str | None = None, cache_dir=None, use_cache: bool = True,
                      device: str = "auto") -> LabelIssueReport:
    """Likely mislabelled images of `images` (the training split), from cleanlab on out-of-fold probabilities of
    a logistic regression on the frozen backbone's pooled features. `image_size` defaults to the model's own,
    as `train` does, so the features are the cached ones of the `linear` strategy."""
    t0 = time.perf_counter()
    check_folds(images.labels, images.classes, folds)
    net = model if isinstance(model, StagedModel) else load_backbone(model, weights=weights)
    net.preprocessing = net.preprocessing.with_image_size(image_size)
    features, kept = pooled_features(net, images, cache_dir=cache_dir, use_cache=use_cache, device=device)
    labels = np.asarray([images.labels[i] for i in kept])
    check_folds(labels, images.classes, folds)  # again: unreadable files may have emptied a class
    probabilities, c, losses = out_of_fold_probabilities(features, labels, folds, seed)
    found = ranked_issues(labels, probabilities)
    names = images.classes
    suspected = suspected_labels(labels, probabilities)
    issues = [LabelIssue(images.refs[kept[i]], names[labels[i]], names[suspected[i]],
                         round(float(probabilities[i, suspected[i]]), 4), round(float(probabilities[i, labels[i]]), 4))
              for i in found]
    accuracy = float((probabilities.argmax(1) == labels).mean())
    report = LabelIssueReport(net.name, net.weights, net.preprocessing.image_size, folds, seed, list(names),
                              len(labels), round(accuracy, 4), c, {str(k): round(v, 4) for k, v in losses.items()},
                              issues, round(time.perf_counter() - t0, 2))
    info(f"label issues: {len(issues)} of {len(labels)} training images look mislabelled (out-of-fold accuracy "
         f"{accuracy:.3f}, {folds} folds, C={c:g}, {report.model} features at {report.image_size}px)")
    return report


def with_label_issues(check: CheckReport, found: LabelIssueReport) -> CheckReport:
    """`check` with the label issues attached (`label_issues`) and, when there are any, a warning among its
    problems that lists the files. A warning, not an error: they are suspects for a person to look at."""
    problems = list(check.problems)
    if found.issues:
        first = found.issues[0]
        problems.append(Problem(
            "label-issues", "warning",
            f"{len(found.issues)} of {found.n_images} training images look mislabelled, e.g. {first.path} is "
            f"labelled {first.given} but looks {first.suspected} ({first.confidence:.2f})",
            "look at them (check --labels --out DIR draws them); fix the wrong labels, delete unusable images",
            [i.path for i in found.issues]))
        problems.sort(key=lambda p: SEVERITY_ORDER[p.severity])
    return replace(check, problems=problems, label_issues=found.to_dict())
